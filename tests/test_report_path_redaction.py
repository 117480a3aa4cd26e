"""The paths a redacted report hides (report/path_redaction.py)."""

from __future__ import annotations

from collections import namedtuple

from diffaudit.report.path_redaction import hide_paths, path_labels


def test_paths_outside_the_folder_are_numbered_and_inside_it_are_shown_within_it(tmp_path):
    root = tmp_path / "audit-out"
    root.mkdir()
    summary = {
        "dataset": {"spec": "/data/ward7/scans"},
        "settings": {"verify": {"data": "/data/ward7/scans", "baseline": "s3://acme-photos/held",
                                "samples": str(root / "samples")},
                     "dedup": {"clip_model": "openai/clip-vit-base-patch32", "data": "digits"},
                     "mia": {"shadows": [str(root / "models"), "~/shadows"]}},
    }
    labels = path_labels(summary, root)
    assert labels == {str(root.resolve()): "AUDIT", "/data/ward7/scans": "(path 1)", "s3://acme-photos/held": "(path 2)",
                      str(root / "samples"): "AUDIT/samples", str(root / "models"): "AUDIT/models",
                      "~/shadows": "(path 3)"}
    hidden = hide_paths(summary, labels)
    assert hidden["settings"]["dedup"] == summary["settings"]["dedup"]  # a hub id and a built-in name stay
    assert hidden["settings"]["verify"]["data"] == "(path 1)" == hidden["dataset"]["spec"]
    assert hidden["settings"]["mia"]["shadows"] == ["AUDIT/models", "(path 3)"]


def test_paths_are_replaced_inside_sentences_whole_names_only(tmp_path):
    root = tmp_path / "out"
    labels = {str(root): "AUDIT", "/data/ward7": "(path 1)", "/data/ward7/scans": "(path 2)"}
    Row = namedtuple("Row", "key value")
    ctx = {"notes": [f"could not read {root}/mia/result.json.", "--model /data/ward7 was audited.",
                     "read /data/ward7/scans/img3.png and /data/ward70 and /data/ward7.png"],
           "rows": [Row("data", "/data/ward7/scans")], "uri": "data:image/png;base64,/data/ward7", "n": 3}
    hidden = hide_paths(ctx, labels)
    assert hidden["notes"] == ["could not read AUDIT/mia/result.json.", "--model (path 1) was audited.",
                               "read (path 2)/img3.png and /data/ward70 and /data/ward7.png"]
    assert hidden["rows"] == [Row("data", "(path 2)")] and isinstance(hidden["rows"][0], Row)
    assert hidden["uri"] == ctx["uri"] and hidden["n"] == 3  # embedded images and numbers untouched
