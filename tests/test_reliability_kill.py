"""Kill and resume (issue 9, item 1): SIGKILL at seeded fault points and at random moments, then resume.

`train`, `sample`, `shadows` and `mia` each have a kill-and-resume test in their own files
(test_training, test_store, test_shadows, test_mia_end_to_end). Here:

- the whole `audit`, killed twice by the fault hooks (inside training after a checkpoint, then inside
  sampling after a shard) and resumed in-process, ends with the same bytes as an uninterrupted audit:
  weights, sample shards, scores, and every stage's result.json up to wall-clock fields;
- (slow) `train` and `sample` killed by the parent at seeded random moments, several times in a row:
  after every kill each piece marked finished is whole and equal to the reference, and the finished
  run equals an uninterrupted one bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffaudit.cli.main import main
from diffaudit.core.io import read_json
from diffaudit.store import SampleStore
from helpers import make_tiny_model_dir

AUDIT = ["audit", "--subset", "48", "--train-size", "16", "--steps", "40", "--checkpoint-every", "20",
         "--batch-size", "8", "--warmup-steps", "5", "--n-samples", "32", "--sample-steps", "3", "--sweep", "",
         "--device", "cpu", "--seed", "3"]

# Keys whose values are wall-clock measurements (or package versions): the only ones allowed to differ.
VOLATILE = {"seconds", "seconds_this_session", "versions", "images_per_second", "images_per_second_after_warmup"}


def normalised(obj, roots: list[Path]):
    """``obj`` without wall-clock fields, with the run's own folder replaced by ``<OUT>`` in every string."""
    if isinstance(obj, dict):
        return {k: normalised(v, roots) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [normalised(v, roots) for v in obj]
    if isinstance(obj, str):
        for r in roots:
            obj = obj.replace(str(r.resolve()), "<OUT>").replace(str(r), "<OUT>")
        return obj
    return obj


def files_of(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def assert_same_outputs(ref: Path, other: Path, *, skip_suffixes=(".html", ".png", ".pt")) -> None:
    """Every file of ``ref`` exists in ``other`` with the same content: bytes for arrays and weights,
    arrays for .npz (zip members carry timestamps), JSON up to wall-clock fields and the folder name."""
    names = files_of(ref)
    assert names == files_of(other), sorted(names ^ files_of(other))
    for name in sorted(names):
        a, b = ref / name, other / name
        if name.endswith(skip_suffixes) or name.endswith("timing.json"):
            continue
        if name.endswith(".json"):
            assert normalised(read_json(a), [ref]) == normalised(read_json(b), [other]), name
        elif name.endswith(".npz"):
            with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
                assert sorted(za.files) == sorted(zb.files), name
                for k in za.files:
                    np.testing.assert_array_equal(za[k], zb[k], err_msg=f"{name}:{k}")
        else:  # .npy shards and losses, .safetensors weights, .jsonl logs, .toml config
            if name.endswith(".toml"):
                assert a.read_text().replace(str(ref), "<OUT>") == b.read_text().replace(str(other), "<OUT>"), name
            else:
                assert a.read_bytes() == b.read_bytes(), name


def cli_subprocess(argv: list[str], env_extra: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DIFFAUDIT_QUIET="1", **env_extra)
    return subprocess.run([sys.executable, "-m", "diffaudit.cli.main", "--quiet", *argv], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference_audit(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-ref") / "out"
    assert main(["--quiet", *AUDIT, "--out", str(root)]) == 0
    return root


def test_audit_killed_in_training_then_in_sampling_resumes_to_the_same_bytes(reference_audit, tmp_path):
    out = tmp_path / "out"
    argv = [*AUDIT, "--out", str(out)]

    # 1. Killed right after training wrote its first checkpoint (step 20 of 40).
    proc = cli_subprocess(argv, {"DIFFAUDIT_KILL_AT": "train.checkpoint:1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = out / "models" / "model-00"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000020"]
    assert not (run / "result.json").exists() and not (run / "unet").exists()
    assert not (out / "samples").exists() and not (out / "result.json").exists()

    # 2. Re-run: training resumes at step 20 and finishes; killed again after the first sample shard.
    proc = cli_subprocess(argv, {"DIFFAUDIT_KILL_AT": "sample.shard:1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (run / "result.json").exists()
    store = SampleStore.open(out / "samples")
    assert store.completed() == [0] and not (out / "samples" / "result.json").exists()
    trained_at = (run / "result.json").stat().st_mtime_ns
    shard_at = (out / "samples" / "shards" / "shard-000000.npy").stat().st_mtime_ns

    # 3. Re-run in-process to the end: finished pieces are kept, the rest is done.
    assert main(["--quiet", *argv]) == 0
    assert (run / "result.json").stat().st_mtime_ns == trained_at
    assert (out / "samples" / "shards" / "shard-000000.npy").stat().st_mtime_ns == shard_at
    assert read_json(out / "result.json")["stages"] == ["train", "sample", "extract", "verify", "mia", "outliers"]

    # Same weights (bitwise), shards (bitwise), scores and results as the uninterrupted audit.
    a = load_file(reference_audit / "models/model-00/unet/diffusion_pytorch_model.safetensors")
    b = load_file(run / "unet/diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert_same_outputs(reference_audit, out)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


def test_audit_config_toml_round_trips_and_resumes(reference_audit, capsys):
    """The config.toml an audit saves is data that reproduces it: re-running with it resumes the same
    folder (no setting differs) and redoes nothing."""
    stamp = (reference_audit / "mia" / "result.json").stat().st_mtime_ns
    argv = ["audit", "--config", str(reference_audit / "config.toml"), "--out", str(reference_audit), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (reference_audit / "mia" / "result.json").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- random kills (slow)

# The child imports everything first, then touches a file: kill times count from there, not from a
# process start whose import time varies with the machine's load.
_CHILD = (
    "import sys, pathlib\n"
    "import torch, diffusers, diffaudit.cli.main, diffaudit.cli.train, diffaudit.cli.sample\n"
    "import diffaudit.models.training, diffaudit.models.denoiser, diffaudit.sampling.sources, diffaudit.store\n"
    "from diffusers import UNet2DModel, DDPMScheduler\n"
    "pathlib.Path(sys.argv[1]).touch()\n"
    "sys.exit(diffaudit.cli.main.main(sys.argv[2:]))\n"
)


def _child(argv: list[str], ready: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", DIFFAUDIT_QUIET="1")
    env.pop("DIFFAUDIT_KILL_AT", None)
    ready.unlink(missing_ok=True)
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(ready), "--quiet", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(proc: subprocess.Popen, ready: Path) -> None:
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def _reference_run(argv: list[str], ready: Path) -> float:
    """Run ``argv`` uninterrupted in a child like the killed ones; returns its length after the imports."""
    proc = _child(argv, ready)
    _wait_ready(proc, ready)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return time.monotonic() - t0


def _kill_at_random_moments(argv: list[str], ready: Path, rng: random.Random, kills: int, span: float, check) -> int:
    """Run ``argv`` in a subprocess and SIGKILL it a seeded random time after its imports (5% to 30% of
    ``span``, the length of an uninterrupted run, so most kills land mid-run); check the folder after
    each; repeat ``kills`` times. Returns how many runs were really killed (not finished first)."""
    killed = 0
    for _ in range(kills):
        proc = _child(argv, ready)
        try:
            _wait_ready(proc, ready)
            time.sleep(span * rng.uniform(0.05, 0.3))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()
        proc.stderr.close()
        check()
    return killed


@pytest.mark.slow
def test_train_killed_at_random_moments_ends_with_identical_weights(tmp_path):
    argv = ["train", "--data", "digits", "--subset", "32", "--steps", "150", "--checkpoint-every", "10",
            "--batch-size", "16", "--warmup-steps", "5", "--device", "cpu"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    span = _reference_run([*argv, "--out", str(ref)], tmp_path / "ready")  # kills land inside a run this long
    progress = []

    def check():
        cks = sorted((out / "checkpoints").glob("step-*/state.json")) if (out / "checkpoints").exists() else []
        progress.append("done" if (out / "result.json").exists() else len(cks) and int(cks[-1].parent.name[5:]))
        # Every checkpoint that counts as complete loads, whole, and names its own step.
        for ck in (out / "checkpoints").glob("step-*") if (out / "checkpoints").exists() else []:
            if (ck / "state.json").exists():
                assert read_json(ck / "state.json")["step"] == int(ck.name.split("-")[1])
                load_file(ck / "model.safetensors"), load_file(ck / "ema.safetensors")
                torch.load(ck / "optimizer.pt", weights_only=True)
                assert len(read_json(ck / "log.json")) >= 1
        if (out / "result.json").exists():  # finished: the weights must already be the final ones
            assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == \
                (ref / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    killed = _kill_at_random_moments([*argv, "--out", str(out)], tmp_path / "ready", random.Random(9), 5, span, check)
    assert killed >= 3 and any(p not in (0, "done") for p in progress), progress  # really interrupted mid-training
    assert main(["--quiet", *argv, "--out", str(out)]) == 0
    for name in ("unet/diffusion_pytorch_model.safetensors", "loss_log.jsonl", "train_ids.json", "train_config.json"):
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    assert normalised(read_json(ref / "result.json"), [ref]) == normalised(read_json(out / "result.json"), [out])


@pytest.mark.slow
def test_sample_killed_at_random_moments_ends_with_identical_shards(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    argv = ["sample", "--model", str(model), "--n", "360", "--steps", "8", "--shard-size", "12", "--micro-batch", "12",
            "--device", "cpu"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    span = _reference_run([*argv, "--out", str(ref)], tmp_path / "ready")
    reference = SampleStore.open(ref)
    seen_complete: set[int] = set()
    progress = []

    def check():
        if not (out / "manifest.json").exists():
            return
        store = SampleStore.open(out)
        done = store.completed()
        progress.append(len(done))
        assert seen_complete <= set(done)  # a finished shard never becomes unfinished
        seen_complete.update(done)
        for k in done:  # what counts as finished is whole and exact (temporary files never count)
            assert (store.path / store._npy(k)).read_bytes() == (reference.path / reference._npy(k)).read_bytes()
            assert (store.path / store._sidecar(k)).read_bytes() == (reference.path / reference._sidecar(k)).read_bytes()
        if (out / "result.json").exists():
            assert store.pending() == []
        if done and len(done) < store.n_shards:
            with pytest.raises(Exception, match="unfinished"):
                store.to_dataset()

    killed = _kill_at_random_moments([*argv, "--out", str(out)], tmp_path / "ready", random.Random(4), 5, span, check)
    assert killed >= 3 and any(0 < p < reference.n_shards for p in progress), progress
    assert main(["--quiet", *argv, "--out", str(out)]) == 0
    check()
    for name in files_of(ref / "shards"):
        assert (ref / "shards" / name).read_bytes() == (out / "shards" / name).read_bytes(), name
    assert (ref / "result.json").read_bytes() == (out / "result.json").read_bytes()
    assert {p.name for p in (out / "shards").iterdir() if not p.name.startswith(".")} == files_of(ref / "shards")
