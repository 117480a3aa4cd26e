"""Hostile sizes in shards and images are refused before they are read, and the machine's own
failures (a full disk, memory running out) are never mistaken for a damaged shard.

Security review findings 3 (compressed shards inflating without bound), 4 (GNU sparse members) and
5 (PNGs just under Pillow's decompression-bomb limit). The limits are lowered through their module
constants, so every file here is a few KiB.
"""

import errno
import gzip
import io
import lzma
import os
import struct
import tarfile
import tempfile
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest

from diffaudit.core import decompression
from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data import images as images_module
from diffaudit.data import shards
from diffaudit.data.images import BadImageError, decode_image

RNG = np.random.default_rng(11)


def noisy_png(encode_image, side=16, value=None):
    image = RNG.integers(0, 256, (side, side, 3), dtype=np.uint8) if value is None else np.full((side, side, 3), value, np.uint8)
    return encode_image(image)


@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch):
    """Temporary files (decompressed shards) go to a folder of this test, to see what is left there."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# --- finding 3: compressed shards ----------------------------------------------------------------

class CountingOpen:
    """A compressor module's ``open`` that counts the bytes it decompresses."""

    def __init__(self, module):
        self.module, self.read = module, 0

    def open(self, *args, **kwargs):
        f = self.module.open(*args, **kwargs)
        for method in ("read", "read1"):  # the shard reader reads with read1
            setattr(f, method, self.counting(getattr(f, method)))
        return f

    def counting(self, real_read):
        def read(n=-1):
            block = real_read(n)
            self.read += len(block)
            return block

        return read


@pytest.mark.parametrize("codec", ["gz", "xz"])
def test_a_compressed_bomb_is_refused_as_soon_as_it_passes_the_limit(tmp_path, private_tmpdir, monkeypatch,
                                                                      write_tar, encode_image, codec):
    """A shard that inflates far past its size is refused with an error naming it, whatever
    ``skip_bad`` says; decompression stops at the limit, and its temporary file is removed."""
    monkeypatch.setattr(decompression, "MIN_DECOMPRESSED_LIMIT", 1 << 20)
    members = [("a.png", noisy_png(encode_image)), ("bomb.png", bytes(8 << 20))]  # 8 MiB of zeros: ~10 KiB packed
    plain = write_tar(tmp_path / "bomb.tar", members).read_bytes()
    module = {"gz": gzip, "xz": lzma}[codec]
    shard = tmp_path / f"bomb.tar.{codec}"
    shard.write_bytes(module.compress(plain))
    counting = CountingOpen(module)
    monkeypatch.setattr(shards, {"gz": "gzip", "xz": "lzma"}[codec], counting)
    for skip_bad in (False, True):
        with pytest.raises(DiffauditError, match=rf"shard .*bomb\.tar\.{codec} decompresses to more than 1 MiB.*"
                                                 r"decompression bomb.*pass the \.tar"):
            load_dataset(shard, skip_bad=skip_bad)
    assert 2 << 20 < counting.read <= 2 * ((1 << 20) + (1 << 16))  # two attempts, each stopped within a block of the limit
    assert list(private_tmpdir.iterdir()) == []


def test_the_limit_follows_the_compressed_size():
    assert decompression.decompressed_limit(1000) == decompression.MIN_DECOMPRESSED_LIMIT
    assert decompression.decompressed_limit(1 << 30) == decompression.MAX_DECOMPRESSION_RATIO << 30


def test_a_compressed_shards_images_are_spans_into_its_temporary_tar(tmp_path, private_tmpdir, write_tar, encode_image):
    """Listing a compressed shard holds where its images lie in the decompressed tar, not their bytes
    (a 2 MiB member costs no memory until decoded); the temporary tar lives while a span does."""
    big = b"\x89PNG" + RNG.integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()  # read only if decoded
    members = [("a.png", noisy_png(encode_image, value=7)), ("a.cls", b"1"),
               ("b.png", big), ("b.cls", b"2")]
    plain = write_tar(tmp_path / "s.tar", members)
    xz = tmp_path / "s.tar.xz"
    xz.write_bytes(lzma.compress(plain.read_bytes(), preset=0))
    tracemalloc.start()
    try:
        samples, damage = shards.read_shard(xz, skip_bad=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert damage is None and peak < (1 << 20), peak
    assert all(isinstance(parts["png"], shards.Span) for _, parts in samples)
    assert [parts["cls"] for _, parts in samples] == [b"1", b"2"]
    assert samples[1][1]["png"].read() == big
    (temp,) = private_tmpdir.iterdir()
    del samples
    assert not temp.exists()
    entries = shards.list_shards([xz], source=str(xz), skip_bad=False).entries
    np.testing.assert_array_equal(entries[0].pixels(), np.full((16, 16, 3), 7, np.uint8))
    del entries
    assert list(private_tmpdir.iterdir()) == []


@pytest.mark.parametrize("kind", ["ustar", "pax", "gz"])
def test_a_member_over_the_limit_is_a_bad_sample_and_never_read(tmp_path, monkeypatch, encode_image, kind):
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 10_000)
    reads = []
    real_read_at = shards.read_at
    monkeypatch.setattr(shards, "read_at", lambda fd, n, off: reads.append(n) or real_read_at(fd, n, off))
    shard = tmp_path / "big.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT if kind == "pax" else tarfile.USTAR_FORMAT) as tf:
        for name, data in [("a.png", noisy_png(encode_image)), ("big.png", bytes(20_000))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if kind == "pax":
                info.pax_headers = {"comment": "pax"}
            tf.addfile(info, io.BytesIO(data))
    if kind == "gz":
        shard = tmp_path / "big.tar.gz"
        shard.write_bytes(gzip.compress((tmp_path / "big.tar").read_bytes()))
    with pytest.raises(DiffauditError, match=r"big\.tar(\.gz)?:big\.png: the image member is 20 KiB, over "
                                             r"diffaudit's limit of 9.8 KiB per member \(MAX_MEMBER_BYTES"):
        load_dataset(shard)
    ds = load_dataset(shard, skip_bad=True)
    assert ds.keys == ["a"] and len(ds.skipped) == 1 and "MAX_MEMBER_BYTES" in ds.skipped[0][1]
    assert reads and max(reads) <= 10_000


def test_a_full_disk_while_decompressing_is_said_as_such_never_skipped(tmp_path, monkeypatch, write_tar, encode_image):
    """Writing the decompressed tar fails with ENOSPC (/dev/full): the error says so, also with
    ``skip_bad``, which used to skip the shard as 'truncated or unreadable'."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    shard = tmp_path / "s.tar.gz"
    shard.write_bytes(gzip.compress(write_tar(tmp_path / "s.tar", [("a.png", noisy_png(encode_image))]).read_bytes()))
    placeholder = tmp_path / "placeholder.tar"

    def full_disk(**_):
        placeholder.write_bytes(b"")
        return os.open("/dev/full", os.O_WRONLY), str(placeholder)

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    for skip_bad in (False, True):
        with pytest.raises(DiffauditError, match=r"could not decompress shard .*s\.tar\.gz into a temporary file .*"
                                                 r"No space left on device\. Free space there, or point TMPDIR") as info:
            shards.read_shard(shard, skip_bad=skip_bad)
        assert "truncated" not in str(info.value)
    assert not placeholder.exists()


def test_memory_running_out_is_not_a_damaged_shard(tmp_path, monkeypatch, write_tar, encode_image):
    shard = write_tar(tmp_path / "s.tar", [("a.png", noisy_png(encode_image))])

    def no_memory(*_args, **_kwargs):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(shards.mmap, "mmap", no_memory)
    with pytest.raises(DiffauditError, match=r"could not read shard .*s\.tar: Cannot allocate memory \(out of memory"):
        shards.read_shard(shard, skip_bad=True)
    monkeypatch.undo()

    def memory_error(*_args, **_kwargs):
        raise MemoryError()

    monkeypatch.setattr(shards, "_plain_members", memory_error)
    with pytest.raises(DiffauditError, match=r"ran out of memory reading shard .*s\.tar"):
        shards.read_shard(shard, skip_bad=True)


def test_a_member_is_read_whole_through_several_preads(tmp_path, monkeypatch, write_tar, encode_image):
    """One ``os.pread`` returns at most about 2 GiB; a member is read until it is whole (here one
    call returns at most 1000 bytes)."""
    image = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = encode_image(image)
    assert len(data) > 3000
    shard = write_tar(tmp_path / "s.tar", [("a.png", data), ("a.txt", "é caption".encode() * 300)])
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, offset: real_pread(fd, min(n, 1000), offset))
    ds = load_dataset(shard)
    np.testing.assert_array_equal(ds.images[0], image)
    assert ds.captions == [("é caption" * 300).strip()]


# --- finding 4: GNU sparse members ---------------------------------------------------------------

def gnu_sparse_member(name: str, real_size: int) -> bytes:
    """An old-GNU sparse member ('S') whose map declares ``real_size`` bytes, all a hole: a 512-byte
    header that :mod:`tarfile` would expand to ``real_size`` zero bytes."""
    header = bytearray(512)
    header[0:len(name)] = name.encode()
    for offset, value in ((100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"), (124, b"00000000000\0"),
                          (136, b"00000000000\0"), (148, b" " * 8), (156, b"S"), (257, b"ustar  \0"),
                          (386, b"%011o\0" % real_size), (398, b"00000000000\0"), (483, b"%011o\0" % real_size)):
        header[offset:offset + len(value)] = value
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def tar_bytes(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def with_sparse(tar: bytes, *names: str, real_size: int = 1 << 20) -> bytes:
    """``tar`` (ending with its end-of-archive blocks) with sparse members appended."""
    body = tar.rstrip(b"\0")
    body += bytes(-len(body) % 512)
    return body + b"".join(gnu_sparse_member(n, real_size) for n in names) + bytes(10240)


def test_a_sparse_member_is_a_bad_sample_never_expanded(tmp_path, monkeypatch, encode_image):
    shard = tmp_path / "sparse.tar"
    shard.write_bytes(with_sparse(tar_bytes([("a.png", noisy_png(encode_image))]), "b.png"))
    member = next(m for m in tarfile.open(shard) if m.name == "b.png")
    assert member.issparse() and member.size == 1 << 20  # tarfile would expand it to 1 MiB of zeros
    expanded = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: expanded.append(m.name) or real(self, m))
    with pytest.raises(DiffauditError, match=r"sparse\.tar:b\.png: the image member is a GNU sparse file"):
        load_dataset(shard)
    ds = load_dataset(shard, skip_bad=True)
    assert ds.keys == ["a"] and ds.skipped == [(f"{shard}:b.png", ds.skipped[0][1])]
    assert "GNU sparse" in ds.skipped[0][1] and expanded == []


def test_a_shard_of_only_sparse_members_is_an_error_never_stopiteration(tmp_path):
    shard = tmp_path / "allsparse.tar"
    shard.write_bytes(with_sparse(tar_bytes([]), "x.png", "y.png"))
    samples, damage = shards.read_shard(shard, skip_bad=True)
    assert damage is None and [k for k, _ in samples] == ["x", "y"]
    with pytest.raises(DiffauditError, match=r"allsparse\.tar:x\.png: the image member is a GNU sparse file"):
        load_dataset(shard)
    with pytest.raises(DiffauditError, match=r"allsparse\.tar: no readable images \(2 skipped"):
        load_dataset(shard, skip_bad=True)


def test_cli_on_a_sparse_shard_is_one_line_and_status_2(tmp_path, capsys):
    from diffaudit.cli.main import main

    shard = tmp_path / "allsparse.tar"
    shard.write_bytes(with_sparse(tar_bytes([]), "x.png"))  # the old code ended in a StopIteration traceback
    code = main(["dedup", "--data", str(shard), "--embedder", "pixel", "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--skip-bad"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "GNU sparse file" in err[0] and "allsparse.tar" in err[0], err


# --- finding 5: images with huge declared sizes --------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A grayscale PNG declaring ``width`` x ``height`` with one tiny IDAT: a decoder would allocate
    the whole image before finding the data missing."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [9000, 13000])  # above diffaudit's limit; 13000 also above Pillow's warning
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(monkeypatch, side):
    from PIL import ImageFile

    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or real_load(self))
    with warnings.catch_warnings(record=True) as caught:
        with pytest.raises(BadImageError, match=rf"bomb\.png: {side}x{side} is {side * side:,} pixels, over diffaudit's "
                                                r"limit of 67,108,864 per image \(diffaudit\.data\.images\.MAX_IMAGE_PIXELS\)"
                                                r".*downscale it"):
            decode_image(png_header_only(side, side), "bomb.png")
    assert loads == []  # never decoded
    assert not [w for w in caught if "DecompressionBomb" in w.category.__name__]


def test_the_pixel_limit_is_a_counted_skip_with_skip_bad(monkeypatch, write_images):
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 20 * 20)
    monkeypatch.setattr(images_module, "MAX_PIXELS_PER_BYTE", 1)  # a flat 21 x 20 PNG holds several a byte
    folder = write_images({"big.png": np.zeros((21, 20, 3), np.uint8), "small.png": np.zeros((20, 20, 3), np.uint8)})
    with pytest.raises(DiffauditError, match=r"big\.png: 20x21 is 420 pixels, over diffaudit's limit of 400"):
        load_dataset(folder)
    ds = load_dataset(folder, skip_bad=True)
    assert ds.keys == ["small.png"] and len(ds.skipped) == 1 and "MAX_IMAGE_PIXELS" in ds.skipped[0][1]


def test_a_large_photograph_still_decodes_where_a_bomb_of_its_size_is_refused(monkeypatch):
    """The cap is for files compressed far past what a photograph is: an image over MAX_IMAGE_PIXELS
    (lowered here to keep the test small) holding a few pixels a byte, as a photo does, decodes."""
    rng = np.random.default_rng(0)
    photo = (np.cumsum(rng.integers(-3, 4, (96, 96, 3)), axis=1) % 256).astype(np.uint8)  # textured, like a photo
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(photo).save(buf, format="JPEG", quality=90)
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 64 * 64)
    assert 96 * 96 / len(buf.getvalue()) < images_module.MAX_PIXELS_PER_BYTE
    assert decode_image(buf.getvalue(), "photo.jpg").shape == (96, 96, 3)
    with pytest.raises(BadImageError, match=r"pixels a byte, where a photograph holds a few"):
        decode_image(png_header_only(96, 96), "bomb.png")


def test_a_folder_of_flat_images_within_the_per_image_limit_is_still_refused_as_a_bomb(tmp_path, monkeypatch):
    """Each image passed the per-image limit, yet six flat 8192 x 8192 PNGs (1.2 MB in all) held 1.2 GB of pixels
    and took 10.9 GB to deduplicate: a load whose kept pixels outgrow their files by the rule of compressed
    shards is refused. --image-size keeps the pixels small and loads them; real images stay far below it."""
    from PIL import Image

    from diffaudit.data import load_dataset

    monkeypatch.setattr(decompression, "MIN_DECOMPRESSED_LIMIT", 1 << 20)  # small images stand in for gigabytes
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):  # 768 KiB of pixels each, from about 2 KiB of PNG
        Image.new("RGB", (512, 512), (i, 0, 0)).save(flat / f"{i}.png")
    with pytest.raises(DiffauditError, match=r"flat: its images decode to .* times their size: refused as a "
                                             r"decompression bomb.*--image-size"):
        load_dataset(str(flat))
    with pytest.raises(DiffauditError, match="decompression bomb"):
        load_dataset(str(flat), skip_bad=True)  # no image is bad on its own: never skipped into a smaller load
    assert load_dataset(str(flat), image_size=8).images.shape == (4, 8, 8, 3)
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(noisy / f"{i}.png")
    assert len(load_dataset(str(noisy))) == 4
