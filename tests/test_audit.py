"""`diffaudit audit` end to end on the built-in digits: it really extracts training images."""

import json

from diffaudit.cli.main import main

SMALL = ["audit", "--train-size", "8", "--steps", "400", "--batch-size", "8", "--n-samples", "64", "--sample-steps", "10",
         "--sweep", "", "--device", "cpu", "--quiet"]


def test_audit_extracts_memorized_digits_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(SMALL + ["--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["command"] == "audit"
    assert result["unique_extracted"] >= 1  # by the ratio rule, against the target's training set
    verify = json.loads((out / "verify" / "result.json").read_text())
    assert verify["rule"] == "ratio" and verify["unique_extracted"] == result["unique_extracted"]
    assert all(e["ratio"] <= 1 for e in verify["extracted"])
    members = set(json.loads((out / "models" / "model-00" / "train_ids.json").read_text())["keys"])
    assert {e["train_key"] for e in verify["extracted"]} <= members
    assert result["mia"]["auc"] > 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["extraction"]["unique_extracted"] == result["unique_extracted"]
    html = (out / "report.html").read_text()
    assert "Content-Security-Policy" in html and "data:image/png;base64," in html
    assert 'src="http' not in html
    assert (out / "config.toml").exists()

    # A second run resumes: every stage is kept, the result is unchanged.
    capsys.readouterr()
    assert main(SMALL + ["--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["unique_extracted"] == result["unique_extracted"]
    assert again["stages"] == result["stages"]


def test_audit_config_file_and_changed_settings(tmp_path, capsys):
    out = tmp_path / "audit"
    cfg = tmp_path / "audit.toml"
    cfg.write_text('train-size = 8\nsteps = 40\nbatch-size = 8\nn-samples = 16\nsample-steps = 3\nsweep = ""\n')
    assert main(["audit", "--config", str(cfg), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    saved = (out / "config.toml").read_text()
    assert "steps = 40" in saved and "train-size = 8" in saved
    capsys.readouterr()
    assert main(["audit", "--config", str(cfg), "--steps", "50", "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    assert "steps" in capsys.readouterr().err


def test_defence_workflow_reaudit_existing_runs_and_compare(tmp_path, capsys):
    """A defended model (DP-SGD) and a plain one, each re-audited with `--model` on the same seeds, side by side."""
    train = ["train", "--data", "digits", "--subset", "16", "--steps", "60", "--batch-size", "8", "--checkpoint-every", "30",
             "--warmup-steps", "5", "--lr", "1e-3", "--device", "cpu", "--quiet"]
    assert main(train + ["--out", str(tmp_path / "plain")]) == 0
    assert main(train + ["--dp-noise", "1.0", "--out", str(tmp_path / "dp")]) == 0
    audit = ["audit", "--data", "digits", "--n-samples", "16", "--sample-steps", "3", "--sweep", "", "--device", "cpu",
             "--quiet"]
    for name in ("plain", "dp"):
        assert main(audit + ["--model", str(tmp_path / name), "--out", str(tmp_path / f"audit-{name}")]) == 0
        r = json.loads((tmp_path / f"audit-{name}" / "result.json").read_text())
        assert r["n_train"] == 16 and r["mia"]["attack"] == "loss"
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "audit-plain"), str(tmp_path / "audit-dp"), "--json"]) == 0
    table = capsys.readouterr().out
    assert "audit-plain" in table and "audit-dp" in table


def test_audit_with_shadows_lira_and_inpainting(tmp_path):
    out = tmp_path / "audit"
    args = ["audit", "--subset", "40", "--shadows", "4", "--mia", "lira-fixed", "--inpaint", "--inpaint-targets", "2,2",
            "--n-inpaint", "4", "--steps", "40", "--batch-size", "8", "--checkpoint-every", "20", "--n-samples", "16",
            "--sample-steps", "3", "--sweep", "", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "models").glob("model-*")) == [f"model-{k:02d}" for k in range(4)]
    mia = json.loads((out / "mia" / "result.json").read_text())
    assert mia["attack"] == "lira-fixed" and mia["n_members"] > 0 and mia["n_nonmembers"] > 0
    inpaint = json.loads((out / "inpaint" / "result.json").read_text())
    assert len(inpaint["targets"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inpainting"] is not None and "lira-fixed" in json.dumps(summary["mia"])
    assert "Inpainting" in (out / "report.html").read_text() or "inpaint" in (out / "report.html").read_text()
