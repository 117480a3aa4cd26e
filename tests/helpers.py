"""Helpers shared by test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


STAND_IN_ENV = "DIFFAUDIT_TEST_CIFAR_STAND_IN"


def _cifar_shard0(split: str) -> tuple[Path, bool]:
    """(shard file, stand-in?) of CIFAR-10 ``split`` shard 0; the test is skipped when none is found.

    Only shard 0 is read, so a folder holding only ``cifar10-train-000000.tar`` (the one shard carried to
    a GPU machine, pointed at with ``$DIFFAUDIT_CIFAR10``) is enough for the train split. Without a test
    shard, and only when ``$DIFFAUDIT_TEST_CIFAR_STAND_IN=1`` (set by experiments/_env.sh's
    ``run_gpu_tests``, whose CUDA tests compare the CPU and CUDA results on whatever images they get),
    the last images of the train shard stand in for test images (stand-in = True); otherwise the test
    is skipped, since known-answer tests depend on the real test images.
    """
    import os

    from diffaudit.core.errors import DiffauditError
    from diffaudit.data.builtin import CIFAR10_ENV, _search_roots, find_cifar10_root

    want, train0 = f"cifar10-{split}-000000.tar", "cifar10-train-000000.tar"
    env = os.environ.get(CIFAR10_ENV)
    if env:
        roots = [Path(env).expanduser()]
    else:
        try:  # all shards present (a development machine): as before
            roots = [Path(find_cifar10_root(None, name="cifar10-test" if split == "test" else "cifar10"))]
        except DiffauditError:
            roots = _search_roots()
    for root in roots:
        if (root / want).is_file():
            return root / want, False
    if split == "test" and os.environ.get(STAND_IN_ENV) == "1":
        for root in roots:
            if (root / train0).is_file():
                return root / train0, True
    pytest.skip(f"CIFAR-10 {want} absent (looked in {', '.join(str(r) for r in roots[:3])}); set {CIFAR10_ENV}=DIR, "
                f"DIR holding {want}" + (f" (or {train0} and {STAND_IN_ENV}=1 for stand-in test images)" if split == "test" else ""))


def cifar_images(n: int, split: str = "train") -> np.ndarray:
    """The first ``n`` decoded images (uint8 (n, 32, 32, 3)) of the real CIFAR-10 ``split`` shard 0.

    Where only the train shard 0 is at hand (a GPU machine) and ``$DIFFAUDIT_TEST_CIFAR_STAND_IN=1``,
    ``split="test"`` gives the *last* ``n`` images of that shard instead: unseen by callers that take
    the first few hundred train images.
    """
    shard, stand_in = _cifar_shard0(split)
    out = []
    with tarfile.open(shard) as tf:
        if stand_in:
            members = [m for m in tf if m.name.endswith(".jpg")][-n:]
        else:
            members = []
            for m in tf:
                if m.name.endswith(".jpg"):
                    members.append(m)
                    if len(members) == n:
                        break
        for m in members:
            out.append(np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")))
    return np.stack(out)


def make_tiny_model_dir(root: Path, *, image_size: int = 8, channels: int = 1) -> Path:
    """An untrained tiny UNet saved like a run directory (``unet/`` + ``scheduler/``)."""
    from diffaudit.models.scheduler import make_scheduler
    from diffaudit.models.unets import build_unet, unet_config

    with torch.random.fork_rng():
        torch.manual_seed(0)
        build_unet(unet_config("tiny", image_size=image_size, in_channels=channels)).save_pretrained(root / "unet")
    make_scheduler().save_pretrained(root / "scheduler")
    return root


def digits_membership(path: Path, n_examples: int, n_models: int, seed: int) -> np.ndarray:
    """A membership matrix (:func:`~diffaudit.data.make_membership`) of ``n_models`` over the first
    ``n_examples`` of the built-in digits (``--data digits --subset N``), saved at ``path``; returns it."""
    from diffaudit.data import load_dataset, make_membership, save_membership

    matrix = make_membership(n_examples, n_models, seed=seed)
    save_membership(path, matrix, load_dataset("digits", subset=n_examples).keys, seed)
    return matrix


def assert_same_shards(a, b, n_shards: int) -> None:
    """Sample stores ``a`` and ``b`` (opened) both finished with ``n_shards`` shards holding the same
    pixels, ids and seeds, shard by shard."""
    assert a.completed() == b.completed() == list(range(n_shards))
    for k in range(n_shards):
        ia, ma = a.read_shard(k)
        ib, mb = b.read_shard(k)
        assert np.array_equal(ia, ib) and ma["ids"] == mb["ids"] and ma["seeds"] == mb["seeds"], k


def finished_store(path: Path, images: np.ndarray, *, seed: int, prompts: list[str] | None = None,
                   shard_size: int = 16):
    """A finished sample store at ``path`` holding ``images``, as the model named by the folder's name sampled
    them with ``seed`` (its identity differs from another folder's store of the same seed); unconditional
    unless ``prompts`` (each the prompt of an equal block of images)."""
    from diffaudit.store import SampleStore

    names = prompts or [None]
    settings = {"seed": seed, "kind": "pixel", "model_digest": path.name}
    store = SampleStore.create(path, settings=settings, prompts=names, per_prompt=len(images) // len(names),
                               image_shape=images.shape[1:], shard_size=shard_size)
    for k in range(store.n_shards):
        store.write_shard(k, images[store.plan(k).start:store.plan(k).stop])
    return store


def noisy_copies(img: np.ndarray, n: int, seed: int, sigma: float = 0.02) -> np.ndarray:
    """``n`` copies of uint8 ``img`` with seeded Gaussian pixel noise (std ``sigma`` in [0, 1] units)."""
    rng = np.random.default_rng(seed)
    x = img[None].astype(np.float64) / 255 + rng.normal(0, sigma, (n, *img.shape))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def strict_json(path: Path) -> dict:
    """Parse a JSON file, failing on NaN or infinities (results never carry them)."""
    import json

    def no_constants(name):
        raise AssertionError(f"{path} contains {name}")

    return json.loads(path.read_text(), parse_constant=no_constants)


def extract_then_verify_medoids(folder: Path, samples: Path, train: Path) -> None:
    """In ``folder``: `diffaudit extract` of ``samples`` (``extract/``), then `diffaudit verify
    --from-extract` of its flagged medoids against ``train`` (``verify/``), in-process on the CPU."""
    from diffaudit.cli.main import main

    assert main(["--quiet", "extract", "--samples", str(samples), "--out", str(folder / "extract"), "--device", "cpu",
                 "--k-neighbors", "16"]) == 0
    assert main(["--quiet", "verify", "--samples", str(samples), "--data", str(train), "--from-extract",
                 str(folder / "extract" / "result.json"), "--out", str(folder / "verify"), "--device", "cpu"]) == 0
