"""On a machine a team shares: diffaudit writes its folders owner-only, so a colleague's store, run or data
folder is refused to the next user by the system. That is one line naming the path, never a PermissionError
traceback, and never a weights file "not found" with advice to train the model again (`--fresh` would
delete a good one). The tests stand in for the other user with a refusal the system would give: they may
run as root, whom no permission stops."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from diffaudit.cli.main import main
from helpers import make_tiny_model_dir


def test_a_folder_this_user_may_not_open_is_one_line_naming_it(tmp_path, monkeypatch, capsys, write_images):
    import numpy as np

    from diffaudit.data import folder

    images = write_images({f"{i}.png": np.full((8, 8), i * 9, np.uint8) for i in range(4)})

    def refused(root, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(root))

    monkeypatch.setattr(folder, "_image_files", refused)
    assert main(["train", "--data", str(images), "--steps", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert f"diffaudit train: error: permission denied: {images}: this user may not open it" in err


def test_an_unreadable_weights_file_is_said_so_not_damaged(tmp_path, monkeypatch, capsys):
    """safetensors calls a file it may not read "No such file or directory", and the message went on: train
    it again with --fresh."""
    from diffaudit.core.io import write_json_atomic
    from diffaudit.core.outdir import SETTINGS_FILE, settings_record
    from diffaudit.models import denoiser

    model = make_tiny_model_dir(tmp_path / "run")
    write_json_atomic(model / SETTINGS_FILE, settings_record("train", {"data": {"spec": "digits", "options": {}}}))
    weights = next((model / "unet").glob("*.safetensors"))

    def no_such_file(*args, **kwargs):
        raise OSError(errno.ENOENT, "No such file or directory", str(weights))

    real_access = os.access
    monkeypatch.setattr(denoiser.UNet2DModel, "from_pretrained", no_such_file)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != weights and real_access(path, mode))
    argv = ["--quiet", "sample", "--model", str(model), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--model {model}: permission denied: {weights}: this user may not open it" in err
    assert "--fresh" not in err and "train it again" not in err
    monkeypatch.setattr(os, "access", real_access)  # readable, and still not loadable: damaged, as before
    assert main(argv) == 2
    assert "train it again" in capsys.readouterr().err


TRAIN = ["--quiet", "train", "--data", "digits", "--subset", "16", "--image-size", "8", "--steps", "12", "--batch-size", "8",
         "--warmup-steps", "0", "--checkpoint-every", "4", "--device", "cpu"]


def _moving_at(monkeypatch, module, point: str, nth: int, source: Path, target: Path) -> None:
    """Make ``module``'s ``fault_point`` move folder ``source`` to ``target`` the ``nth`` time ``point`` is met."""
    seen = {"n": 0}
    real = module.fault_point

    def hook(name: str) -> None:
        real(name)
        if name == point:
            seen["n"] += 1
            if seen["n"] == nth:
                source.rename(target)

    monkeypatch.setattr(module, "fault_point", hook)


def test_a_run_moved_while_it_trains_stops_and_resumes_where_it_now_is(tmp_path, monkeypatch, capsys):
    """`mv run run2` during training: the next checkpoint made `run` again and the run finished there with status
    0, without its settings (nothing could use it), while run2 held only the settings. It now stops at once,
    naming the folder, and run2 resumes to the weights of a run never moved."""
    from diffaudit.models import training

    assert main([*TRAIN, "--out", str(tmp_path / "straight")]) == 0
    _moving_at(monkeypatch, training, "train.step", 6, tmp_path / "run", tmp_path / "run2")
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'run'} was removed or moved while this command wrote into it" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    assert main([*TRAIN, "--out", str(tmp_path / "run2")]) == 0
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "run2" / unet).read_bytes() == (tmp_path / "straight" / unet).read_bytes()


def test_a_store_moved_while_it_is_written_stops_and_resumes_where_it_now_is(tmp_path, monkeypatch, capsys):
    """A store renamed mid-`sample` was refilled at its old path, then blamed on "another command", and the
    orphan could be neither resumed nor cleared: now nothing is written after the move, and the moved store
    finishes with the images of a store never moved."""
    from diffaudit.store import sample_store
    from helpers import assert_same_shards

    model = make_tiny_model_dir(tmp_path / "model")
    sample = ["--quiet", "sample", "--model", str(model), "--n", "8", "--shard-size", "2", "--steps", "2", "--device", "cpu"]
    assert main([*sample, "--out", str(tmp_path / "straight")]) == 0
    _moving_at(monkeypatch, sample_store, "store.between_files", 2, tmp_path / "st", tmp_path / "st2")
    assert main([*sample, "--out", str(tmp_path / "st")]) == 2
    assert f"{tmp_path / 'st'} was removed or moved while this command wrote into it" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()
    monkeypatch.undo()
    assert main([*sample, "--out", str(tmp_path / "st2")]) == 0
    assert_same_shards(sample_store.SampleStore.open(tmp_path / "st2"), sample_store.SampleStore.open(tmp_path / "straight"), 4)
