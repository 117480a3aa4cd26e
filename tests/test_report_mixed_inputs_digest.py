"""The note on results "not made on the same inputs" compares datasets as `diffaudit compare` does: by the
data digest where both results recorded one. `mia --data digits --subset 200` and runs that add
`--image-size 8` read the same pixels (digits are 8x8), yet the note said "datasets digits (...); digits
(...)": two identical labels for one dataset. Where the data truly differ, each label says how.

Hand-written result files (as the commands write them), no model is trained."""

from __future__ import annotations

from pathlib import Path

from test_report import _envelope, visible_text

from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary, render_html

SIZED = {"image_size": 8, "subset": 200, "subset_seed": 0, "skip_bad": False}
UNSIZED = {"subset": 200, "subset_seed": 0, "skip_bad": False}


def _mia(folder: Path, options: dict, digest: str | None) -> None:
    data = {"spec": "digits", "options": options, **({"digest": digest} if digest else {})}
    target = {"mode": "model", "index": None, "run": "run-a"}
    write_json_atomic(folder / "result.json", _envelope(
        "mia", {"data": data, "target": target}, {}, attack="loss", auc=0.6, tpr_at_fpr={}, n_members=50,
        n_nonmembers=50, target=target))


def _inpaint(folder: Path, options: dict, digest: str) -> None:
    write_json_atomic(folder / "result.json", _envelope(
        "inpaint", {"model": "run-a", "data": {"spec": "digits", "options": options}, "digests": {"data": digest}}, {},
        auc=0.5, targets=[]))


def _note(root: Path) -> str:
    html = render_html(root)
    found = html.split('data-kind="mixed-inputs">')
    return visible_text(found[1].split("</p>")[0]) if len(found) > 1 else ""


def test_the_same_pixels_read_with_other_options_are_one_dataset(tmp_path):
    root = tmp_path / "rel"
    _mia(root / "mia-loss", SIZED, "8f03af74f8786a12")
    _mia(root / "mia-nosize", UNSIZED, "8f03af74f8786a12")
    _inpaint(root / "inpaint", SIZED, "8f03af74f8786a12")
    assert build_summary(root)["mixed_inputs"] is None
    assert _note(root) == ""


def test_data_that_truly_differ_are_told_apart_by_what_differs(tmp_path):
    """Other options and other pixels: each label gives the options; the same flags over other pixels (the
    files changed between two runs): the digests tell them apart. No two labels are the same."""
    root = tmp_path / "rel"
    _mia(root / "mia-loss", SIZED, "8f03af74f8786a12")
    _mia(root / "mia-small", {**UNSIZED, "subset": 100}, "0123456789abcdef")
    mixed = build_summary(root)["mixed_inputs"]
    assert [d["stages"] for d in mixed["data"]] == [["mia-loss"], ["mia-small"]]
    assert "datasets digits --image-size 8 --subset 200 (mia-loss); digits --subset 100 (mia-small)." in _note(root)
    _mia(root / "mia-small", SIZED, "0123456789abcdef")  # the same flags, other pixels
    note = _note(root)
    assert ("datasets digits --image-size 8 --subset 200 [data digest 8f03af74f8786a12] (mia-loss); "
            "digits --image-size 8 --subset 200 [data digest 0123456789abcdef] (mia-small).") in note


def test_without_digests_the_options_decide_and_show(tmp_path):
    """Results that recorded no digest (older ones) are compared by their options, as before, and labelled by them."""
    root = tmp_path / "rel"
    _mia(root / "mia-a", SIZED, None)
    _mia(root / "mia-b", UNSIZED, None)
    assert "datasets digits --image-size 8 --subset 200 (mia-a); digits --subset 200 (mia-b)." in _note(root)


def test_a_missing_folder_is_said_not_to_exist(tmp_path, capsys):
    """`diffaudit report OUT` after an audit stopped before it made OUT: the folder does not exist (a file
    given instead is "not a folder")."""
    from diffaudit.cli.main import main

    assert main(["report", str(tmp_path / "audit-int")]) == 2
    assert f"{tmp_path / 'audit-int'} does not exist; give the output folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["report", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_the_report_line_names_attacks_as_the_report_does(tmp_path, capsys):
    """Two folders that ran the loss attack: the command's one line names each by its attack and folder, as the
    page does, and prints the rate as the page does."""
    from diffaudit.cli.main import main
    from diffaudit.core.results import write_result

    for name, tpr in (("mia-a", 0.1825), ("mia-b", 0.03)):
        write_result(tmp_path / "rel" / name / "result.json", "mia", {}, {}, attack="loss", auc=0.6,
                     tpr_at_fpr={"0.01": tpr}, n_members=400, n_nonmembers=400)
    assert main(["report", str(tmp_path / "rel")]) == 0
    out = capsys.readouterr().out
    assert "loss in mia-a TPR@1%FPR 18.2%" in out and "loss in mia-b TPR@1%FPR 3.0%" in out


def test_generations_of_another_model_are_another_models_results(tmp_path):
    """A verify of a store that run32 made, gathered beside a sample store of run1: the verify records only its
    store, which records its model, so the report lists both models (not run1's alone under the verdict)."""
    from diffaudit.core.io import write_json_atomic
    from diffaudit.core.outdir import SETTINGS_FILE, settings_record
    from diffaudit.core.results import write_result
    from diffaudit.report import build_summary

    store = tmp_path / "s32"
    write_json_atomic(store / SETTINGS_FILE, settings_record("sample", {"model": "/runs/run32"}))
    study = tmp_path / "study"
    write_result(study / "s1" / "result.json", "sample", {"model": "/runs/run1"}, {}, n_samples=4)
    write_result(study / "v32" / "result.json", "verify", {"samples": str(store), "rule": "ratio"}, {}, unique_extracted=3,
                 n_samples=40, extracted=[], rule="ratio")
    models = build_summary(study)["mixed_inputs"]["model"]
    assert {m["input"]: m["stages"] for m in models} == {"/runs/run32": ["v32"], "/runs/run1": ["s1"]}
