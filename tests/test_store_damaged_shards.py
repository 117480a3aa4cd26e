"""Sample store: a shard damaged after it was finished (truncated, or edited in place) is made again on resume,
bitwise the same, and readers name it and say how to repair it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.store import SampleStore, read_samples
from diffaudit.store.sample_store import DIGEST_FIELD
from helpers import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    """An uninterrupted run's store."""
    ref = tmp_path_factory.mktemp("ref") / "s"
    assert main(sample_args(tiny_model, ref)) == 0
    return ref


def sample_args(model, out, *extra):
    return ["sample", "--model", str(model), "--out", str(out), "--n", "40", "--steps", "3",
            "--shard-size", "16", "--micro-batch", "8", "--quiet", "--device", "cpu", *extra]


def shard_files(store, k):
    return [store / "shards" / f"shard-{k:06d}.{ext}" for ext in ("npy", "json")]


def assert_same_shards(a, b):
    for k in range(3):
        for fa, fb in zip(shard_files(a, k), shard_files(b, k)):
            assert fa.read_bytes() == fb.read_bytes(), fa


def flip_a_byte(path, at=-5):
    """Change one pixel byte in place (same size); the file's modification time moves on."""
    with open(path, "r+b") as f:
        f.seek(at, os.SEEK_END)
        b = f.read(1)
        f.seek(at, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_truncated_shard_of_a_killed_store_is_made_again_on_resume(tiny_model, reference, tmp_path, capsys):
    out = tmp_path / "s"
    env = {**os.environ, "DIFFAUDIT_KILL_AT": "sample.shard:2"}
    proc = subprocess.run([sys.executable, "-m", "diffaudit.cli.main", *sample_args(tiny_model, out)], env=env)
    assert proc.returncode == -9
    npy = out / "shards" / "shard-000001.npy"
    os.truncate(npy, 500)
    kept = os.path.getmtime(out / "shards" / "shard-000000.npy")
    capsys.readouterr()
    assert main(sample_args(tiny_model, out)) == 0
    err = capsys.readouterr().err
    assert "warning: shard 1 of" in err and "shard-000001.npy" in err and "truncated" in err
    assert "shard 0 " not in err
    assert os.path.getmtime(out / "shards" / "shard-000000.npy") == kept  # a sound shard is never rewritten
    assert_same_shards(out, reference)
    assert np.array_equal(read_samples(str(out)).images, read_samples(str(reference)).images)


def test_a_truncated_shard_of_a_finished_store_is_made_again_on_resume(tiny_model, reference, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(sample_args(tiny_model, out)) == 0
    os.truncate(out / "shards" / "shard-000002.npy", 100)  # inside the header too
    capsys.readouterr()
    assert main(sample_args(tiny_model, out)) == 0
    assert "warning: shard 2 of" in capsys.readouterr().err
    assert_same_shards(out, reference)


@pytest.mark.parametrize("lazy", [False, True])
def test_readers_name_a_truncated_shard_and_say_how_to_repair_it(reference, tmp_path, lazy):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(reference, out)
    os.truncate(out / "shards" / "shard-000001.npy", 500)
    with pytest.raises(DiffauditError) as exc:
        read_samples(str(out), lazy=lazy)
    msg = str(exc.value)
    assert "shard-000001.npy" in msg and "truncated" in msg and "Shard 1 of" in msg
    assert "re-run `diffaudit sample`" in msg and f"--out {out}" in msg


def test_export_names_a_truncated_shard(reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(reference, out)
    with open(out / "shards" / "shard-000000.npy", "ab") as f:
        f.write(b"\0" * 7)  # bytes added: damaged too
    assert main(["export", "--samples", str(out), "--out", str(tmp_path / "png")]) != 0
    err = capsys.readouterr().err
    assert "shard-000000.npy" in err and "re-run `diffaudit sample`" in err


def test_a_byte_changed_in_place_is_found_by_its_digest_and_made_again(tiny_model, reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(reference, out)  # copytree keeps modification times
    assert isinstance(json.loads(shard_files(out, 1)[1].read_text())[DIGEST_FIELD], str)
    flip_a_byte(shard_files(out, 1)[0])
    assert SampleStore.open(out).damaged_shards() == {1: SampleStore.open(out).damaged_shards()[1]}
    with pytest.raises(DiffauditError, match="SHA-256.*re-run `diffaudit sample`"):
        SampleStore.open(out).read_shard(1)
    capsys.readouterr()
    assert main(sample_args(tiny_model, out)) == 0
    assert "warning: shard 1 of" in capsys.readouterr().err
    assert_same_shards(out, reference)


def test_the_digest_is_read_on_resume_only_for_pixels_changed_after_their_sidecar(reference, tmp_path):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(reference, out)
    npy, sidecar = shard_files(out, 0)
    st = sidecar.stat()
    flip_a_byte(npy)
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # as if written before its sidecar
    store = SampleStore.open(out)
    assert store.damaged_shards() == {}  # stat and header only: a same-size change is not seen
    assert list(store.damaged_shards(full=True)) == [0]  # the explicit check reads every shard's pixels


def test_sample_check_shards_finds_a_change_the_cheap_check_cannot_and_makes_it_again(tiny_model, reference, tmp_path,
                                                                                      capsys):
    """`damaged_shards(full=True)` had no flag: a same-size change older than its sidecar (a copy that kept
    neither order of modification times) resumed as finished. `sample --check-shards` reads every shard."""
    import shutil

    out = tmp_path / "s"
    shutil.copytree(reference, out)
    npy, sidecar = shard_files(out, 2)
    st = sidecar.stat()
    flip_a_byte(npy)
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    capsys.readouterr()
    assert main(sample_args(tiny_model, out)) == 0  # the default resume does not see it
    assert "shard 2 of" not in capsys.readouterr().err and npy.read_bytes() != shard_files(reference, 2)[0].read_bytes()
    assert main(sample_args(tiny_model, out, "--check-shards")) == 0
    assert "warning: shard 2 of" in capsys.readouterr().err
    assert_same_shards(out, reference)
    settings = json.loads((out / "result.json").read_text())["settings"]
    assert "check_shards" not in settings  # a check, not a setting: the re-run without it resumes


def test_a_store_written_before_digests_resumes_and_still_has_its_sizes_checked(tiny_model, reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(reference, out)
    for k in range(3):
        sidecar = shard_files(out, k)[1]
        meta = json.loads(sidecar.read_text())
        del meta[DIGEST_FIELD]
        sidecar.write_text(json.dumps(meta))
    flip_a_byte(shard_files(out, 0)[0])  # newer than its sidecar, but nothing to check it against
    os.truncate(shard_files(out, 2)[0], 300)
    assert np.array_equal(SampleStore.open(out).read_shard(1)[0], SampleStore.open(reference).read_shard(1)[0])
    capsys.readouterr()
    assert main(sample_args(tiny_model, out)) == 0
    err = capsys.readouterr().err
    assert "warning: shard 2 of" in err and "shard 0 of" not in err and "shard 1 of" not in err
    assert shard_files(out, 2)[0].read_bytes() == shard_files(reference, 2)[0].read_bytes()
    assert DIGEST_FIELD in json.loads(shard_files(out, 2)[1].read_text())  # the remade shard has one
