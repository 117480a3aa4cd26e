"""The report of a training run says how it trained beyond its options: the examples it repeated
(`--repeat`, a canary run's copies) and the run it trained on from (`--extend`). Both were left out, so
the report's record of a run could not reproduce it."""

from __future__ import annotations

import json

from diffaudit.cli.main import main
from diffaudit.data import load_dataset

TRAIN = ["train", "--data", "digits", "--subset", "16", "--batch-size", "4", "--checkpoint-every", "2",
         "--warmup-steps", "1", "--device", "cpu", "--quiet"]


def test_a_repeated_and_extended_run_is_reported_so(tmp_path):
    keys = load_dataset("digits", subset=16).keys
    rep = tmp_path / "rep.txt"
    rep.write_text(f"{keys[0]} 5\n{keys[1]} 2\n")
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*TRAIN, "--repeat", str(rep), "--steps", "2", "--out", str(a)]) == 0
    assert main([*TRAIN, "--repeat", str(rep), "--steps", "4", "--extend", str(a), "--out", str(b)]) == 0
    assert main(["report", str(b), "--quiet"]) == 0
    model = json.loads((b / "summary.json").read_text())["model"]
    assert model["repeats"] == {"n_repeated": 2, "n_stream": 16 + 4 + 1}
    assert model["extended_from"] == {"run": str(a.resolve()), "steps": 2}
    html = " ".join((b / "report.html").read_text().split())
    assert "2 examples repeated in the training stream (21 training entries in all, copies included)" in html
    assert f"{a.resolve()}, after its 2 steps (train --extend)" in html
    # a plain run says neither
    assert main([*TRAIN, "--steps", "2", "--out", str(tmp_path / "plain")]) == 0
    assert main(["report", str(tmp_path / "plain"), "--quiet"]) == 0
    model = json.loads((tmp_path / "plain" / "summary.json").read_text())["model"]
    assert model["repeats"] is None and model["extended_from"] is None
    assert "repeated in the training stream" not in (tmp_path / "plain" / "report.html").read_text()
