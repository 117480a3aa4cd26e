"""What a redacted report shares, from a privacy officer's walk through an audit of patient scans whose file
names and captions carry identifiers (``patient_JaneDoe_MRN12345.png``): generations given as image files
are numbered, not named; an inpainting target is numbered as extraction numbers it; a report of a redacted
audit written anywhere stays redacted; and a --target typed as a relative path is labelled like any other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_report import _cli, make_audit

from diffaudit.core.io import read_json, write_json_atomic
from diffaudit.core.outdir import SETTINGS_FILE, settings_record
from diffaudit.data.view import save_view
from diffaudit.report import render_report, write_summary

#: The generations of make_audit's store named as image files by patient.
FILE_NAMES = {f"p{p}-i{i}": f"gen_MRN{p}{i}_JaneDoe.png" for p in range(2) for i in range(10)}


def _rename_generations(audit: Path) -> None:
    """make_audit's extract and verify results as if --samples had been an image folder of FILE_NAMES."""
    for stage in ("extract", "verify"):
        path = audit / stage / "result.json"
        text = path.read_text()
        for store_id, name in sorted(FILE_NAMES.items(), key=lambda kv: -len(kv[0])):  # p1-i1 before p1-i
            text = text.replace(f'"{store_id}"', f'"{name}"')
        path.write_text(text)


def test_generations_given_as_files_are_numbered_alike_in_every_section(tmp_path):
    """Redacted, the generations' file names showed in the pairs and cliques (an image folder or tar shards as
    --samples): each is now "generation N", one number per generation, so a clique's medoid still matches the
    pair it gave. A sample store's ids (p0-i3), which name positions only, are shown as they are."""
    audit = make_audit(tmp_path)
    store_page = render_report(audit, tmp_path / "store.html", redact=True).read_text(encoding="utf-8")
    assert "p0-i3" in store_page and "generation 1" not in store_page
    _rename_generations(audit)
    page = render_report(audit, tmp_path / "r.html", redact=True).read_text(encoding="utf-8")
    assert "JaneDoe" not in page and "gen_MRN" not in page
    # the generations the results name: the two prompts' clique members (verify's pairs are among them)
    shown = sorted(FILE_NAMES[i] for i in [*(f"p0-i{i}" for i in range(10)), "p1-i0", "p1-i1"])
    number = {name: n for n, name in enumerate(shown, 1)}
    medoid = f"generation {number[FILE_NAMES['p0-i3']]}"
    assert f"medoid <code>{medoid}</code>" in page  # the flagged clique
    assert f'data-sample="generation {number[FILE_NAMES["p1-i0"]]}"' in page  # a verified pair
    assert "“generation N”" in page  # the note says how they are named
    unredacted = render_report(audit, tmp_path / "full.html", redact=False).read_text(encoding="utf-8")
    assert FILE_NAMES["p0-i3"] in unredacted


def test_an_inpainting_target_is_numbered_as_extraction_numbers_it(tmp_path):
    """An audit's verify searched its members (members.view.json) and extraction named each by its position
    there; inpainting named its targets by their position in the whole --data, so "#2" was one image in one
    section and another in the next. A member now takes its training-set number; a non-member is "--data #N"."""
    audit = make_audit(tmp_path)
    data = tmp_path / "data" / "train.npz"
    members = ["npz:9", "npz:0", "npz:5", "npz:7", "npz:2"]
    view = save_view(audit / "members.view.json", str(data), {}, members)
    verify = read_json(audit / "verify" / "result.json")
    verify["settings"]["data"] = str(view)
    for e in verify["extracted"]:  # positions in the view, as verify records them
        e["train_id"] = members.index(e["train_key"])
    write_json_atomic(audit / "verify" / "result.json", verify)
    shutil.copy(audit / "inpaint" / "grids" / "grid-npz_2.png", audit / "inpaint" / "grids" / "grid-npz_11.png")
    page = render_report(audit, tmp_path / "r.html", redact=True).read_text(encoding="utf-8")
    # target npz:2, a member, is #4 of the view, as extraction names it; npz:11 is not in the training set
    assert "<figcaption><code>#4</code> · member" in page and '<code title="training example">#4</code>' in page
    assert "<figcaption><code>--data #11</code> · non-member" in page
    assert "<figcaption><code>#2</code>" not in page  # #2 is npz:5 here, as its verified pair says
    assert '<code title="training example">#2</code>' in page
    same = render_report(make_audit(tmp_path / "plain"), tmp_path / "same.html", redact=True).read_text(encoding="utf-8")
    assert "<figcaption><code>#2</code> · member" in same  # verify and inpaint read the same --data: one numbering


def test_a_report_of_a_redacted_audit_stays_redacted_wherever_it_is_written(tmp_path, capsys):
    """`audit --redact` then `report AUDIT --out share/` wrote a full report, training images and file names, to
    a new file without a word; so did a stage folder's report. An unasked --redact now follows the folder's
    own redacted report (or its audit's), and says so; --no-redact still shows the images."""
    audit = make_audit(tmp_path)
    write_json_atomic(audit / SETTINGS_FILE, settings_record("audit", {}))
    assert _cli([str(audit), "--redact"]) == 0  # the audit's own report.html, redacted
    capsys.readouterr()
    for folder, out in ((audit, tmp_path / "share" / "r.html"), (audit / "verify", tmp_path / "share" / "verify.html")):
        assert _cli([str(folder), "--out", str(out)]) == 0
        assert f"report: redacted, as {audit / 'report.html'} is" in capsys.readouterr().err
        assert '<meta name="diffaudit-redacted" content="true">' in out.read_text(encoding="utf-8")
    assert _cli([str(audit), "--out", str(tmp_path / "full.html"), "--no-redact"]) == 0
    assert "diffaudit-redacted" not in (tmp_path / "full.html").read_text(encoding="utf-8")
    plain = make_audit(tmp_path / "plain")
    assert _cli([str(plain), "--out", str(tmp_path / "plain.html")]) == 0
    assert "redacted" not in capsys.readouterr().err


def test_a_target_typed_as_a_relative_path_is_labelled_in_a_redacted_summary(tmp_path, monkeypatch):
    """mia's result.json kept --target as typed (`home/jdoe/ward7/model`): the redacted summary.json, which
    labels absolute paths, showed it whole. The summary now names the run as the settings record it
    (canonical), so it is labelled."""
    run = tmp_path / "home" / "jdoe" / "ward7" / "model"
    run.mkdir(parents=True)
    mia = tmp_path / "mia"
    record = {"schema_version": 1, "command": "mia",
              "settings": {"data": {"spec": "digits", "options": {}}, "target": {"mode": "model", "index": None, "run": str(run)},
                           "attack": {"attack": "loss"}},
              "seeds": {"seed": 0}, "versions": {}, "attack": "loss", "timesteps": [100], "auc": 0.61,
              "tpr_at_fpr": {"0.01": 0.02}, "n_members": 8, "n_nonmembers": 8,
              "target": {"mode": "model", "index": None, "run": "home/jdoe/ward7/model"}}
    write_json_atomic(mia / "result.json", record)
    monkeypatch.chdir(tmp_path)
    summary = json.loads(write_summary(mia, tmp_path / "s.json", redact=True).read_text())
    assert "jdoe" not in json.dumps(summary)
    assert summary["mia"]["loss"]["model"] == "(path 1)"


def test_mia_records_its_target_as_the_settings_do(tmp_path, monkeypatch):
    """The result's target is the canonical path, as settings.json records it, whatever the spelling typed."""
    from diffaudit.cli.main import main

    monkeypatch.chdir(tmp_path)
    train = ["--quiet", "train", "--data", "digits", "--subset", "16", "--image-size", "8", "--steps", "2",
             "--warmup-steps", "0", "--device", "cpu"]
    assert main([*train, "--out", "runs/model"]) == 0
    assert main(["--quiet", "mia", "--data", "digits", "--image-size", "8", "--target", "runs/model", "--attack", "loss",
                 "--timesteps", "100", "--sweep", "", "--bootstrap", "0", "--device", "cpu", "--out", "m"]) == 0
    result = read_json(tmp_path / "m" / "result.json")
    assert result["target"]["run"] == str((tmp_path / "runs" / "model").resolve()) == result["settings"]["target"]["run"]
