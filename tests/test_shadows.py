"""`diffaudit shadows`: one run per membership column, resumable after SIGKILL with identical weights."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from diffaudit.cli.main import main
from diffaudit.core.io import read_json
from diffaudit.data import load_dataset, make_membership, save_membership
from tests.helpers import digits_membership

N = 24
TRAIN = ["--steps", "12", "--batch-size", "12", "--warmup-steps", "2", "--checkpoint-every", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shadows")
    yield root, digits_membership(root / "m.npz", N, 4, seed=1)


def args(root: Path, out: str, *extra: str) -> list[str]:
    return ["--quiet", "shadows", "--data", "digits", "--subset", str(N), "--membership", str(root / "m.npz"),
            "--out", str(root / out), *TRAIN, *extra]


def weights(run: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((run / "unet").glob("*.safetensors")))


def test_kill_and_resume_gives_identical_models(setup):
    root, matrix = setup
    assert main(args(root, "straight", "--models", "2")) == 0
    env = dict(os.environ, DIFFAUDIT_KILL_AT="shadows.model:1", OMP_NUM_THREADS="1", DIFFAUDIT_QUIET="1")
    proc = subprocess.run([sys.executable, "-m", "diffaudit.cli.main", *args(root, "killed", "--models", "2")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = root / "killed"
    assert (killed / "model-00" / "result.json").exists() and not (killed / "model-01").exists()
    assert not (killed / "result.json").exists()
    first = (killed / "model-00" / "result.json").stat().st_mtime_ns
    assert main(args(root, "killed", "--models", "2")) == 0
    assert (killed / "model-00" / "result.json").stat().st_mtime_ns == first  # the finished model was not retrained
    for k in range(2):
        assert weights(killed / f"model-{k:02d}") == weights(root / "straight" / f"model-{k:02d}")
    r = read_json(killed / "result.json")
    assert r["n_models"] == 2 and r["n_columns"] == 4
    assert [m["n_train"] for m in r["models"]] == [int(matrix[:, k].sum()) for k in range(2)]
    # the two models differ (own column, own seed)
    assert weights(killed / "model-00") != weights(killed / "model-01")


def test_more_models_later_and_mismatched_settings(setup, capsys):
    root, _ = setup
    assert main(args(root, "grow", "--models", "1")) == 0
    assert main(args(root, "grow", "--models", "2")) == 0  # adds model 1 to the same folder
    assert read_json(root / "grow" / "result.json")["n_models"] == 2
    capsys.readouterr()
    assert main(args(root, "grow", "--models", "2", "--lr", "1e-3")) == 2
    assert "--lr (was 0.0002, now 0.001)" in capsys.readouterr().err


def test_bad_inputs(setup, capsys):
    root, _ = setup
    assert main(args(root, "bad", "--models", "5")) == 2
    assert "--models" in capsys.readouterr().err
    bad = ["--quiet", "shadows", "--data", "digits", "--subset", str(N + 1), "--membership", str(root / "m.npz"),
           "--out", str(root / "bad2"), *TRAIN]
    assert main(bad) == 2
    assert "membership" in capsys.readouterr().err


def test_parallel_workers_give_the_same_models(setup, monkeypatch):
    root, _ = setup
    if not (root / "straight" / "result.json").exists():
        assert main(args(root, "straight", "--models", "2")) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned workers use one thread, as this process does
    assert main(args(root, "parallel", "--models", "2", "--workers", "2")) == 0
    for k in range(2):
        assert weights(root / "parallel" / f"model-{k:02d}") == weights(root / "straight" / f"model-{k:02d}")


def test_a_cut_weights_file_says_how_to_train_that_model_again(setup, capsys):
    """A model whose weights file was cut short failed with the loader's words only, and the user had no
    way of knowing that deleting one shadow's folder trains it again (and `--fresh` all of them): the
    error now says so, and doing it gives the model the uncut run had."""
    root, _ = setup
    assert main(args(root, "cut", "--models", "2")) == 0
    run = root / "cut" / "model-01"
    whole = weights(run)
    (f,) = (run / "unet").glob("*.safetensors")
    f.write_bytes(f.read_bytes()[:5000])
    capsys.readouterr()
    sample = ["sample", "--model", str(run), "--n", "2", "--steps", "2", "--device", "cpu", "--quiet"]
    assert main(sample + ["--out", str(root / "cut-s")]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded" in err and f"delete {run} and re-run the `diffaudit shadows`" in err, err
    shutil.rmtree(run)
    assert main(args(root, "cut", "--models", "2")) == 0
    assert weights(run) == whole
    # a model of `diffaudit train`: trained again with --fresh
    one = root / "one"
    assert main(["--quiet", "train", "--data", "digits", "--subset", str(N), *TRAIN, "--out", str(one)]) == 0
    (f,) = (one / "unet").glob("*.safetensors")
    f.write_bytes(f.read_bytes()[:5000])
    capsys.readouterr()
    assert main(sample[:2] + [str(one)] + sample[3:] + ["--out", str(root / "one-s")]) == 2
    err = capsys.readouterr().err
    assert "train it again: `diffaudit train` with the settings in" in err and "--fresh" in err, err


def test_another_matrix_is_said_before_too_few_shadows(setup, capsys):
    """A 2-column matrix from another seed given with shadows trained on another: LiRA on 2 models is too few
    shadows as well, but the matrix is the mistake, and what the refusal names (as the loss attack does)."""
    root, _ = setup
    assert main(args(root, "pair", "--models", "2")) == 0
    ds = load_dataset("digits", subset=N)
    save_membership(root / "other.npz", make_membership(N, 2, seed=7), ds.keys, 7)
    for attack in ("lira", "loss"):
        assert main(["mia", "--data", "digits", "--subset", str(N), "--shadows", str(root / "pair"), "--membership",
                     str(root / "other.npz"), "--attack", attack, "--device", "cpu", "--out", str(root / f"m-{attack}")]) == 2
        err = capsys.readouterr().err
        assert "of the membership matrix has" in err and "give the --membership and --data the shadows were trained on" in err, err


def test_a_matrix_with_a_model_that_trains_on_nothing_is_refused(tmp_path, capsys):
    """One example for 4 models leaves 2 of them with no example: `membership` refuses to write such a matrix,
    and `shadows`, given one made elsewhere, names the column before any model trains."""
    data = ["--data", "digits", "--subset", "1"]
    assert main(["membership", *data, "--models", "4", "--out", str(tmp_path / "m.npz")]) == 2
    assert "with 1 example and 4 models, model 0 (and 1 more) would train on no example" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()
    ds = load_dataset("digits", subset=1)
    save_membership(tmp_path / "m.npz", make_membership(1, 4, seed=0), ds.keys, 0)
    assert main(["shadows", *data, "--membership", str(tmp_path / "m.npz"), "--out", str(tmp_path / "sh"), *TRAIN]) == 2
    assert "column 0 of the membership matrix" in capsys.readouterr().err and not (tmp_path / "sh").exists()


def test_the_matrix_shadows_were_trained_on_is_never_overwritten(setup, tmp_path, capsys):
    """`membership --fresh --out SHADOWS` with another seed would replace the matrix the shadows in that folder
    were trained on (and every attack on them would be refused): it is refused; the same matrix again is not."""
    root, _ = setup
    assert main(args(root, "kept", "--models", "1")) == 0
    shutil.copy(root / "m.npz", root / "kept" / "membership.npz")
    before = (root / "kept" / "membership.npz").read_bytes()
    base = ["membership", "--data", "digits", "--subset", str(N), "--models", "4", "--out", str(root / "kept"), "--fresh"]
    assert main(base + ["--seed", "2"]) == 2
    assert "is the matrix that the 1 shadow model in" in capsys.readouterr().err
    assert (root / "kept" / "membership.npz").read_bytes() == before
    assert main(base + ["--seed", "1"]) == 0


def _trains_for_ever(*args, **kwargs):
    """A shadow model's training that never ends (a worker process's job)."""
    import time

    time.sleep(600)


@pytest.mark.timeout(120)  # before, the shutdown waited for the 600 s of each worker
def test_an_interrupted_parallel_run_stops_its_workers(setup, monkeypatch):
    """SIGTERM reaches the command's process alone, and a worker stopped by Ctrl-C took up the next model
    queued to it: the pool's shutdown waited for their training (a minute and more). The workers are now
    stopped with the command, which ends at once as interrupted."""
    import multiprocessing
    import threading
    import time

    from diffaudit.attacks.membership.shadows import train_shadows
    from diffaudit.core import interrupt
    from diffaudit.models.training import TrainConfig

    from diffaudit.data.membership import load_membership

    root, _ = setup
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dataset = load_dataset("digits", subset=N)
    membership = load_membership(root / "m.npz", dataset)
    timer = threading.Timer(8.0, os.kill, (os.getpid(), signal.SIGTERM))
    with interrupt.catching_ctrl_c():
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            train_shadows(dataset, membership, TrainConfig(steps=2), root / "forever", workers=2,
                          trainer=_trains_for_ever)
    assert time.monotonic() - started < 30 and interrupt.stopped_with() == 128 + signal.SIGTERM
    assert multiprocessing.active_children() == []
