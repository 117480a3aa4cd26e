"""The built-in CIFAR-10 shards (real data in ../shared/data/cifar10): subset loading, keys, labels, root lookup."""

import io
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.builtin import CIFAR10_CLASSES, CIFAR10_ENV


def test_cifar10_test_subset_real_pixels(cifar10_root):
    ds = load_dataset("cifar10-test", subset=200, subset_seed=0, cifar_root=cifar10_root)
    assert ds.images.shape == (200, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.source == "cifar10-test" and ds.class_names == CIFAR10_CLASSES
    assert ds.labels.min() >= 0 and ds.labels.max() <= 9
    for key, label in zip(ds.keys, ds.labels):
        m = re.fullmatch(r"([a-z]+)_(\d{4})", key)
        assert m and m.group(1) == CIFAR10_CLASSES[label]  # the key's class name agrees with the .cls label
    assert 40 < ds.images.mean() < 200 and ds.images.std() > 30  # natural images, not blanks
    # the decoded pixels are exactly Pillow's decoding of the shard member
    first = ds.keys[0]
    with tarfile.open(cifar10_root / "cifar10-test-000000.tar", "r|") as tf:  # stream: stop at the member
        raw = next(tf.extractfile(m).read() for m in tf if m.name == f"{first}.jpg")
    np.testing.assert_array_equal(ds.images[0], np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))
    again = load_dataset("cifar10-test", subset=200, subset_seed=0, cifar_root=cifar10_root)
    assert again.keys == ds.keys


def test_cifar10_train_subset_spans_shards(cifar10_root):
    ds = load_dataset("cifar10", subset=100, subset_seed=3, cifar_root=cifar10_root, mode="L", image_size=16)
    assert ds.images.shape == (100, 16, 16, 1)
    assert len(set(ds.keys)) == 100 and len(set(ds.labels.tolist())) == 10


def test_root_from_environment_and_bad_roots(cifar10_root, tmp_path, monkeypatch):
    monkeypatch.setenv(CIFAR10_ENV, str(cifar10_root))
    assert len(load_dataset("cifar10-test", subset=5)) == 5
    monkeypatch.setenv(CIFAR10_ENV, str(tmp_path))
    with pytest.raises(DiffauditError, match=rf"\${CIFAR10_ENV} is .* lacks cifar10-test-000000\.tar.*--cifar-root"):
        load_dataset("cifar10-test", subset=5)
    # the explicit option wins over the environment
    assert len(load_dataset("cifar10-test", subset=5, cifar_root=cifar10_root)) == 5
    with pytest.raises(DiffauditError, match=r"--cifar-root is .*nowhere.* lacks cifar10-train-000000\.tar"):
        load_dataset("cifar10", cifar_root=tmp_path / "nowhere")


def test_not_found_message_says_how_to_set_it(tmp_path, monkeypatch):
    import diffaudit.data.builtin as builtin

    monkeypatch.delenv(CIFAR10_ENV, raising=False)
    monkeypatch.setattr(builtin, "_search_roots", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(DiffauditError, match=rf"shards were not found .*{CIFAR10_ENV}=DIR"):
        load_dataset("cifar10")


def test_checksum_mismatch_names_shard(tmp_path, write_tar, encode_image):
    shard = write_tar(tmp_path / "cifar10-test-000000.tar",
                      [("cat_0001.jpg", encode_image(np.zeros((32, 32, 3), np.uint8), "JPEG")), ("cat_0001.cls", b"3")])
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  cifar10-test-000000.tar\n")
    with pytest.raises(DiffauditError, match=r"cifar10-test-000000\.tar: SHA-256 .* differs"):
        load_dataset("cifar10-test", cifar_root=tmp_path)
    import hashlib

    (tmp_path / "SHA256SUMS").write_text(hashlib.sha256(shard.read_bytes()).hexdigest() + "  cifar10-test-000000.tar\n")
    ds = load_dataset("cifar10-test", cifar_root=tmp_path)
    assert ds.keys == ["cat_0001"] and ds.labels.tolist() == [3]


def test_an_installed_package_does_not_look_for_cifar10_inside_its_environment(tmp_path, monkeypatch):
    """Installed from a wheel, the "repository root" three folders above the package is inside the virtual
    environment: the error listed <venv>/lib/shared/data/cifar10. Only a checkout (its pyproject.toml) is
    searched; the working directory and its parents always are."""
    from diffaudit.data import builtin

    site = tmp_path / "venv" / "lib"
    site.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtin, "_REPO_ROOT", site)
    roots = builtin._search_roots()
    assert (tmp_path / "venv" / "shared" / "data" / "cifar10") not in roots
    assert roots[0] == (tmp_path / ".." / "shared" / "data" / "cifar10").resolve()
    (site / "pyproject.toml").write_text("")
    assert builtin._search_roots()[0] == (site / ".." / "shared" / "data" / "cifar10").resolve()
