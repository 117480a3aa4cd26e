"""An image folder's files are its own: a symbolic link out of the folder (an image, or a caption linking to
/etc/passwd, which the report would then show) and anything but a regular file (a FIFO, which blocked the
read forever; /dev/zero, read without end) are bad inputs, named, and skipped with --skip-bad. Links within
the folder are followed as before."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.folder import MAX_CAPTION_BYTES


def _images(folder, n=3):
    folder.mkdir()
    for i in range(n):
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype("uint8")).save(folder / f"n{i}.png")
    return folder


def test_a_caption_linked_out_of_the_folder_is_never_read(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("root:x:0:0:root:/root:/bin/bash")
    folder = _images(tmp_path / "f")
    for i in (1, 2):
        (folder / f"n{i}.txt").write_text(f"caption {i}")
    os.symlink(outside, folder / "n0.txt")
    with pytest.raises(DiffauditError, match="n0.txt: a symbolic link to .*secret.txt, outside the folder"):
        load_dataset(str(folder))
    ds = load_dataset(str(folder), skip_bad=True)
    assert len(ds) == 2 and "root:x" not in " ".join(str(c) for c in ds.captions)


def test_an_image_linked_out_of_the_folder_or_a_fifo_is_a_bad_input_and_a_link_within_is_followed(tmp_path):
    folder = _images(tmp_path / "f")
    elsewhere = _images(tmp_path / "elsewhere", 1)
    os.symlink(elsewhere / "n0.png", folder / "out.png")
    os.symlink("n1.png", folder / "within.png")
    os.mkfifo(folder / "fifo.png")
    with pytest.raises(DiffauditError, match="fifo.png: not a regular file"):
        load_dataset(str(folder))
    ds = load_dataset(str(folder), skip_bad=True)  # returns at once: the FIFO is never opened
    assert sorted(ds.keys) == ["n0.png", "n1.png", "n2.png", "within.png"]
    assert np.array_equal(ds.images[ds.keys.index("within.png")], ds.images[ds.keys.index("n1.png")])


def test_a_device_linked_in_is_refused_and_a_long_caption_is_not_read_whole(tmp_path, capsys):
    folder = _images(tmp_path / "f")
    for i in range(3):
        (folder / f"n{i}.txt").write_text("a caption")
    (folder / "n2.txt").write_bytes(b"x" * (MAX_CAPTION_BYTES + 1))
    os.symlink("/dev/zero", folder / "zero.png")
    assert main(["dedup", "--data", str(folder), "--embedder", "pixel", "--out", str(tmp_path / "d")]) == 2
    assert "zero.png: a symbolic link to /dev/zero, outside the folder" in capsys.readouterr().err
    ds = load_dataset(str(folder), skip_bad=True)
    assert sorted(ds.keys) == ["n0.png", "n1.png"]  # n2's caption is longer than any caption: a bad input
    assert any("n2.png" in str(skip) and "not a caption" in str(skip) for skip in ds.skipped)
