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

N = 24
TRAIN = ["--steps", "12", "--batch-size", "12", "--warmup-steps", "2", "--checkpoint-every", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shadows")
    ds = load_dataset("digits", subset=N)
    matrix = make_membership(N, 4, seed=1)
    save_membership(root / "m.npz", matrix, ds.keys, 1)
    yield root, matrix


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
