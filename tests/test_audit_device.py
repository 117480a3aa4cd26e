"""Where an audit computes is no setting of its results: a typo in --device is refused before anything is
written, and an audit started with one --device finishes with another."""

import json

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.data import load_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    here = tmp_path_factory.mktemp("device")
    digits = load_dataset("digits", subset=48)
    np.savez(here / "data.npz", images=digits.images)
    assert main(["train", "--data", str(here / "data.npz"), "--subset", "24", "--steps", "10", "--batch-size", "8",
                 "--device", "cpu", "--quiet", "--no-keep-state", "--out", str(here / "run")]) == 0
    return here


def _audit(here, out, device):
    return main(["audit", "--model", str(here / "run"), "--data", str(here / "data.npz"), "--n-samples", "8",
                 "--sample-steps", "2", "--sweep", "", "--device", device, "--quiet", "--out", str(out)])


def test_a_device_typo_writes_nothing(run, tmp_path, capsys):
    assert _audit(run, tmp_path / "a", "gpu") == 2
    assert "--device 'gpu': not a device" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert _audit(run, tmp_path / "a", "cpu") == 0  # the corrected command starts afresh


def test_an_audit_resumes_on_another_device(run, tmp_path, capsys):
    out = tmp_path / "a"
    assert _audit(run, out, "cpu") == 0
    assert "device" not in json.loads((out / "settings.json").read_text())["settings"]
    (out / "summary.json").unlink()  # unfinished at its last step: the resume does work, not only reads
    (out / "result.json").unlink()
    assert _audit(run, out, "auto") == 0, capsys.readouterr().err
    assert (out / "result.json").is_file()
    # an audit of an earlier version recorded its --device: it resumes as well
    record = json.loads((out / "settings.json").read_text())
    record["settings"]["device"] = "cpu"
    (out / "settings.json").write_text(json.dumps(record))
    assert _audit(run, out, "auto") == 0, capsys.readouterr().err
