"""`--model` given a folder that is not the model meant: another command's folder (an audit's, a canaries
run's), a run's own `unet/` folder, or the model of a canaries run. Each is said as what it is, with what to
pass instead, never as a model "trained elsewhere" that needs a hand-written train_ids.json, nor, with
--heldout, taken to have trained on all of --data."""

from __future__ import annotations

import json

import pytest

from diffaudit.cli.main import main
from diffaudit.core.io import write_json_atomic
from diffaudit.core.outdir import SETTINGS_FILE, settings_record
from diffaudit.data import load_dataset
from tests.helpers import make_tiny_model_dir

AUDIT = ["audit", "--data", "digits", "--subset", "40", "--n-samples", "8", "--sweep", "", "--device", "cpu"]


def _folder_of(path, command):
    write_json_atomic(path / SETTINGS_FILE, settings_record(command, {}))
    return path


@pytest.fixture
def folders(tmp_path):
    keys = load_dataset("digits", subset=40).keys[:20]  # among the audit's --data
    run = make_tiny_model_dir(tmp_path / "run")  # a run that records its training set
    (run / "train_ids.json").write_text(json.dumps({"keys": keys}))
    audit = _folder_of(tmp_path / "audit", "audit")
    make_tiny_model_dir(audit / "models" / "model-00")
    canaries = _folder_of(tmp_path / "can", "canaries")
    model = make_tiny_model_dir(canaries / "model")
    (model / "train_ids.json").write_text(json.dumps({"keys": keys + ["canary/noise/0000"]}))
    return run, audit, canaries


def test_a_folder_that_is_not_the_model_is_said_as_what_it_is(folders, tmp_path, capsys):
    run, audit, canaries = folders
    for given, said in (
            (audit, f"--model {audit}: the folder of `diffaudit audit`, not one model; pass one of its models: "
                    f"{audit / 'models' / 'model-00'}"),
            (run / "unet", f"--model {run / 'unet'} is the UNet folder of the run {run}, which records its training set: "
                           f"pass --model {run}"),
            (canaries, f"--model {canaries}: the folder of `diffaudit canaries`, not a model. Its model ({canaries / 'model'}) "
                       f"trained on --data and the canaries it inserted, which no --data holds, so it is measured by that "
                       f"run itself: `diffaudit report {canaries}`"),
            (canaries / "model", f"--model {canaries / 'model'} is the model of the canaries run {canaries}: 1 of the 21 "
                                 "examples it trained on are the canaries that run inserted (first: 'canary/noise/0000')")):
        for heldout in ([], ["--heldout", "digits"]):  # never "taken to have trained on all of --data"
            out = tmp_path / "o"
            assert main(AUDIT + ["--model", str(given), *heldout, "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert said in err and "train_ids.json yourself" not in err and "taken to have trained" not in err, (given, err)
            assert not out.exists()


def test_a_dp_or_deduplicated_target_whose_shadows_train_plainly_is_warned_of(tmp_path, capsys):
    """LiRA compares the target's losses with the shadows'; `shadows` trains on plain halves of --data, and with
    DP-SGD only where the target records the noise it trained with (tests/test_shadows_dp.py), so a deduplicated
    --model, or a DP-SGD one whose record holds no noise multiplier, gets a warning naming how it trained (and
    that the loss attack needs no shadows); a plain one gets none. (The unknown --device then stops each audit before it trains.)"""
    keys = load_dataset("digits", subset=40).keys[:20]
    for name, record, dropped in (("plain", {}, None), ("dp", {"dp": {"target_epsilon": 8.0, "delta": 1e-5}}, None),
                                  ("dedup", {}, ["digits:1"])):
        run = make_tiny_model_dir(tmp_path / name)
        (run / "train_ids.json").write_text(json.dumps({"keys": keys}))
        (run / "train_config.json").write_text(json.dumps({"preset": "tiny", **record}))
        if dropped:
            (run / "dropped_duplicates.json").write_text(json.dumps({"keys": dropped}))
        assert main(AUDIT + ["--model", str(run), "--shadows", "2", "--mia", "lira-fixed", "--device", "tpu9",
                             "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        said = {"plain": None, "dp": "trained with DP-SGD (its train_config.json records no noise multiplier the shadows "
                                     "could use), which the shadows do not copy",
                "dedup": "trained on a deduplicated training set (--dedup), which the shadows do not copy"}[name]
        assert (said in err and "--mia loss needs no shadows" in err) if said else "do not copy" not in err, (name, err)
