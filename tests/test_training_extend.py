"""`train --extend`: a finished run trained on to more steps equals a run trained that long from the start."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

import diffaudit.models.training as training
from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.data.dataset import ImageDataset
from diffaudit.models.training import TrainConfig

TRAIN = ["train", "--data", "digits", "--subset", "48", "--batch-size", "16", "--warmup-steps", "5", "--quiet"]


def weights(run):
    return load_file(str(run / "unet" / "diffusion_pytorch_model.safetensors"))


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


@pytest.fixture(scope="module")
def syn():
    rng = np.random.default_rng(0)
    return ImageDataset(rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8), [f"k{i}" for i in range(12)], source="syn")


def config(steps):
    # log_every 4 does not divide 6: the short run's last log line is a partial one the longer run must not have
    return TrainConfig(preset="tiny", steps=steps, batch_size=4, warmup_steps=3, seed=1, checkpoint_every=4, log_every=4)


def test_extended_run_equals_one_trained_that_long(tmp_path, syn):
    short = training.train(syn, config(6), tmp_path / "short", keep_state=True)
    before = weights(short)
    long = training.train(syn, config(10), tmp_path / "long", extend=short, keep_state=True)
    ref = training.train(syn, config(10), tmp_path / "ref")
    assert same_weights(long, ref)
    assert (long / "loss_log.jsonl").read_text() == (ref / "loss_log.jsonl").read_text()
    assert [json.loads(line)["step"] for line in (long / "loss_log.jsonl").read_text().splitlines()] == [4, 8, 10]
    assert [json.loads(line)["step"] for line in (short / "loss_log.jsonl").read_text().splitlines()] == [4, 6]
    after = weights(short)  # the finished run is left as it was
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    result = json.loads((long / "result.json").read_text())
    assert result["extended_from"] == {"run": str(short.resolve()), "steps": 6} and result["steps"] == 10
    assert json.loads((ref / "result.json").read_text())["extended_from"] is None
    assert not (ref / "state").exists() and not (long / "checkpoints").exists()
    # the extension kept its own state: it can be trained on again, and still equals the uninterrupted run
    longer = training.train(syn, config(13), tmp_path / "longer", extend=long)
    assert same_weights(longer, training.train(syn, config(13), tmp_path / "ref13"))


def test_a_run_ending_on_a_log_line_extends_to_the_same_loss_log(tmp_path, syn):
    """8 steps, logged every 4: its last line is one the longer run writes too, so the extension starts an empty
    window after it (it averaged steps 5 to 12 into its step-12 line, and lacked the step-8 line)."""
    short = training.train(syn, config(8), tmp_path / "short", keep_state=True)
    long = training.train(syn, config(12), tmp_path / "long", extend=short)
    ref = training.train(syn, config(12), tmp_path / "ref")
    assert same_weights(long, ref)
    assert (long / "loss_log.jsonl").read_text() == (ref / "loss_log.jsonl").read_text()
    assert [json.loads(line)["step"] for line in (long / "loss_log.jsonl").read_text().splitlines()] == [4, 8, 12]


def test_killed_extension_resumes_to_the_same_weights(tmp_path, syn, monkeypatch):
    short = training.train(syn, config(6), tmp_path / "short", keep_state=True)
    calls = {"n": 0}

    def kill_at_step_3_of_the_extension(name):
        if name == "train.step":
            calls["n"] += 1
            if calls["n"] == 3:  # step 9 of 10, after the checkpoint at step 8
                raise KeyboardInterrupt

    monkeypatch.setattr(training, "fault_point", kill_at_step_3_of_the_extension)
    with pytest.raises(KeyboardInterrupt):
        training.train(syn, config(10), tmp_path / "long", extend=short)
    monkeypatch.undo()
    assert [p.name for p in training.checkpoint_dirs(tmp_path / "long")] == ["step-00000006", "step-00000008"]
    long = training.train(syn, config(10), tmp_path / "long", extend=short)
    assert same_weights(long, training.train(syn, config(10), tmp_path / "ref"))
    assert json.loads((long / "result.json").read_text())["extended_from"]["steps"] == 6


def test_extension_refusals_leave_no_folder(tmp_path, syn):
    short = training.train(syn, config(6), tmp_path / "short", keep_state=True)
    other = dict(vars(config(10)), lr=1e-3)
    with pytest.raises(DiffauditError, match=r"--extend .*short was trained with other settings: train.lr \(was 0.0002, now 0.001\)"):
        training.train(syn, TrainConfig(**other), tmp_path / "long", extend=short)
    with pytest.raises(DiffauditError, match=r"trained with other settings: .*pixels"):
        training.train(syn.subset(list(range(10))), config(10), tmp_path / "long", extend=short)
    with pytest.raises(DiffauditError, match="has trained 6 steps already: give a larger --steps"):
        training.train(syn, config(6), tmp_path / "long", extend=short)
    assert not (tmp_path / "long").exists()
    plain = training.train(syn, config(6), tmp_path / "plain")  # the library keeps no state unless asked
    with pytest.raises(DiffauditError, match="kept no training state"):
        training.train(syn, config(10), tmp_path / "long", extend=plain)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(DiffauditError, match="is not a `diffaudit train` run folder"):
        training.train(syn, config(10), tmp_path / "long", extend=tmp_path / "unfinished")


def test_cli_extend(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(TRAIN + ["--steps", "4", "--out", str(a)]) == 0
    assert (a / "state" / "state.json").is_file()  # `train` keeps it by default
    # the same --out with more steps is refused, saying how to train it on
    assert main(TRAIN + ["--steps", "8", "--out", str(a)]) == 2
    err = capsys.readouterr().err
    assert "--steps (was 4, now 8)" in err and f"--extend {a} and a new --out" in err
    assert main(TRAIN + ["--steps", "8", "--extend", str(a), "--out", str(a)]) == 2
    assert "needs a new --out" in capsys.readouterr().err
    loud = [x for x in TRAIN if x != "--quiet"]
    assert main(loud + ["--steps", "8", "--extend", str(a), "--out", str(b), "--no-keep-state"]) == 0
    err = capsys.readouterr().err  # the copied state is the extension's start, not a resume of b
    assert f"training on from the 4 steps of {a}" in err and "resuming" not in err
    assert not (b / "state").exists() and json.loads((b / "result.json").read_text())["extended_from"]["steps"] == 4
    assert main(TRAIN + ["--steps", "8", "--out", str(tmp_path / "ref")]) == 0
    assert same_weights(b, tmp_path / "ref")
    assert main(TRAIN + ["--steps", "12", "--extend", str(b), "--out", str(tmp_path / "c")]) == 2
    assert "kept no training state (it was trained with --no-keep-state" in capsys.readouterr().err
    assert main(TRAIN + ["--steps", "8", "--extend", str(a), "--out", str(tmp_path / "dp"), "--dp-noise", "1.0"]) == 2
    assert "--extend and DP-SGD together are not supported" in capsys.readouterr().err
    assert main(TRAIN + ["--steps", "4", "--out", str(a), "--no-keep-state"]) == 0  # finished: the kept state goes, as asked
    assert not (a / "state").exists() and (a / "result.json").is_file()
    capsys.readouterr()
    assert main(loud + ["--steps", "4", "--out", str(a), "--keep-state"]) == 0  # it used to say only "nothing to do"
    err = " ".join(capsys.readouterr().err.split())
    assert "already finished" in err and "finished earlier without its final state" in err and "--fresh" in err
    assert main(TRAIN + ["--steps", "4", "--out", str(a), "--keep-state"]) == 0  # --quiet keeps the warning alone
    assert capsys.readouterr().err.startswith(f"diffaudit train: warning: --keep-state: {a} finished earlier without")
    assert main(loud + ["--steps", "4", "--out", str(a)]) == 0  # the default --keep-state: nothing to say
    assert "without its final state" not in capsys.readouterr().err
