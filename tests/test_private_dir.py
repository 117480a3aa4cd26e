"""``make_private_dir`` makes the folders it creates owner-only and leaves existing folders as they are; every
folder a small audit (and dedup) creates, caches included, is owner-only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import make_private_dir, write_json_atomic
from diffaudit.core.outdir import prepare_out_dir


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_existing_folder_keeps_its_mode(tmp_path):
    """A user's --out that is group-readable on purpose is not chmodded by diffaudit."""
    out = tmp_path / "results"
    out.mkdir()
    os.chmod(out, 0o750)
    assert make_private_dir(out) == out
    assert _mode(out) == 0o750
    # nor through the output-folder logic every command uses
    prepare_out_dir(out, "sample", {"seed": 0})
    assert _mode(out) == 0o750
    # the files written into it are owner-only whatever the folder's mode
    assert _mode(write_json_atomic(out / "x.json", {"a": 1})) == 0o600


def test_an_existing_folder_through_a_symbolic_link_keeps_its_mode(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.chmod(real, 0o755)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    make_private_dir(tmp_path / "link")
    assert _mode(real) == 0o755


def test_folders_it_creates_are_owner_only_parents_too(tmp_path):
    os.chmod(tmp_path, 0o755)
    leaf = tmp_path / "a" / "b" / "c"
    assert make_private_dir(leaf) == leaf
    assert [_mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", leaf)] == [0o700] * 3
    assert _mode(tmp_path) == 0o755  # the existing ancestor is left as it was
    assert make_private_dir(leaf) == leaf and _mode(leaf) == 0o700  # idempotent


def test_a_created_folder_is_0o700_exactly_whatever_the_umask(tmp_path):
    """The umask may take the owner's own bits from mkdir's mode; a created folder is still 0o700."""
    old = os.umask(0o277)
    try:
        make_private_dir(tmp_path / "new" / "leaf")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new") == 0o700 and _mode(tmp_path / "new" / "leaf") == 0o700


def test_a_file_in_the_way_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(DiffauditError, match=f"could not write {path}") as caught:
            make_private_dir(path)
        assert "A file is in the way" in str(caught.value) and "Free space" not in str(caught.value)


def test_a_device_as_out_is_not_called_a_file_to_remove(capsys):
    """`--out /dev/null` was told "A file is in the way: remove it": the device is named as such, and no
    removal is advised."""
    from diffaudit.cli.main import main

    assert main(["dedup", "--data", "digits", "--subset", "8", "--out", os.devnull]) == 2
    err = capsys.readouterr().err
    assert f"could not write {os.devnull}: it is a device or another special file, not a folder" in err, err
    assert "remove" not in err and "re-run continues" not in err


def test_a_trained_run_is_owner_only_also_where_diffusers_writes_the_files(tmp_path):
    """The UNet and scheduler folders are written by diffusers with the umask's modes; a run's whole
    tree (weights of a model trained on private images) is owner-only all the same."""
    from diffaudit.cli.main import main

    old = os.umask(0o022)
    try:
        assert main(["train", "--data", "digits", "--subset", "16", "--steps", "2", "--batch-size", "8",
                     "--checkpoint-every", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]) == 0
    finally:
        os.umask(old)
    for path in [tmp_path / "run", *(tmp_path / "run").rglob("*")]:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_every_folder_a_pipeline_creates_is_owner_only(tmp_path):
    """The subfolders the stages create for their caches and parts (samples/shards, extract/knn,
    verify/knn and knn-baseline, mia/losses/..., dedup/embeddings) are owner-only like their output
    folder, whatever the umask lets mkdir make."""
    from diffaudit.cli.main import main

    out = tmp_path / "audit"
    old = os.umask(0o022)
    try:
        assert main(["--quiet", "audit", "--subset", "48", "--train-size", "16", "--steps", "4", "--batch-size", "8",
                     "--warmup-steps", "1", "--n-samples", "16", "--sample-steps", "2", "--sweep", "", "--device", "cpu",
                     "--seed", "3", "--out", str(out)]) == 0
        assert main(["--quiet", "dedup", "--data", "digits", "--subset", "48", "--embedder", "pixel",
                     "--out", str(out / "dedup")]) == 0
    finally:
        os.umask(old)
    folders = [Path(d) for d, _, _ in os.walk(out)]
    for sub in ("samples/shards", "extract/knn", "verify/knn", "verify/knn-baseline", "mia/losses", "dedup/embeddings"):
        assert out / sub in folders, sub  # the folders this test is about were made
    assert [(str(d), oct(_mode(d))) for d in folders if _mode(d) != 0o700] == []
