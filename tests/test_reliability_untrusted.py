"""Untrusted files (issue 9, item 4): nothing diffaudit reads can make it run code.

Every payload here is a pickle whose ``__reduce__`` would create a marker file when unpickled; each
test checks the file is refused (or ignored and recomputed) with a clear message and that the marker
never appears. Weights load only from safetensors or ``torch.load(weights_only=True)``; arrays only
with ``allow_pickle=False``; ``audit --config`` is TOML data checked like command-line flags.
The report's escaping of hostile captions is tested in test_report (test_hostile_text_is_escaped,
test_any_caption_round_trips_as_text); object arrays in dataset and membership files in
test_data_npz and test_membership.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.models.denoiser import load_denoiser
from diffaudit.models.scheduler import make_scheduler
from diffaudit.models.unets import build_unet, unet_config


class Payload:
    """Unpickling this runs ``touch marker`` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a file from outside ran code"


def evil_object_array(marker: Path, n: int = 2) -> np.ndarray:
    arr = np.empty(n, dtype=object)
    for i in range(n):
        arr[i] = Payload(marker)
    return arr


def tiny_unet():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_unet(unet_config("tiny", image_size=8, in_channels=1))


def test_the_payload_really_runs_code_when_unpickled(tmp_path):
    """Guard for the tests below: unpickling the payload without protection does create the marker."""
    import pickle

    m = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(m)))
    assert m.exists()


# --------------------------------------------------------------------------- weights

def test_resume_refuses_a_malicious_optimizer_checkpoint(tmp_path, marker, capsys, monkeypatch):
    import diffaudit.models.training as training

    class Stop(Exception):
        pass

    def stop_after_checkpoint(name):
        if name == "train.checkpoint":
            raise Stop

    run = tmp_path / "run"
    argv = ["--quiet", "train", "--data", "digits", "--subset", "16", "--steps", "20", "--checkpoint-every", "10",
            "--batch-size", "8", "--warmup-steps", "2", "--device", "cpu", "--out", str(run)]
    monkeypatch.setattr(training, "fault_point", stop_after_checkpoint)
    with pytest.raises(Stop):  # stopped after its first checkpoint: unfinished, the next run resumes from it
        main(argv)
    monkeypatch.undo()
    ck = run / "checkpoints" / "step-00000010"
    torch.save(Payload(marker), ck / "optimizer.pt")  # a planted checkpoint (zip format, as torch.save writes)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{ck / 'optimizer.pt'}: refused to load" in err
    assert "weights_only=True" in err and "posix.system" in err and "Traceback" not in err
    assert "weights_only` set to `False`" not in err  # torch's advice to disable the protection is not passed on
    # a raw pickle (not torch.save's zip): its reason is torch's "Unsupported operand", with none of torch's advice
    # (that line came first and, cut at 200 characters, ended on it) and no warning about its pickle protocol
    import pickle

    (ck / "optimizer.pt").write_bytes(pickle.dumps(Payload(marker), protocol=4))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "Unsupported operand" in err and err.count("\n") == 1
    assert "weights_only` set to `False`" not in err and "file an issue" not in err and "UserWarning" not in err
    assert not marker.exists()


@pytest.mark.parametrize("with_safetensors", [False, True])
def test_pickled_bin_weights_are_never_loaded(tmp_path, marker, capsys, with_safetensors):
    """A model folder holding only a pickled ``diffusion_pytorch_model.bin`` is refused; next to
    safetensors weights, the .bin is ignored."""
    model = tmp_path / "model"
    unet_dir = model / "unet"
    tiny_unet().save_pretrained(unet_dir, safe_serialization=with_safetensors)
    make_scheduler().save_pretrained(model / "scheduler")
    torch.save(Payload(marker), unet_dir / "diffusion_pytorch_model.bin")
    if with_safetensors:
        den = load_denoiser(model)
        assert den.in_channels == 1
        return
    assert not list(unet_dir.glob("*.safetensors"))
    with pytest.raises(DiffauditError, match=r"weights must be in safetensors format \(pickled weights such as "
                                             r"diffusion_pytorch_model\.bin are refused: unpickling runs code\)\. "
                                             r"Where you trust the file, convert it once"):  # and how to
        load_denoiser(model)
    assert main(["--quiet", "sample", "--model", str(model), "--out", str(tmp_path / "s"), "--n", "2", "--steps", "2",
                 "--device", "cpu"]) == 2
    assert "safetensors" in capsys.readouterr().err
    with pytest.raises(DiffauditError, match="safetensors"):  # a bare UNet folder too
        load_denoiser(unet_dir)
    (unet_dir / "diffusion_pytorch_model.bin").unlink()  # no weights at all: said so, not taken for pickles
    with pytest.raises(DiffauditError, match=r"--shadows .*holds no weights \(no \.safetensors file\); the run is incomplete"):
        load_denoiser(model, flag="--shadows")



@pytest.mark.parametrize("damage", ["config", "weights"])
def test_damaged_model_folder_is_a_user_error(tmp_path, capsys, damage):
    """A config.json that is not JSON, or a truncated safetensors file: one line naming the folder."""
    model = tmp_path / "model"
    tiny_unet().save_pretrained(model / "unet")
    make_scheduler().save_pretrained(model / "scheduler")
    if damage == "config":
        (model / "unet" / "config.json").write_text("{ not json")
    else:
        weights = next((model / "unet").glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DiffauditError, match="--model"):
        load_denoiser(model)
    assert main(["--quiet", "sample", "--model", str(model), "--out", str(tmp_path / "s"), "--n", "2", "--steps", "2",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(model) in err and "Traceback" not in err


# --------------------------------------------------------------------------- arrays

def test_samples_npz_with_object_prompts_is_refused(tmp_path, marker, capsys):
    samples = tmp_path / "samples.npz"
    images = np.zeros((2, 8, 8), np.uint8)
    np.savez(samples, images=images, prompts=evil_object_array(marker))
    capsys.readouterr()
    assert main(["--quiet", "extract", "--samples", str(samples), "--out", str(tmp_path / "ex"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{samples}" in err and "prompts" in err and "object array" in err and "Traceback" not in err


def test_dataset_and_membership_files_with_object_arrays_are_refused(tmp_path, marker):
    from diffaudit.data import load_dataset, load_membership, make_membership

    data = tmp_path / "data.npz"
    np.savez(data, images=evil_object_array(marker))
    with pytest.raises(DiffauditError, match="object array"):
        load_dataset(str(data))
    mem = tmp_path / "m.npz"
    np.savez(mem, membership=make_membership(2, 2, 0), keys=evil_object_array(marker), seed=np.int64(0))
    with pytest.raises(DiffauditError, match="without unpickling"):
        load_membership(mem)


def test_planted_knn_cache_chunk_is_ignored_and_recomputed(tmp_path, marker):
    """A cache file in an output folder is not trusted either: a chunk that needs unpickling is
    recomputed (and replaced), never unpickled."""
    samples = tmp_path / "samples.npz"
    rng = np.random.default_rng(0)
    np.savez(samples, images=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8))
    argv = ["--quiet", "extract", "--samples", str(samples), "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    chunk = next((tmp_path / "ref" / "knn").iterdir())
    out = tmp_path / "planted"
    (out / "knn").mkdir(parents=True)
    np.savez(out / "knn" / chunk.name, indices=evil_object_array(marker), sq=evil_object_array(marker),
             distances=evil_object_array(marker), dim=np.int64(64))
    assert main([*argv, "--out", str(out)]) == 0
    with np.load(chunk) as a, np.load(out / "knn" / chunk.name, allow_pickle=False) as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_planted_loss_cache_file_is_refused(tmp_path, marker, capsys):
    from diffaudit.data import load_dataset, make_membership, save_membership

    n = 8
    ds = load_dataset("digits", subset=n)
    shadows = tmp_path / "shadows"
    for k in range(2):
        tiny_unet().save_pretrained(shadows / f"model-{k:02d}" / "unet")
        make_scheduler().save_pretrained(shadows / f"model-{k:02d}" / "scheduler")
        (shadows / f"model-{k:02d}" / "result.json").write_text("{}")
    save_membership(shadows / "membership.npz", make_membership(n, 2, seed=0), ds.keys, 0)
    out = tmp_path / "mia"
    argv = ["--quiet", "mia", "--data", "digits", "--subset", str(n), "--shadows", str(shadows), "--attack", "loss",
            "--target-index", "0", "--bootstrap", "0", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    cached = next(out.glob("losses/*/*.npy"))
    np.save(cached, evil_object_array(marker, n), allow_pickle=True)
    (out / "result.json").unlink()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(cached) in err and "object array, which diffaudit never loads" in err and "Traceback" not in err


# --------------------------------------------------------------------------- configuration

AUDIT = ["--quiet", "audit", "--subset", "16", "--train-size", "4", "--n-samples", "4", "--sample-steps", "2",
         "--sweep", "", "--device", "cpu"]


@pytest.mark.parametrize("line,message", [
    ("evil = 1", "unknown option(s) evil"),
    ("fresh = true", "fresh may only be given on the command line"),
    ("quiet = true", "quiet may only be given on the command line"),  # was "unknown option(s) quiet"
    ("n-sample = 64", "unknown option(s) n-sample (did you mean n-samples?)"),
    ("__class__ = 'x'", "unknown option(s) __class__"),
    ("preset = \"__import__('os').system('touch {marker}')\"", "expected one of tiny, small"),
    ("seed = \"__import__('os').system('touch {marker}')\"", "expected an integer"),
    ("data = \"__import__('os').system('touch {marker}')\"", "not found"),
    ("mia = \"exec\"", "expected one of loss, lira"),
    ("shadows = 1.5", "expected an integer"),
    ("flip = \"yes\"", "expected true or false"),
    ("steps = [40]", "expected a value of type int"),
    ("help = true", "unknown option(s) help"),
    ("[section]\nsteps = 3", "unknown option(s) section"),
    ("steps = ", "not valid TOML"),
    ("n-samples = 8\nn_samples = 16", "n-samples and n_samples are the same option given twice; keep one"),
])
def test_audit_config_is_data_checked_like_flags(tmp_path, marker, capsys, line, message):
    cfg = tmp_path / "audit.toml"
    cfg.write_text(line.format(marker=marker) + "\n")
    out = tmp_path / "out"
    capsys.readouterr()
    steps = [] if "steps" in line else ["--steps", "2"]  # (the command line wins over the file)
    assert main([*AUDIT, *steps, "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert str(cfg) in err or message == "not found"
    assert not (out / "models").exists()  # refused before any work


def test_damaged_npy_and_membership_files_say_what_is_wrong(tmp_path):
    from diffaudit.core.io import load_npy
    from diffaudit.data import load_membership, make_membership

    empty, cut = tmp_path / "empty.npy", tmp_path / "cut.npy"
    empty.write_bytes(b"")
    np.save(cut, np.zeros(1000))
    cut.write_bytes(cut.read_bytes()[:500])
    for path in (empty, cut):
        for mmap in (False, True):
            with pytest.raises(DiffauditError, match="damaged or truncated"):
                load_npy(path, mmap=mmap)
    mem = tmp_path / "m.npz"
    np.savez(mem, membership=make_membership(4, 2, 0), keys=np.array(list("abcd")), seed=np.int64(0),
             format_version=np.array([None], dtype=object))
    with pytest.raises(DiffauditError, match="`format_version` cannot be read without unpickling"):
        load_membership(mem)


def test_files_that_are_not_npz_or_npy_say_so(tmp_path, marker, capsys):
    """numpy reads any file without a zip or .npy header as a pickle and says "allow_pickle": diffaudit says what
    the file is instead, and never unpickles it."""
    import pickle

    from diffaudit.core.io import load_npy

    text, empty, pickled = tmp_path / "text.npz", tmp_path / "empty.npz", tmp_path / "evil.npz"
    text.write_text("images,labels\n")
    empty.write_bytes(b"")
    pickled.write_bytes(pickle.dumps(Payload(marker)))
    for path, what in ((text, "it starts with b'images,l'"), (empty, "the file is empty"),
                       (pickled, "it looks like a Python pickle, which diffaudit never loads")):
        assert main(["extract", "--samples", str(path), "--out", str(tmp_path / "e")]) == 2
        err = capsys.readouterr().err
        assert f"{path}: not a readable .npz file: not an .npz (zip) archive ({what}" in err and "allow_pickle" not in err
    assert main(["verify", "--samples", str(text), "--data", "digits", "--fid-features", str(pickled),
                 "--out", str(tmp_path / "v")]) == 2
    assert "not an .npz (zip) archive" in capsys.readouterr().err
    with pytest.raises(DiffauditError, match=r"text\.npz: not a \.npy array file \(it starts with"):
        load_npy(text)
