"""Training: the loss falls, resume equals an uninterrupted run, the run directory is complete."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.models.training import TrainConfig, batch_positions, expand_repeats

TRAIN = ["train", "--data", "digits", "--subset", "48", "--preset", "tiny", "--batch-size", "16",
         "--warmup-steps", "5", "--quiet"]


def weights(run):
    return load_file(os.path.join(run, "unet", "diffusion_pytorch_model.safetensors"))


def test_training_decreases_loss_and_writes_run_dir(tmp_path):
    out = tmp_path / "run"
    assert main(TRAIN + ["--steps", "120", "--checkpoint-every", "40", "--out", str(out)]) == 0
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    ids = json.loads((out / "train_ids.json").read_text())
    assert len(ids["keys"]) == 48 and ids["keys"][0].startswith("digits:")
    assert (out / "scheduler" / "scheduler_config.json").exists()
    result = json.loads((out / "result.json").read_text())
    assert result["command"] == "train" and result["schema_version"] == 1 and "versions" in result
    assert result["n_parameters"] < 250_000


def test_killed_training_resumes_to_identical_weights(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    args = TRAIN + ["--steps", "30", "--checkpoint-every", "10"]
    assert main(args + ["--out", str(ref)]) == 0
    env = {**os.environ, "DIFFAUDIT_KILL_AT": "train.step:25"}  # dies after the step-20 checkpoint
    proc = subprocess.run([sys.executable, "-m", "diffaudit.cli.main", *args, "--out", str(killed)], env=env)
    assert proc.returncode == -9
    assert not (killed / "result.json").exists()
    assert main(args + ["--out", str(killed)]) == 0
    a, b = weights(ref), weights(killed)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert (ref / "loss_log.jsonl").read_text() == (killed / "loss_log.jsonl").read_text()
    assert json.loads((ref / "result.json").read_text()) == json.loads((killed / "result.json").read_text())


def test_other_settings_on_same_out_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--steps", "10", "--checkpoint-every", "10", "--lr", "1e-4", "--out", str(out)]) == 0
    assert main(TRAIN + ["--steps", "10", "--checkpoint-every", "10", "--lr", "3e-4", "--out", str(out)]) == 2
    assert "lr" in capsys.readouterr().err


def test_resume_refuses_training_data_rewritten_in_place(tmp_path, capsys):
    """The training examples' pixels are part of a run's settings: the same path with other pixels is
    another training set, never resumed into the same weights."""
    from diffaudit.data import load_dataset

    images = load_dataset("digits", subset=32).images
    data, out = tmp_path / "d.npz", tmp_path / "run"
    np.savez(data, images=images)
    args = ["train", "--data", str(data), "--preset", "tiny", "--batch-size", "16", "--warmup-steps", "2", "--steps", "4",
            "--checkpoint-every", "4", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 0  # unchanged: finished, resumed
    images[31, 4, 4, 0] ^= 1
    np.savez(data, images=images)
    capsys.readouterr()
    assert main(args) == 2
    assert "the pixels of the training images (--data) (was " in capsys.readouterr().err
    # another subset is other examples: said in words, not as the digest's setting name
    assert main(args + ["--subset", "16"]) == 2
    err = capsys.readouterr().err
    assert "which examples it trains on (--data, --subset, --membership, --repeat, --dedup) (was " in err
    assert "training_set_digest" not in err


def test_repeats_and_batches_are_deterministic():
    stream = expand_repeats(np.array([0, 1, 2]), {1: 3})
    assert stream.tolist() == [0, 1, 1, 1, 2]
    with pytest.raises(DiffauditError):
        expand_repeats(np.array([0, 1]), {5: 2})
    a = [batch_positions(s, 4, 10, seed=3).tolist() for s in range(5)]
    assert a == [batch_positions(s, 4, 10, seed=3).tolist() for s in range(5)]
    # Every epoch visits every position once.
    flat = sum(a, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


def test_bad_config_is_rejected():
    with pytest.raises(DiffauditError):
        TrainConfig(lr=5.0).validate()
    with pytest.raises(DiffauditError):
        TrainConfig(steps=0).validate()


def test_checkpoint_interval_covers_runs_shorter_than_checkpoint_every():
    from diffaudit.models.training import checkpoint_interval

    assert checkpoint_interval(TrainConfig(steps=400, checkpoint_every=500, log_every=50)) == 200
    assert checkpoint_interval(TrainConfig(steps=10_000, checkpoint_every=500, log_every=50)) == 500
    assert checkpoint_interval(TrainConfig(steps=30, checkpoint_every=10, log_every=10)) == 10
    assert checkpoint_interval(TrainConfig(steps=1, checkpoint_every=500, log_every=50)) == 1


def test_short_run_checkpoints_mid_log_window_and_resumes_identically(tmp_path, monkeypatch):
    """--steps 6 below --checkpoint-every 100 used to write no checkpoint at all (a kill lost every step).
    Now it checkpoints at step 3, inside the log window 3-4: the window's partial sum travels with the
    checkpoint, so the resumed run's loss log and weights equal the uninterrupted run's."""
    import diffaudit.models.training as training
    from diffaudit.data.dataset import ImageDataset

    rng = np.random.default_rng(0)
    ds = ImageDataset(rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8), [f"k{i}" for i in range(12)], source="syn")
    cfg = TrainConfig(preset="tiny", steps=6, batch_size=4, warmup_steps=0, seed=2, checkpoint_every=100, log_every=2)
    ref = training.train(ds, cfg, tmp_path / "ref")
    calls = {"n": 0}

    def kill_at_step_5(name):
        if name == "train.step":
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt

    monkeypatch.setattr(training, "fault_point", kill_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        training.train(ds, cfg, tmp_path / "killed")
    monkeypatch.undo()
    assert [p.name for p in training.checkpoint_dirs(tmp_path / "killed")] == ["step-00000003"]
    state = json.loads((tmp_path / "killed" / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["step"] == 3 and state["window"]["steps"] == 1 and state["window"]["loss_sum"] > 0
    from diffaudit.models.denoiser import read_unet_config  # an unfinished run is said to be one, with how to finish it
    with pytest.raises(DiffauditError, match=r"--model .*killed: an unfinished `diffaudit train` run \(its last checkpoint "
                                             r"is step 3 of 6; .*Run the same `diffaudit train \.\.\. --out .*killed` again"):
        read_unet_config(tmp_path / "killed")
    killed = training.train(ds, cfg, tmp_path / "killed")
    a, b = weights(ref), weights(killed)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert (ref / "loss_log.jsonl").read_text() == (killed / "loss_log.jsonl").read_text()
    assert [json.loads(line)["step"] for line in (ref / "loss_log.jsonl").read_text().splitlines()] == [2, 4, 6]
    assert not (killed / "checkpoints").exists()  # dropped once finished
    (killed / "checkpoints" / "step-00000003").mkdir(parents=True)  # as if killed between the result and the cleanup
    training.train(ds, cfg, tmp_path / "killed")  # finished: nothing to do but the cleanup
    assert not (killed / "checkpoints").exists()
