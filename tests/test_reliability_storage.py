"""Disk full and read-only output (issue 9, item 2), through the storage fault hook of core.io.

Tests run as root, so ``DIFFAUDIT_STORAGE_FAULT=ENOSPC|EROFS[:n]`` makes every write through
:mod:`diffaudit.core.io` fail after n successful ones. For `train`, `sample` and `extract`:

- the command exits with status 2 and a message naming the path it could not write and the reason;
- nothing that counts as finished is damaged (finished shards and checkpoints are whole and exact;
  no result.json appears);
- a later run without the fault continues and ends with the bytes of an uninterrupted run.

The n-th write is found by recording the paths an uninterrupted run writes, so the failure lands
exactly where the test says (mid-checkpoint, between a shard's pixels and its sidecar, ...).
`mia` under a full disk is tested in test_mia_end_to_end::test_full_disk_is_a_clear_error.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import diffaudit.core.faults as faults
import diffaudit.core.io as dio
from diffaudit.cli.main import main
from diffaudit.core.io import read_json
from diffaudit.store import SampleStore
from helpers import make_tiny_model_dir

TRAIN = ["train", "--data", "digits", "--subset", "16", "--steps", "30", "--checkpoint-every", "10",
         "--batch-size", "8", "--warmup-steps", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("model"))


def sample_argv(model: Path, out: Path) -> list[str]:
    return ["sample", "--model", str(model), "--out", str(out), "--n", "40", "--steps", "3", "--shard-size", "16",
            "--micro-batch", "8", "--device", "cpu", "--quiet"]


def recorded_writes(monkeypatch, argv: list[str]) -> list[Path]:
    """Run ``argv`` without faults and return, in order, the paths it wrote through core.io."""
    import diffaudit.models.training  # noqa: F401  (imports check_storage by name too)

    paths: list[Path] = []
    real = faults.check_storage
    users = [m for name, m in list(sys.modules.items())
             if name.startswith("diffaudit") and getattr(m, "check_storage", None) is real]
    assert dio in users
    with monkeypatch.context() as mp:
        for m in users:
            mp.setattr(m, "check_storage", lambda p: (paths.append(Path(p)), real(p))[1])
        mp.delenv("DIFFAUDIT_STORAGE_FAULT", raising=False)
        assert main(argv) == 0
    return paths


def run_with_fault(monkeypatch, capsys, argv: list[str], spec: str) -> tuple[int, str]:
    monkeypatch.setattr(faults, "_writes", 0)  # the hook counts writes per process
    monkeypatch.setenv("DIFFAUDIT_STORAGE_FAULT", spec)
    capsys.readouterr()
    rc = main(argv)
    monkeypatch.delenv("DIFFAUDIT_STORAGE_FAULT")
    return rc, capsys.readouterr().err


def assert_clear_error(rc: int, err: str, path: Path, reason: str) -> None:
    assert rc == 2, err
    assert f"could not write {path}: {reason}" in err, err
    assert "Traceback" not in err and "re-run continues" in err


def assert_strict_json_files(root: Path) -> None:
    """Every JSON file left behind is whole, valid JSON without NaN (no half-written file is visible)."""
    for p in root.rglob("*.json"):
        json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{p}: {c}"))


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("train-ref") / "run"
    mp = pytest.MonkeyPatch()
    try:
        writes = recorded_writes(mp, TRAIN + ["--out", str(out)])
    finally:
        mp.undo()
    return out, [str(p.relative_to(out)) for p in writes]


def unet_bytes(run: Path) -> bytes:
    return (run / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def check_train_after_fault(run: Path, ref: Path) -> None:
    assert not (run / "result.json").exists()
    assert_strict_json_files(run)
    for ck in sorted((run / "checkpoints").glob("step-*")) if (run / "checkpoints").exists() else []:
        assert (ck / "state.json").exists(), f"{ck} looks finished but is not"
        load_file(ck / "model.safetensors"), load_file(ck / "ema.safetensors")
        torch.load(ck / "optimizer.pt", weights_only=True)


def train_fault_points(writes: list[str]) -> dict[str, int]:
    """Named places in the write sequence of `train` (index of the write that fails)."""
    second_opt = [i for i, w in enumerate(writes) if w.endswith("optimizer.pt")][1]
    return {"settings": writes.index("settings.json"), "second-checkpoint-optimizer": second_opt,
            "result": writes.index("result.json")}


@pytest.mark.parametrize("where", ["second-checkpoint-optimizer", "result"])
def test_train_disk_full_mid_run_then_resume_gives_identical_weights(train_reference, tmp_path, monkeypatch, capsys, where):
    ref, writes = train_reference
    n = train_fault_points(writes)[where]
    run = tmp_path / "run"
    rc, err = run_with_fault(monkeypatch, capsys, TRAIN + ["--out", str(run)], f"ENOSPC:{n}")
    assert_clear_error(rc, err, run / writes[n], "No space left on device")
    check_train_after_fault(run, ref)
    if where == "second-checkpoint-optimizer":  # the first checkpoint is kept, the second never counts
        assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000010"]
    assert main(TRAIN + ["--out", str(run)]) == 0
    assert unet_bytes(run) == unet_bytes(ref)
    assert (run / "loss_log.jsonl").read_bytes() == (ref / "loss_log.jsonl").read_bytes()


def test_train_read_only_output_writes_nothing(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    rc, err = run_with_fault(monkeypatch, capsys, TRAIN + ["--out", str(run)], "EROFS")
    assert_clear_error(rc, err, run, "Read-only file system")
    assert not run.exists()


def test_train_disk_full_while_saving_the_final_unet_is_a_clear_error(train_reference, tmp_path, monkeypatch, capsys):
    """save_pretrained writes through diffusers, not core.io: a real OSError there is still a clear error."""
    from diffusers import UNet2DModel

    ref, _ = train_reference
    run = tmp_path / "run"

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(UNet2DModel, "save_pretrained", full)
    capsys.readouterr()
    assert main(TRAIN + ["--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"could not write {run / 'unet'}" in err and "No space left on device" in err
    assert not (run / "unet").exists() and not (run / "result.json").exists()
    monkeypatch.undo()
    assert main(TRAIN + ["--out", str(run)]) == 0
    assert unet_bytes(run) == unet_bytes(ref)


@pytest.mark.slow
def test_train_every_failing_write_then_resume(train_reference, tmp_path, monkeypatch, capsys):
    ref, writes = train_reference
    for n in range(len(writes)):
        run = tmp_path / f"run-{n}"
        rc, err = run_with_fault(monkeypatch, capsys, TRAIN + ["--out", str(run)], f"ENOSPC:{n}")
        assert_clear_error(rc, err, run / writes[n] if writes[n] != "." else run, "No space left on device")
        check_train_after_fault(run, ref)
        assert main(TRAIN + ["--out", str(run)]) == 0, n
        assert unet_bytes(run) == unet_bytes(ref), n


# --------------------------------------------------------------------------- sample

@pytest.fixture(scope="module")
def sample_reference(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample-ref") / "store"
    mp = pytest.MonkeyPatch()
    try:
        writes = recorded_writes(mp, sample_argv(tiny_model, out))
    finally:
        mp.undo()
    return out, [str(p.relative_to(out)) for p in writes]


def check_store_after_fault(out: Path, ref: Path) -> None:
    assert not (out / "result.json").exists()
    assert_strict_json_files(out)
    if (out / "manifest.json").exists():
        store, reference = SampleStore.open(out), SampleStore.open(ref)
        for k in store.completed():  # what counts as finished is exact
            assert (store.path / store._npy(k)).read_bytes() == (reference.path / reference._npy(k)).read_bytes()
            assert (store.path / store._sidecar(k)).read_bytes() == (reference.path / reference._sidecar(k)).read_bytes()


def assert_same_store(out: Path, ref: Path) -> None:
    names = sorted(p.name for p in (ref / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir() if not p.name.startswith(".")) == names
    for name in names:
        assert (out / "shards" / name).read_bytes() == (ref / "shards" / name).read_bytes(), name
    for name in ("manifest.json", "result.json", "settings.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


@pytest.mark.parametrize("spec", ["ENOSPC", "EROFS"])
def test_sample_fault_between_a_shards_pixels_and_its_sidecar(sample_reference, tiny_model, tmp_path, monkeypatch, capsys, spec):
    ref, writes = sample_reference
    n = writes.index("shards/shard-000001.json")  # shard 0 finished, shard 1's pixels written, its sidecar fails
    out = tmp_path / "store"
    rc, err = run_with_fault(monkeypatch, capsys, sample_argv(tiny_model, out), f"{spec}:{n}")
    reason = "No space left on device" if spec == "ENOSPC" else "Read-only file system"
    assert_clear_error(rc, err, out / "shards" / "shard-000001.json", reason)
    check_store_after_fault(out, ref)
    store = SampleStore.open(out)
    assert store.completed() == [0] and (out / "shards" / "shard-000001.npy").exists()  # pixels alone: unfinished
    with pytest.raises(Exception, match="unfinished"):
        store.to_dataset()
    assert main(sample_argv(tiny_model, out)) == 0
    assert_same_store(out, ref)


def test_sample_every_failing_write_then_resume(sample_reference, tiny_model, tmp_path, monkeypatch, capsys):
    ref, writes = sample_reference
    for n in range(len(writes)):
        out = tmp_path / f"store-{n}"
        rc, err = run_with_fault(monkeypatch, capsys, sample_argv(tiny_model, out), f"ENOSPC:{n}")
        assert_clear_error(rc, err, out / writes[n] if writes[n] != "." else out, "No space left on device")
        check_store_after_fault(out, ref)
        assert main(sample_argv(tiny_model, out)) == 0, n
        assert_same_store(out, ref)


def test_sample_read_only_output_writes_nothing(tiny_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "store"
    rc, err = run_with_fault(monkeypatch, capsys, sample_argv(tiny_model, out), "EROFS")
    assert_clear_error(rc, err, out, "Read-only file system")
    assert not out.exists()


def test_finished_commands_answer_from_read_only_storage(sample_reference, tiny_model, tmp_path, monkeypatch, capsys):
    """A finished store or run re-run as it was made rewrites nothing: it answers from an archive."""
    ref, _ = sample_reference
    store = tmp_path / "store"
    assert main(sample_argv(tiny_model, store)) == 0
    extract = ["extract", "--samples", str(store), "--out", str(tmp_path / "ex"), "--device", "cpu", "--quiet"]
    assert main(extract) == 0
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    for argv in (sample_argv(tiny_model, store), extract):
        rc, err = run_with_fault(monkeypatch, capsys, argv, "EROFS")
        assert rc == 0, err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    assert_same_store(store, ref)


# --------------------------------------------------------------------------- extract

def test_extract_every_failing_write_then_resume(sample_reference, tmp_path, monkeypatch, capsys):
    store, _ = sample_reference
    argv = lambda out: ["extract", "--samples", str(store), "--out", str(out), "--device", "cpu", "--quiet"]  # noqa: E731
    ref = tmp_path / "ref"
    writes = [str(p.relative_to(ref)) for p in recorded_writes(monkeypatch, argv(ref))]
    assert len(writes) >= 3  # folder, settings, kNN chunk(s), result
    for n in range(len(writes)):
        out = tmp_path / f"ex-{n}"
        rc, err = run_with_fault(monkeypatch, capsys, argv(out), f"ENOSPC:{n}")
        assert_clear_error(rc, err, out / writes[n] if writes[n] != "." else out, "No space left on device")
        assert not (out / "result.json").exists()
        assert_strict_json_files(out) if out.exists() else None
        assert main(argv(out)) == 0
        a, b = read_json(ref / "result.json"), read_json(out / "result.json")
        a.pop("versions"), b.pop("versions")
        assert json.dumps(a).replace(str(ref), "<OUT>") == json.dumps(b).replace(str(out), "<OUT>")
        for chunk in (ref / "knn").iterdir():
            with np.load(chunk) as za, np.load(out / "knn" / chunk.name) as zb:
                assert all(np.array_equal(za[k], zb[k]) for k in za.files)


def test_temp_file_of_a_writer_killed_mid_write_is_removed_on_resume(tmp_path):
    """SIGKILL inside an atomic write leaves `.<name>.<host>-<pid>.<rand>.tmp`; resuming the folder
    deletes it, but keeps the temporary files of writers still running and of other hosts."""
    import signal
    import subprocess

    from diffaudit.core.outdir import prepare_out_dir

    out, _ = prepare_out_dir(tmp_path / "out", "extract", {"a": 1})
    code = ("import os, signal, sys; from diffaudit.core.io import atomic_write; "
            "atomic_write(sys.argv[1], lambda f: (f.write(b'half'), f.flush(), os.kill(os.getpid(), signal.SIGKILL)))")
    proc = subprocess.run([sys.executable, "-c", code, str(out / "part" / "x.npy")])
    assert proc.returncode == -signal.SIGKILL
    (stale,) = (out / "part").glob(".x.npy.*.tmp")
    dead_pid = int(stale.name.split("-")[-1].split(".")[0])
    live = out / "part" / f".y.npy.{dio._HOST}-{os.getpid()}.abcd1234.tmp"
    remote = out / f".z.json.otherhost_{dio._HOST}-{dead_pid}.abcd1234.tmp"
    for f in (live, remote):
        f.write_bytes(b"in flight")
    assert not (out / "part" / "x.npy").exists()
    _, resumed = prepare_out_dir(tmp_path / "out", "extract", {"a": 1})
    assert resumed and not stale.exists()
    assert live.exists() and remote.exists()


def test_atomic_write_flushes_the_file_then_its_folder(tmp_path, monkeypatch):
    """Order of the flushes: the data before the rename, the folder's entry after it."""
    import stat as stat_mod

    from diffaudit.core import io as dio

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(dio.os, "fsync", lambda fd: (events.append("dir" if stat_mod.S_ISDIR(os.fstat(fd).st_mode) else "file"),
                                                     real_fsync(fd))[1])
    monkeypatch.setattr(dio.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    dio.write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert events == ["file", "rename", "dir"]


@pytest.mark.parametrize("variable, value, says", [
    ("DIFFAUDIT_STORAGE_FAULT", "ENOSPACE", "DIFFAUDIT_STORAGE_FAULT='ENOSPACE': expected one of ENOSPC, EROFS, EIO"),
    ("DIFFAUDIT_STORAGE_FAULT", "ENOSPC:x", "DIFFAUDIT_STORAGE_FAULT='ENOSPC:x': the count after ':' must be an integer"),
    ("DIFFAUDIT_KILL_AT", "train.checkpoint:two", "DIFFAUDIT_KILL_AT='train.checkpoint:two': the count after ':' must be"),
])
def test_a_malformed_fault_hook_is_a_one_line_error(variable, value, says, tmp_path, monkeypatch, capsys):
    """The test hooks' own variables, mistyped, were a KeyError or ValueError traceback."""
    monkeypatch.setattr(faults, "_writes", 0)
    monkeypatch.setattr(faults, "_counts", {})
    monkeypatch.setenv(variable, value)
    assert main(TRAIN + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_full_disk_under_torch_save_and_safetensors_is_a_storage_error(tmp_path, monkeypatch):
    """On a real full disk (tmpfs) torch.save raised "RuntimeError: unexpected pos" and diffusers'
    safetensors writer "SafetensorError: ... (os error 28)": tracebacks, not the storage error a
    failed write of diffaudit's own gives ("could not write ...: Free space")."""
    import errno
    import io

    import torch
    from safetensors import SafetensorError

    from diffaudit.core.errors import DiffauditError
    from diffaudit.core.io import atomic_write, write_through
    from diffaudit.models.training import save_pretrained_atomic

    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full() -> io.BufferedWriter:  # a file on a full disk, buffered as atomic_write's is
        return io.BufferedWriter(Full(), buffer_size=64)

    with pytest.raises(RuntimeError, match="unexpected pos"):  # torch's own error, as seen on the full disk
        torch.save({"w": torch.zeros(1000)}, full())
    with pytest.raises(OSError) as caught:
        write_through(full(), lambda w: torch.save({"w": torch.zeros(1000)}, w))
    assert caught.value.errno == errno.ENOSPC

    # through atomic_write (as the training state is written): the storage error, naming the file
    with pytest.raises(DiffauditError, match=r"could not write .*state.pt: No space left on device. Free space"):
        atomic_write(tmp_path / "state.pt", lambda f: write_through(full(), lambda w: torch.save({"w": torch.zeros(9)}, w)))

    class Model:
        def save_pretrained(self, folder, safe_serialization=True):
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                  "\"No space left on device\" }) No space left on device (os error 28)")

    with pytest.raises(DiffauditError, match=r"could not write .*unet: No space left on device. Free space"):
        save_pretrained_atomic(Model(), tmp_path / "unet")
    assert not (tmp_path / "unet").exists()


def test_a_write_cut_short_names_the_file_size_limit(tmp_path):
    """`ulimit -f` cut a shard short: numpy's "8192 requested and 1920 written", without an error number, got
    the advice of a read-only --out; it now names the limit, as EFBIG does."""
    import errno

    from diffaudit.core.io import storage_error

    short = str(storage_error(tmp_path / "shard.npy", OSError("8192 requested and 1920 written")))
    assert "8192 requested and 1920 written. The write was cut short: free space, raise the file size limit" in short
    too_big = str(storage_error(tmp_path / "shard.npy", OSError(errno.EFBIG, "File too large")))
    assert "File too large. A file outgrew the largest this process may write (`ulimit -f`" in too_big
