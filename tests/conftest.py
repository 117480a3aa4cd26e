"""Shared test fixtures (others may append; keep each small).

- ``digits``: the built-in 8x8 digits dataset (session-wide; do not modify it).
- ``cifar10_root``: the folder of the real CIFAR-10 shards, or the test is skipped (only when absent).
- ``tmp_npz(images, labels=None, captions=None, name="data.npz") -> Path``: an ``.npz`` dataset file.
- ``write_images({relative path: uint8 array or PIL image}, root=None) -> Path``: an image folder.
- ``write_tar(path, [(member name, bytes)]) -> Path``: a tar shard with exactly those members.
- ``encode_image(array or PIL image, fmt="PNG") -> bytes``: an encoded image file.
- ``s3_endpoint``: moto's S3 server on localhost with a bucket ``diffaudit-tests``, reached through the
  ``AWS_*`` variables it sets (and returns, for processes started elsewhere, such as Ray workers).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pytest_configure(config):
    """One torch thread per test process (and its subprocesses): the models in tests are tiny, and
    several threads on a loaded 2-core machine make each call many times slower. Without CUDA,
    Triton kernels run through Triton's interpreter."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        # Triton kernels (the kNN's fused one) run through Triton's interpreter on CPU tensors; it
        # must be chosen before triton is first imported
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def digits():
    from diffaudit.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    from diffaudit.core.errors import DiffauditError
    from diffaudit.data.builtin import find_cifar10_root

    try:
        return find_cifar10_root(None, name="cifar10-test")
    except DiffauditError as exc:
        pytest.skip(f"CIFAR-10 shards absent: {exc}")


@pytest.fixture
def tmp_npz(tmp_path):
    def make(images, labels=None, captions=None, name="data.npz", **extra) -> Path:
        arrays = {"images": np.asarray(images), **extra}
        if labels is not None:
            arrays["labels"] = np.asarray(labels)
        if captions is not None:
            arrays["captions"] = np.asarray(captions)
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return make


def encode_image(image, fmt: str = "PNG") -> bytes:
    """A uint8 array (H, W) / (H, W, C) or a PIL image -> encoded bytes in ``fmt``."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(name="encode_image")
def encode_image_fixture():
    return encode_image


@pytest.fixture
def write_images(tmp_path):
    def make(files: dict, root: Path | None = None) -> Path:
        root = Path(root or tmp_path / "images")
        root.mkdir(parents=True, exist_ok=True)
        for rel, image in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            ext = path.suffix.lower().lstrip(".")
            fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(ext, ext.upper())
            path.write_bytes(image if isinstance(image, bytes) else encode_image(image, fmt))
        return root

    return make


def _write_tar(path, members) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def write_tar():
    return _write_tar


@pytest.fixture(scope="session")
def s3_endpoint():
    import logging

    import fsspec
    import moto.server as moto_server  # the test extra installs moto[server] and s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("diffaudit-tests")
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
