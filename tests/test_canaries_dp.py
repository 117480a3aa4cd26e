"""``canaries --dp-noise/--dp-epsilon``: the canary model trained with DP-SGD, each copy of a repeated
canary a training example of its own (DP's guarantee is per example: k copies are a group of k)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.cli.main import main

BASE = ["canaries", "--data", "digits", "--subset", "60", "--repeats", "1,8", "--per-repeat", "1", "--n-reference", "8",
        "--steps", "3", "--batch-size", "16", "--warmup-steps", "0", "--n-samples", "8", "--sample-steps", "2",
        "--n-draws", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same canaries trained without and with DP-SGD."""
    here = tmp_path_factory.mktemp("canaries-dp")
    assert main(BASE + ["--out", str(here / "plain")]) == 0
    assert main(BASE + ["--dp-noise", "1.0", "--out", str(here / "dp")]) == 0
    return here


def test_dp_canaries_train_every_copy_as_an_example(runs):
    r = json.loads((runs / "dp" / "result.json").read_text())
    record = json.loads((runs / "dp" / "canaries.json").read_text())
    ids = json.loads((runs / "dp" / "model" / "train_ids.json").read_text())
    dp = json.loads((runs / "dp" / "model" / "dp.json").read_text())
    # 60 images and 2 canaries, one inserted 8 times: DP-SGD's examples are those 62 and the 7 extra copies
    eight = next(c["key"] for c in record["canaries"] if c["repeats"] == 8)
    assert len(ids["keys"]) == 62 and ids["repeats"][eight] == 8 and dp["n_train"] == 62 + 7
    model = json.loads((runs / "dp" / "model" / "result.json").read_text())
    assert (model["n_train"], model["n_stream"]) == (62, 69)
    assert dp["sample_rate"] == pytest.approx(16 / 69)
    assert r["dp"]["epsilon"] == dp["epsilon"] and np.isfinite(dp["epsilon"]) and dp["noise_multiplier"] == 1.0
    assert r["settings"]["dp"]["noise_multiplier"] == 1.0
    # the measurement is the plain run's: every canary once in the verification set, exposures in range
    assert [c["repeats"] for c in r["canaries"]] == [1, 8]
    assert all(0 <= c["exposure"] <= r["max_exposure"] for c in r["canaries"])
    # a run without DP-SGD records no dp setting (as before canaries could use it) and trains with repeats
    plain = json.loads((runs / "plain" / "result.json").read_text())
    assert "dp" not in plain["settings"] and "dp" not in plain
    assert json.loads((runs / "plain" / "model" / "train_ids.json").read_text())["repeats"][eight] == 8


def test_dp_canaries_resume_refuse_other_noise_and_report_the_guarantee(runs, capsys):
    assert main(BASE + ["--dp-noise", "1.0", "--out", str(runs / "dp")]) == 0  # finished: at once
    capsys.readouterr()
    assert main(BASE + ["--dp-noise", "2.0", "--out", str(runs / "dp")]) == 2
    assert "--dp-noise" in capsys.readouterr().err
    assert main(["report", str(runs / "dp"), "--quiet"]) == 0
    summary = json.loads((runs / "dp" / "summary.json").read_text())
    assert summary["model"]["dp"]["noise_multiplier"] == 1.0 and summary["model"]["n_train"] == 62
    html = (runs / "dp" / "report.html").read_text()
    assert 'data-kind="canaries-dp"' in html and "group privacy" in html
    assert main(["report", str(runs / "plain"), "--quiet"]) == 0
    plain = (runs / "plain" / "report.html").read_text()
    assert 'data-kind="canaries-dp"' not in plain
    # the header and the training section say what the count holds: 60 --data images and 2 canaries
    assert plain.count("62 training images, 2 of them inserted canaries") == 2
    capsys.readouterr()
    assert main(["compare", str(runs / "plain"), str(runs / "dp")]) == 0
    table = capsys.readouterr().out
    dp_row = next(line for line in table.splitlines() if line.startswith("| model: DP epsilon"))
    epsilon = json.loads((runs / "dp" / "model" / "dp.json").read_text())["epsilon"]
    assert [c.strip() for c in dp_row.split("|")[2:4]] == ["no DP-SGD", f"{epsilon:.4g}"]
    assert "canaries x8: mean exposure" in table
    images = next(line for line in table.splitlines() if line.startswith("| model: training images"))
    assert [c.strip() for c in images.split("|")[2:5]] == ["62", "62", "0"]  # the same images, trained two ways
