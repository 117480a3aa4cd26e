"""`diffaudit audit` end to end on the built-in digits: it really extracts training images."""

import json

import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError

SMALL = ["audit", "--train-size", "8", "--steps", "400", "--batch-size", "8", "--n-samples", "64", "--sample-steps", "10",
         "--sweep", "", "--device", "cpu", "--quiet"]


def test_audit_extracts_memorized_digits_and_writes_the_report(tmp_path, capsys, monkeypatch):
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
    # what a gate reads beside the verdicts: the AUC's interval and the baseline test's p-value
    ci = result["mia"]["ci"]["auc"]
    assert ci["low"] <= result["mia"]["auc"] <= ci["high"] and ci["level"] == 0.95
    assert set(result["mia"]["ci"]["tpr_at_fpr"]) == set(result["mia"]["tpr_at_fpr"])
    assert result["baseline_pvalue"] == summary["extraction"]["baseline_pvalue"] and 0 <= result["baseline_pvalue"] <= 1
    html = (out / "report.html").read_text()
    assert "Content-Security-Policy" in html and "data:image/png;base64," in html
    assert 'src="http' not in html
    assert '<section id="training">' in html and 'alt="Training loss over ' in html  # the target is models/model-00
    # the second question, answered from the membership attack, with the members it picks out without a false alarm
    mia = summary["mia"]["loss"]
    assert 'data-membership-verdict="yes"' in html and "Does the model reveal which images it trained on?" in html
    assert 0 < mia["tpr_at_zero_fpr"] <= 1  # shown on the card where TPR at 1% FPR cannot be measured
    # the audit's own data and samples match what verify recorded of them: every pair shows both images
    n_pairs = min(len(verify["extracted"]), 48)
    assert html.count('data-kind="train"') == n_pairs and html.count('data-kind="train-missing"') == 0
    assert html.count('data-kind="generation-missing"') == 0
    assert (out / "config.toml").exists()

    # A second run resumes: every stage is kept, the result is unchanged.
    capsys.readouterr()
    assert main(SMALL + ["--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["unique_extracted"] == result["unique_extracted"]
    assert again["stages"] == result["stages"]
    # its last line: how many, against the false-positive baseline with its size and the test's p-value
    assert main([a for a in SMALL if a != "--quiet"] + ["--out", str(out)]) == 0
    last = capsys.readouterr().out
    assert f"{result['unique_extracted']} of 8 training images extracted from 64 generations (false-positive baseline: " in last
    assert "never-seen images, p = " in last
    # finished: a re-run rewrites nothing, so a finished audit on read-only storage still answers
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    monkeypatch.setenv("DIFFAUDIT_STORAGE_FAULT", "EROFS")
    assert main(SMALL + ["--out", str(out)]) == 0
    monkeypatch.delenv("DIFFAUDIT_STORAGE_FAULT")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


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
    # another spelling of the same folder is the same audit (--out is not a compared setting)
    same = tmp_path / "elsewhere" / ".." / "audit"
    assert main(["audit", "--config", str(cfg), "--out", str(same), "--device", "cpu", "--quiet"]) == 0
    # abbreviated flags are refused (they would bypass the "command line wins over --config" check)
    try:
        rc = main(["audit", "--config", str(cfg), "--ste", "50", "--out", str(out), "--device", "cpu", "--quiet"])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2 and "--ste" in capsys.readouterr().err


def test_audit_refuses_bad_values_before_recording_anything(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "wide.npz", images=np.zeros((12, 8, 12, 3), np.uint8))
    np.savez(tmp_path / "odd.npz", images=np.zeros((12, 15, 15, 1), np.uint8))
    for bad, says in ((["--data", str(tmp_path / "nope.npz")], "nope.npz"), (["--timesteps", "abc"], "--timesteps"),
                      (["--inpaint", "--shadows", "4", "--inpaint-targets", "x"], "--inpaint-targets"),
                      # the target is shadow 0: with 2, its non-members are all the other shadow's members
                      (["--inpaint", "--shadows", "2"], "pass --shadows 4 or more (the target is shadow 0"),
                      (["--mia", "loss", "--draws", "5"], "--draws"), (["--n-samples", "0"], "--n-samples"),
                      (["--sample-steps", "0"], "--sample-steps"), (["--min-clique", "1"], "--min-clique"),
                      (["--grid", "0"], "--grid"), (["--lr", "2"], "--lr"), (["--steps", "0"], "--steps"),
                      (["--subset", "40", "--train-size", "100"], "--train-size must lie in [1, 39]"),
                      # found only after training and sampling before: the mia stage's and extract's own checks
                      (["--timesteps", "1000"], "--timesteps must lie in [0, 999] (the schedule has T = 1000 steps"),
                      (["--n-samples", "1"], "--n-samples must be at least 2: extraction looks for near-identical"),
                      (["--shadows=-2"], "--shadows must be 0 or a positive even number"),
                      (["--timesteps", "100,100"], "--timesteps must not repeat a timestep; got 100,100"),
                      (["--timesteps=-1"], "--timesteps must be >= 0; got -1"),
                      (["--sweep", "10,10"], "--sweep must not repeat a timestep"),
                      (["--sweep", "100,5000"], "--sweep 5000: beyond the model's 1000 timesteps"),
                      # the shadows (the target too) train on seeded halves: the size would be ignored
                      (["--shadows", "4", "--train-size", "20"], "--train-size: with --shadows 4 every model"),
                      # found by the train and verify stages, after the audit folder recorded its settings
                      (["--data", str(tmp_path / "wide.npz"), "--train-size", "6"],
                       "holds 8x12 images, and the models the audit trains need square ones: pass --image-size N"),
                      (["--data", str(tmp_path / "odd.npz"), "--train-size", "6"],
                       "holds 15x15 images: preset 'tiny' down-samples 1 times: image size 15 must be a multiple of 2: "
                       "resize the images to one (--image-size 16)"),
                      (["--subset", "10", "--train-size", "9"], "only 1 image of --data is left out of the target's "
                       "training: the false-positive baseline verifies the generations against the images the target "
                       "never saw by the ratio rule, which needs at least 2 of them: lower --train-size to 8 or less"),
                      (["--subset", "3", "--shadows", "4"], "needs at least 2 of them: give --data more images")):
        out = tmp_path / "e"
        assert main(["audit", *bad, "--out", str(out), "--device", "cpu", "--quiet"]) == 2
        assert says in capsys.readouterr().err
        assert not out.exists()  # nothing recorded: the corrected command starts cleanly


def test_lira_needs_two_shadows_besides_a_given_model_and_four_when_the_target_is_one(tmp_path, capsys):
    """With --model the target is no shadow, so 2 shadows give every example an IN and an OUT loss; without
    it the target is shadow 0 and 4 are needed. (--shadows 2 with --model passes this check: the next one,
    --device, is what refuses it here.)"""
    from tests.helpers import make_tiny_model_dir

    model = ["--model", str(make_tiny_model_dir(tmp_path / "run"))]
    for given, shadows, says in ((model, "0", "--mia lira-fixed needs at least 2 shadow models besides --model"),
                                 (model, "2", "--device"),
                                 ([], "2", "--mia lira-fixed needs at least 4 shadow models (the target is one of them")):
        assert main(["audit", *given, "--mia", "lira-fixed", "--shadows", shadows, "--device", "tpu9",
                     "--out", str(tmp_path / "e")]) == 2
        err = capsys.readouterr().err
        assert says in err and ("shadow models" not in err if shadows == "2" and given else True), err


def test_audit_class_conditional_samples_every_class(tmp_path):
    out = tmp_path / "audit"
    assert main(["audit", "--train-size", "20", "--class-conditional", "--steps", "30", "--batch-size", "8",
                 "--n-samples", "20", "--sample-steps", "3", "--sweep", "", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    sample = json.loads((out / "samples" / "result.json").read_text())
    assert sample["n_prompts"] == 10 and sample["per_prompt"] == 2 and sample["n_samples"] == 20
    assert json.loads((out / "extract" / "result.json").read_text())["command"] == "extract"


def test_audit_of_an_existing_run_trains_the_shadows_it_asks_for(tmp_path, capsys):
    from diffaudit.data import load_dataset
    from diffaudit.data.view import save_view

    data = ["--data", "digits", "--subset", "40"]
    view = save_view(tmp_path / "first20.view.json", "digits", {"subset": 40}, load_dataset("digits", subset=40).keys[:20])
    assert main(["train", "--data", str(view), "--steps", "30", "--batch-size", "8", "--checkpoint-every", "30", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / "run")]) == 0
    out = tmp_path / "audit"
    assert main(["audit", *data, "--model", str(tmp_path / "run"), "--shadows", "4", "--mia", "lira-fixed", "--steps", "30",
                 "--batch-size", "8", "--checkpoint-every", "30", "--n-samples", "16", "--sample-steps", "3", "--sweep", "",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "models").glob("model-*")) == [f"model-{k:02d}" for k in range(4)]
    # the shadows train like the target (its lr and warm-up), except for the options given here
    shadow = json.loads((out / "models" / "model-01" / "train_config.json").read_text())
    target = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (shadow["lr"], shadow["warmup_steps"]) == (target["lr"], target["warmup_steps"]) == (2e-4, 100)
    assert (shadow["steps"], shadow["batch_size"]) == (30, 8)
    mia = json.loads((out / "mia" / "result.json").read_text())
    assert mia["attack"] == "lira-fixed" and mia["target"]["mode"] == "model"
    assert json.loads((out / "result.json").read_text())["target"] == str(tmp_path / "run")
    # the same keys scaled to 16x16 are not the run's training data: refused at once, naming the size
    assert main(["audit", *data, "--image-size", "16", "--model", str(tmp_path / "run"), "--n-samples", "16",
                 "--sample-steps", "3", "--sweep", "", "--device", "cpu", "--quiet", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "takes 8x8 images with 1 channel(s), but the data gives 16x16 with 1; load it with --image-size 8" in err
    # a mistyped --model is named as missing, not as a run without a record
    assert main(["audit", *data, "--model", str(tmp_path / "rnu"), "--quiet", "--out", str(tmp_path / "typo")]) == 2
    assert f"--model {tmp_path / 'rnu'} does not exist" in capsys.readouterr().err
    # a file of the run is named as a file, with the folder that holds it (not "write FILE/train_ids.json")
    assert main(["audit", *data, "--model", str(tmp_path / "run" / "result.json"), "--quiet",
                 "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert f"--model {tmp_path / 'run' / 'result.json'} is a file, not a model folder" in err
    assert f"the folder holding it is {tmp_path / 'run'}" in err and "train_ids.json" not in err
    # training options train nothing when --model is audited without shadows: refused, not recorded
    assert main(["audit", *data, "--model", str(tmp_path / "run"), "--steps", "100", "--lr", "0.01", "--quiet",
                 "--out", str(tmp_path / "stray")]) == 2
    assert "--lr, --steps: --model audits an existing run and trains nothing" in capsys.readouterr().err
    assert main(["audit", *data, "--model", str(tmp_path / "run"), "--train-size", "5", "--quiet",
                 "--out", str(tmp_path / "stray")]) == 2  # shadows would not use it either: no hint to add them
    err = capsys.readouterr().err
    assert "--train-size: --model audits an existing run" in err and "add --shadows" not in err
    # a run trained on every image of --data leaves no unseen image: refused before any stage
    assert main(["audit", "--data", str(view), "--model", str(tmp_path / "run"), "--n-samples", "16", "--sample-steps", "3",
                 "--sweep", "", "--device", "cpu", "--quiet", "--out", str(tmp_path / "all")]) == 2
    assert "no image is left that it never saw" in capsys.readouterr().err
    assert not (tmp_path / "all").exists()
    assert not (tmp_path / "other" / "samples").exists()


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
    result = json.loads((out / "result.json").read_text())  # the audit's own record names every stage's headline
    assert result["inpainting"] == {"auc": inpaint["auc"], "n_targets": 4, "n_members": 2, "n_nonmembers": 2}
    assert result["n_shadows"] == 4 and result["report"] == str(out / "report.html")
    assert "train-size" not in (out / "config.toml").read_text()  # shadows train on halves: repeating it is refused
    assert "Inpainting" in (out / "report.html").read_text() or "inpaint" in (out / "report.html").read_text()
    # its grids lie inside its inpaint folder: every one is embedded
    assert (out / "report.html").read_text().count('data-kind="inpaint"') == 4
    # Another attack on the same models: only the mia stage (and the outliers that read it) runs again, with --redo
    loss = [("loss" if a == "lira-fixed" else a) for a in args]
    kept = {p: p.stat().st_mtime_ns for d in ("models", "samples", "extract", "verify", "inpaint")
            for p in (out / d).rglob("*") if p.is_file()}
    assert main(loss) == 2  # refused without --redo, naming the stages it would run again: nothing deleted
    assert (out / "mia" / "result.json").exists() and (out / "result.json").exists()
    assert main(loss + ["--redo"]) == 0
    assert json.loads((out / "mia" / "result.json").read_text())["attack"] == "loss"
    assert {p: p.stat().st_mtime_ns for p in kept if p.exists()} == kept  # the models and other stages untouched
    assert json.loads((out / "settings.json").read_text())["settings"]["mia"] == "loss"
    assert set(json.loads((out / "summary.json").read_text())["mia"]) == {"loss"}  # the earlier attack's results are gone
    # dropping --inpaint drops its stage; a changed training option still needs --fresh
    assert main([a for a in loss if a not in ("--inpaint",)] + ["--redo"]) == 0
    assert not (out / "inpaint").exists() and json.loads((out / "summary.json").read_text())["inpainting"] is None
    assert main([a if a != "40" else "41" for a in loss] + ["--redo"]) == 2


def test_audit_json_config_redact_and_class_conditional_counts(tmp_path, capsys):
    """--json prints the audit's JSON alone on stdout (stages quiet); `redact = true` is accepted from
    --config; the counts printed are the generations made (10 classes x 2 for --n-samples 25, with a warning)."""
    out = tmp_path / "audit"
    cfg = tmp_path / "audit.toml"
    cfg.write_text("redact = true\nn-samples = 25\n")
    argv = ["audit", "--config", str(cfg), "--train-size", "20", "--class-conditional", "--steps", "30", "--batch-size", "8",
            "--sample-steps", "3", "--sweep", "", "--device", "cpu", "--out", str(out)]
    capsys.readouterr()
    assert main(argv + ["--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # nothing but the JSON
    assert result["command"] == "audit" and result["n_samples"] == 20
    # with the report's two answers, as summary.json gives them (a gate reads them from --json too)
    verdicts = json.loads((out / "summary.json").read_text())["verdicts"]
    assert result["verdicts"] == verdicts == json.loads((out / "result.json").read_text())["verdicts"]
    assert {verdicts["extraction"]["level"], verdicts["membership"]["level"]} <= {"yes", "no", "unsure", "unknown"}
    assert "not a multiple of the 10 classes" in captured.err and "20 in all" in captured.err
    # the advice names the audit's own flag, not `sample --per-prompt`
    assert ("generate more per prompt (a larger --n-samples, which the audit splits among the prompts: 100 make 10 "
            "each; the paper: 500)") in captured.err
    assert json.loads((out / "verify" / "result.json").read_text())["n_samples"] == 20
    assert "training images redacted" in (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())  # its paths labelled as the report's are
    assert summary["paths_redacted"] is True and str(tmp_path) not in json.dumps(summary)
    assert "redact" not in (out / "settings.json").read_text()  # not a setting: a resume may change it
    # but the audit repeated from its config.toml is redacted too (its report hid the training images)
    assert "\nredact = true\n" in (out / "config.toml").read_text()
    # the human line states the generations made, not the 25 asked for
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert "from 20 generations" in line and "from 25" not in line
    assert line.count("\n") == 1  # every stage was kept (the sample store too): only the audit's line
    # a run stopped (Ctrl-C, a full disk) after its result.json, before its summary and report: the re-run writes them
    (out / "report.html").unlink()
    (out / "summary.json").unlink()
    finished = json.loads((out / "result.json").read_text())
    (out / "result.json").write_text(json.dumps({k: v for k, v in finished.items() if k != "verdicts"}))
    assert main(argv) == 0
    assert "audit: summary.json and report.html written now (the run that finished stopped before" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text())["verdicts"] == verdicts
    assert "training images redacted" in (out / "report.html").read_text()
    assert json.loads((out / "summary.json").read_text())["command"] == "audit"
    # without redact = true or --redact, the report it would replace decides: it stays redacted, and is said to
    cfg.write_text("n-samples = 25\n")
    capsys.readouterr()
    assert main(argv) == 0
    assert "the report stays redacted, as the one it replaces was; --no-redact shows" in capsys.readouterr().err
    assert '<meta name="diffaudit-redacted" content="true">' in (out / "report.html").read_text()
    assert main(argv + ["--no-redact"]) == 0  # asked for: the finished audit's report shows the images again
    assert "audit: report written again, showing the training images" in capsys.readouterr().err
    assert "diffaudit-redacted" not in (out / "report.html").read_text()
    assert json.loads((out / "summary.json").read_text())["paths_redacted"] is False  # rewritten with it
    assert main(argv) == 0 and "stays redacted" not in capsys.readouterr().err
    # --fresh stays command-line only, with a message that says so
    cfg.write_text("fresh = true\n")
    assert main(["audit", "--config", str(cfg), "--out", str(tmp_path / "x"), "--device", "cpu", "--quiet"]) == 2
    assert "fresh may only be given on the command line" in capsys.readouterr().err


def test_audit_of_a_deduplicated_run_leaves_its_dropped_duplicates_out_of_the_nonmembers(tmp_path, capsys):
    """The defence workflow: dedup a training pool, train on what it keeps, audit on data that also holds
    unseen images. The dropped near-duplicates are copies of members: neither members nor fair
    non-members, so neither the verify baseline nor the membership evaluation counts them."""
    import numpy as np

    from diffaudit.data import load_dataset
    from diffaudit.data.view import save_view

    digits = load_dataset("digits", subset=36)
    images = np.concatenate([digits.images[:20], digits.images[:4], digits.images[20:]])  # rows 20..23 copy rows 0..3
    np.savez(tmp_path / "pool.npz", images=images)
    keys = [f"npz:{i}" for i in range(len(images))]
    pool = save_view(tmp_path / "pool.view.json", str(tmp_path / "pool.npz"), {}, keys[:24])
    assert main(["dedup", "--data", str(pool), "--embedder", "pixel", "--quiet", "--out", str(tmp_path / "dedup")]) == 0
    assert main(["train", "--data", str(pool), "--dedup", str(tmp_path / "dedup" / "keep.json"), "--steps", "30",
                 "--batch-size", "8", "--checkpoint-every", "30", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]) == 0
    dropped = json.loads((tmp_path / "run" / "dropped_duplicates.json").read_text())["keys"]
    assert len(dropped) == 4 and all(k in keys[:4] + keys[20:24] for k in dropped)
    capsys.readouterr()
    out = tmp_path / "audit"
    assert main(["audit", "--data", str(tmp_path / "pool.npz"), "--model", str(tmp_path / "run"), "--n-samples", "16",
                 "--sample-steps", "3", "--sweep", "", "--device", "cpu", "--out", str(out)]) == 0
    assert "4 near-duplicates that run dropped from training are left out of the non-members" in capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert (result["n_train"], result["n_nonmembers"], result["n_excluded_duplicates"]) == (20, 16, 4)
    assert sorted(json.loads((out / "nonmembers.view.json").read_text())["keys"]) == sorted(keys[24:])
    mia = json.loads((out / "mia" / "result.json").read_text())
    assert (mia["n_members"], mia["n_nonmembers"], mia["n_excluded"]) == (20, 16, 4)
    scored = set(np.load(out / "mia" / "scores.npz")["id"].tolist())
    assert scored == set(keys) - set(dropped)
    assert "(4 near-duplicates the deduplicated model dropped left out: copies of its members)" in (out / "report.html").read_text()
    # an audit whose mia stage ran before the exclusion (its result has no n_excluded) is not resumed as if excluded
    record = json.loads((out / "mia" / "result.json").read_text())
    del record["n_excluded"]
    (out / "mia" / "result.json").write_text(json.dumps(record))
    assert main(["audit", "--data", str(tmp_path / "pool.npz"), "--model", str(tmp_path / "run"), "--n-samples", "16",
                 "--sample-steps", "3", "--sweep", "", "--device", "cpu", "--out", str(out)]) == 2
    assert "ran before the near-duplicates run dropped were left out" in capsys.readouterr().err


def test_audit_offers_every_membership_attack_of_mia():
    from diffaudit.attacks.membership.registry import ATTACK_NAMES
    from diffaudit.cli.audit import MIA_ATTACKS

    assert MIA_ATTACKS == ATTACK_NAMES


def test_outlier_line_is_withheld_for_an_attack_at_chance(tmp_path, capsys, monkeypatch):
    """The terminal says what the report says: no outlier correlation for a guessing membership attack."""
    import numpy as np

    from diffaudit.cli.audit import outliers_stage
    from diffaudit.data import load_dataset

    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    data = load_dataset("digits", subset=40)
    (tmp_path / "mia").mkdir()
    scores = np.random.default_rng(0).normal(size=40)
    np.savez(tmp_path / "mia" / "scores.npz", member=np.ones(40, bool), example_index=np.arange(40), score=scores)
    for auc, ci, said in ((0.51, (0.40, 0.62), "no correlation reported: the membership attack is at chance (AUC 0.510)"),
                          (0.90, (0.85, 0.95), "Spearman rho")):
        (tmp_path / "mia" / "result.json").write_text(json.dumps({"auc": auc, "ci": {"auc": {"low": ci[0], "high": ci[1]}}}))
        outliers_stage(tmp_path, data, 0)
        err = capsys.readouterr().err
        assert said in err and ("Spearman" in err) == (auc > 0.6)


def test_the_report_knows_the_audit_training_options():
    """The report leaves a --model audit's training options out of its settings table by name; the
    names are the audit's own (the report cannot import the CLI)."""
    from diffaudit.cli.audit import training_options
    from diffaudit.report.view_misc import AUDIT_TRAIN_OPTIONS

    assert set(AUDIT_TRAIN_OPTIONS) == training_options()


def test_audit_of_a_class_conditional_run_samples_its_classes(tmp_path, capsys):
    """--model decides how the audit samples: a class-conditional run is sampled per class without any
    flag, and a --class-conditional that contradicts the run is refused."""
    from diffaudit.data import load_dataset
    from diffaudit.data.view import save_view

    view = save_view(tmp_path / "half.view.json", "digits", {"subset": 40}, load_dataset("digits", subset=40).keys[:20])
    assert main(["train", "--data", str(view), "--class-conditional", "--steps", "20", "--batch-size", "8",
                 "--checkpoint-every", "20", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]) == 0
    audit = ["audit", "--data", "digits", "--subset", "40", "--n-samples", "20", "--sample-steps", "2", "--sweep", "",
             "--device", "cpu", "--quiet"]
    assert main(audit + ["--model", str(tmp_path / "run"), "--out", str(tmp_path / "a")]) == 0
    sample = json.loads((tmp_path / "a" / "samples" / "result.json").read_text())
    assert sample["n_prompts"] == 10 and sample["per_prompt"] == 2
    assert main(["train", "--data", str(view), "--steps", "20", "--batch-size", "8", "--checkpoint-every", "20",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main(audit + ["--model", str(tmp_path / "plain"), "--class-conditional", "--out", str(tmp_path / "b")]) == 2
    assert "is not class-conditional; leave the flag out" in capsys.readouterr().err


def test_a_switch_the_config_turns_on_is_turned_off_by_its_no_flag(tmp_path):
    """Repeating an audit from its config.toml with one switch off (`--config a/config.toml --no-inpaint`) had
    no way to say so: every switch the file may turn on has its --no- form, and the command line wins."""
    from diffaudit.cli.audit import apply_config
    from diffaudit.cli.main import build_parser

    cfg = tmp_path / "c.toml"
    cfg.write_text("inpaint = true\nflip = true\nskip-bad = true\nclass-conditional = true\ncompile = true\n")

    def applied(*flags: str):
        argv = ["audit", "--config", str(cfg), "--out", str(tmp_path / "a"), *flags]
        args = build_parser(only="audit").parse_args(argv)
        return apply_config(args, argv[1:])

    on = applied()
    assert (on.inpaint, on.flip, on.skip_bad, on.class_conditional, on.compile) == (True,) * 5
    off = applied("--no-inpaint", "--no-flip", "--no-skip-bad", "--no-class-conditional", "--no-compile")
    assert (off.inpaint, off.flip, off.skip_bad, off.class_conditional, off.compile) == (False,) * 5
    assert {"inpaint", "class_conditional"} <= off._given  # given (as false): --model's own checks see it
    cfg.write_text("")
    assert applied("--inpaint").inpaint and not applied().inpaint


def test_config_takes_toml_lists_for_comma_separated_options(tmp_path):
    from diffaudit.cli.audit import apply_config
    from diffaudit.cli.main import build_parser
    from diffaudit.core.errors import DiffauditError

    def applied(text: str):
        cfg = tmp_path / "c.toml"
        cfg.write_text(text)
        argv = ["audit", "--config", str(cfg), "--out", str(tmp_path / "a")]
        args = build_parser(only="audit").parse_args(argv)
        args._argv = argv[1:]
        return apply_config(args, args._argv)

    args = applied('timesteps = [50, 100]\nsweep = [10, "1000"]\ninpaint-targets = [2, 3]\n')
    assert (args.timesteps, args.sweep, args.inpaint_targets) == ("50,100", "10,1000", "2,3")
    assert applied('timesteps = "50,100"\n').timesteps == "50,100"  # the flag's own spelling still works
    with pytest.raises(DiffauditError, match=r"timesteps = \[True\]: expected a list of integers"):
        applied("timesteps = [true]\n")
    with pytest.raises(DiffauditError, match=r"steps = \[1, 2\]: expected a value of type int$"):
        applied("steps = [1, 2]\n")
    with pytest.raises(DiffauditError, match=r"subset = 'many': expected an integer$"):
        applied('subset = "many"\n')
    # a folder (an audit's, holding its config.toml) was an IsADirectoryError traceback
    (tmp_path / "audit-out").mkdir()
    (tmp_path / "audit-out" / "config.toml").write_text("steps = 5\n")
    args = build_parser(only="audit").parse_args(["audit", "--config", str(tmp_path / "audit-out")])
    with pytest.raises(DiffauditError, match=r"is a folder; give a TOML file \(an audit's own is .*audit-out/config.toml\)"):
        apply_config(args, ["--config", str(tmp_path / "audit-out")])


def test_the_report_of_an_unfinished_audit_says_it_is_unfinished(tmp_path, capsys, monkeypatch):
    """Stopped at its verify stage, an audit's report names the stages it finished and how to continue;
    it does not send the user to run `diffaudit verify` by hand. Continued, the note is gone."""
    import diffaudit.cli.verify as verify_cli
    from diffaudit.report.html import render_html

    def interrupted(args):
        raise KeyboardInterrupt

    out = tmp_path / "audit"
    with monkeypatch.context() as m:
        m.setattr(verify_cli, "run", interrupted)
        assert main(SMALL + ["--out", str(out)]) == 130
    assert not (out / "result.json").exists()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "an unfinished audit: its verify stage was interrupted; its later stages have not run" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit_finished"] is False and summary["extraction"]["unique_extracted"] is None
    assert summary["audit_stopped"] == {"stage": "verify", "exit": 130, "error": None}
    html = (out / "report.html").read_text()
    assert 'data-kind="unfinished"' in html and "the results of its train, sample, extract stages" in html
    assert "its verify stage was interrupted;" in html

    def refused(args):
        raise DiffauditError("no room for <b>this</b> in /data/x")

    with monkeypatch.context() as m:  # run again, the stage fails: the report names it, and what it said
        m.setattr(verify_cli, "run", refused)
        assert main(SMALL + ["--out", str(out)]) == 2
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "its verify stage failed (exit 2); its later stages have not run" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "its verify stage failed (exit 2), saying “no room for &lt;b&gt;this&lt;/b&gt; in /data/x”" in html
    assert main(["report", str(out), "--redact"]) == 0  # what it said may name files: redacted, only the stage
    redacted = (out / "report.html").read_text()
    assert "its verify stage failed (exit 2);" in redacted and "/data/x" not in redacted
    assert "diffaudit audit --config audit/config.toml --out audit" in html
    assert "the audit has not yet verified them" in html and "diffaudit verify --samples" not in html

    assert main(SMALL + ["--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["audit_finished"] is True
    assert not (out / "stage_stopped.json").exists() and json.loads((out / "summary.json").read_text())["audit_stopped"] is None
    # the report it replaced was redacted (`report --redact` above): it stays so, unless --no-redact
    assert "training images redacted" in (out / "report.html").read_text()
    assert main(SMALL + ["--out", str(out), "--no-redact"]) == 0
    assert "training images redacted" not in (out / "report.html").read_text()
    assert main(SMALL + ["--out", str(out), "--redact"]) == 0  # finished: --redact still writes a report to share
    assert "training images redacted" in (out / "report.html").read_text()
    assert 'data-kind="unfinished"' not in (out / "report.html").read_text()
    assert 'data-kind="unfinished"' not in render_html(out / "verify")  # one command's folder is never an audit


def test_a_non_member_that_is_a_member_pixel_for_pixel_is_left_out_of_both_baselines(tmp_path, capsys):
    """A dataset holding an image twice under two keys, one trained on: the other copy is no never-seen image.
    verify leaves it out of its false-positive baseline, and mia out of its non-members, alike."""
    import numpy as np

    from diffaudit.data import load_dataset
    from diffaudit.data.membership import target_split

    digits = load_dataset("digits", subset=28)
    members = np.flatnonzero(target_split(28, 8, seed=0)[:, 0])
    outside = np.flatnonzero(~target_split(28, 8, seed=0)[:, 0])
    images, labels = digits.images.copy(), digits.labels.copy()
    images[outside[:3]], labels[outside[:3]] = images[members[:3]], labels[members[:3]]  # 3 non-members copy members
    np.savez(tmp_path / "twice.npz", images=images, labels=labels)
    out = tmp_path / "audit"
    assert main([a for a in SMALL if a != "--quiet"] + ["--data", str(tmp_path / "twice.npz"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    mia = json.loads((out / "mia" / "result.json").read_text())
    assert mia["n_identical_excluded"] == 3 and (mia["n_members"], mia["n_nonmembers"]) == (8, 17)
    assert "mia: 3 non-member rows left out: images that are, pixel for pixel, also a member" in err
    verify = json.loads((out / "verify" / "result.json").read_text())
    assert verify["baseline"]["n_left_out"] == 3  # and an equal-size baseline is drawn from the other 17
    assert "3 of the 20 images of the audit's never-seen images are also in the training images" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mia"]["loss"]["n_identical_excluded"] == 3
    assert "(3 left out: the same image as a member, under another name)" in (out / "report.html").read_text()


def test_redo_plans_the_changed_stages_and_those_that_read_them(tmp_path, capsys):
    from diffaudit.cli.audit_redo import stages_to_redo

    assert stages_to_redo(["mia"]) == ["mia", "outliers"]
    assert stages_to_redo(["n_samples", "rule"]) == ["samples", "extract", "verify"]
    assert stages_to_redo(["inpaint", "timesteps"]) == ["mia", "outliers", "inpaint"]
    assert stages_to_redo(["steps"]) is None and stages_to_redo(["mia", "seed"]) is None and stages_to_redo([]) is None
    out = tmp_path / "a"
    small = [a for a in SMALL if a not in ("--quiet",)] + ["--steps", "30", "--n-samples", "16", "--sample-steps", "3"]
    assert main(small + ["--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(small + ["--timesteps", "50", "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--timesteps (was '100', now '50')" in err and "Pass --redo to run the mia, outliers stages again" in err
    assert main(small + ["--timesteps", "50", "--redo", "--out", str(out)]) == 0
    assert "audit: --redo: --timesteps (was '100', now '50'); running the mia, outliers stages again" in capsys.readouterr().err
    assert json.loads((out / "mia" / "result.json").read_text())["timesteps"] == [50]
    assert main(small + ["--steps", "31", "--redo", "--quiet", "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--steps (was 30, now 31)" in err and "--redo runs later stages again" in err and "use another --out" in err
    assert main(small + ["--steps", "31", "--quiet", "--out", str(out)]) == 2  # without --redo: the usual refusal
    assert "--fresh to start over" in capsys.readouterr().err


def test_an_audit_whose_data_changed_in_place_is_refused_even_when_finished(tmp_path, capsys):
    """A finished audit re-run after an image of --data was edited said "already finished" with the old results;
    an interrupted one was refused by a stage, naming `data.digest` in a sub-folder. The audit records what its
    data holds and names the change itself; audits recorded before that resume as before."""
    import numpy as np

    from diffaudit.data import load_dataset

    digits = load_dataset("digits", subset=40)
    np.savez(tmp_path / "d.npz", images=digits.images, labels=digits.labels)
    out = tmp_path / "audit"
    argv = SMALL + ["--data", str(tmp_path / "d.npz"), "--steps", "30", "--n-samples", "16", "--out", str(out)]
    assert main(argv) == 0
    settings_file = out / "settings.json"
    record = json.loads(settings_file.read_text())
    assert len(record["settings"]["data_digest"]) == 16 and "data-digest" not in (out / "config.toml").read_text()
    del record["settings"]["data_digest"]  # as an audit recorded before the digest was
    settings_file.write_text(json.dumps(record))
    assert main(argv) == 0
    edited = digits.images.copy()
    edited[3] = 255 - edited[3]
    np.savez(tmp_path / "d.npz", images=edited, labels=digits.labels)
    capsys.readouterr()
    assert main(argv) == 2
    assert "holds work made with other settings: the contents of --data (was " in capsys.readouterr().err


def test_inpainting_values_without_inpaint_are_said_to_be_unused(tmp_path, capsys):
    """--n-inpaint and --inpaint-targets set a stage that runs only with --inpaint: given without it, a warning
    says they are not used (the defaults, which every config.toml records, say nothing)."""
    nope = str(tmp_path / "nope.npz")  # refused after the values are checked: the audit stops there, cheaply
    assert main(["audit", "--n-inpaint", "50", "--inpaint-targets", "2,2", "--data", nope, "--out", str(tmp_path / "a"),
                 "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ("diffaudit audit: warning: --inpaint-targets 2,2 and --n-inpaint 50 are for the inpainting stage, which runs "
            "only with --inpaint: not used") in err and "nope.npz" in err
    assert main(["audit", "--data", nope, "--out", str(tmp_path / "a"), "--device", "cpu", "--quiet"]) == 2
    assert "inpainting stage" not in capsys.readouterr().err
