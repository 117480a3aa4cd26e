"""An ``.npz`` array whose header declares a size its file does not hold is a corrupt file, an error
naming the file and the array, before numpy allocates anything; an allocation that still fails is an
error too, never a ``MemoryError`` traceback (security review finding 6).

Every reader of untrusted ``.npz`` files is checked: datasets (``--data``), samples' prompts
(``--samples``), membership files and ``--fid-features``.
"""

import io
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from diffaudit.core.errors import DiffauditError
from diffaudit.core.npz_arrays import declared_array


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def lying_npy(shape, dtype, data: bytes = b"x" * 100, version=(1, 0)) -> bytes:
    """An .npy member whose header declares ``shape`` of ``dtype`` over ``data``."""
    buf = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    (npy_format.write_array_header_1_0 if version == (1, 0) else npy_format.write_array_header_2_0)(buf, header)
    return buf.getvalue() + data


def write_npz(path, **members: bytes):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return path


def read_dataset(path):
    from diffaudit.data import load_dataset

    return load_dataset(path)


def read_prompts(path):
    from diffaudit.store.read import read_samples

    return read_samples(str(path))


def read_membership(path):
    from diffaudit.data.membership import load_membership

    return load_membership(path)


def read_fid(path):
    from diffaudit.distances.frechet import fid_from_file

    return fid_from_file(path)


IMAGES = np.zeros((4, 8, 8, 1), np.uint8)
KEYS = np.array([f"npz:{i}" for i in range(4)])
# (reader, the array it reads that lies, the file's other arrays)
READERS = {
    "dataset": (read_dataset, "images", {}),
    "prompts": (read_prompts, "prompts", {"images": npy(IMAGES)}),
    "membership": (read_membership, "membership", {"keys": npy(KEYS), "seed": npy(np.array(0))}),
    "fid": (read_fid, "samples", {"reference": npy(np.zeros((4, 2)))}),
}
HUGE = {"dataset": ((10**7, 1024, 1024, 3), "|u1"), "prompts": ((10**13,), "<U10"),
        "membership": ((10**12, 4), "|b1"), "fid": ((10**12, 2048), "<f8")}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_huge_declared_shape_is_a_corrupt_file_not_a_memory_error(tmp_path, reader):
    read, name, others = READERS[reader]
    shape, dtype = HUGE[reader]
    path = write_npz(tmp_path / "huge.npz", **{name: lying_npy(shape, dtype)}, **others)
    with pytest.raises(DiffauditError, match=rf"huge\.npz: array '{name}' declares shape \({shape[0]},.*\(\d.* [TP]iB\), "
                                             r"but the file holds 100 bytes of data for it; the file is corrupt"):
        read(path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_an_allocation_that_fails_is_an_error_naming_the_file_and_array(tmp_path, monkeypatch, reader):
    """A header that tells the truth about an array too large for this machine: numpy's MemoryError
    becomes an error naming the file, the array and its size."""
    read, name, others = READERS[reader]
    shape, dtype = {"dataset": ((4, 8, 8, 1), "|u1"), "prompts": ((4,), "<U3"),
                    "membership": ((4, 2), "|b1"), "fid": ((4, 2), "<f8")}[reader]
    honest = np.zeros(shape, dtype)
    if reader == "membership":
        honest[:, 0] = True
    path = write_npz(tmp_path / "big.npz", **{name: npy(honest)}, **others)
    real_getitem = np.lib.npyio.NpzFile.__getitem__

    def out_of_memory(self, key):
        if key == name:
            raise MemoryError(f"Unable to allocate {honest.nbytes} bytes")
        return real_getitem(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", out_of_memory)
    with pytest.raises(DiffauditError, match=rf"big\.npz: array '{name}' \(shape \({shape[0]},.* of .*, \d+ bytes\) does not "
                                             r"fit in this machine's memory"):
        read(path)


def test_negative_and_short_and_long_declarations(tmp_path):
    with pytest.raises(DiffauditError, match=r"neg\.npz: array 'images' declares shape \(-1, 8, 8, 1\), with a negative "
                                             r"dimension; the file is corrupt"):
        read_dataset(write_npz(tmp_path / "neg.npz", images=lying_npy((-1, 8, 8, 1), "|u1", bytes(1000))))
    # the header declares fewer bytes than the member holds: numpy read the first ones and ignored the rest
    with pytest.raises(DiffauditError, match=r"long\.npz: array 'images' declares shape \(1, 8, 8\) of uint8 \(64 bytes\), "
                                             r"but the file holds 128 bytes"):
        read_dataset(write_npz(tmp_path / "long.npz", images=lying_npy((1, 8, 8), "|u1", bytes(128))))
    with pytest.raises(DiffauditError, match=r"short\.npz: array 'images' declares shape \(2, 8, 8\) of uint8 \(128 bytes\)"):
        read_dataset(write_npz(tmp_path / "short.npz", images=lying_npy((2, 8, 8), "|u1", bytes(100))))
    with pytest.raises(DiffauditError, match=r"hdr\.npz: array 'images' has a damaged header"):
        read_dataset(write_npz(tmp_path / "hdr.npz", images=b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage}"))


def test_honest_files_of_every_kind_still_read(tmp_path):
    """Compressed and stored archives, header versions 1.0 and 2.0, Fortran order, 0-d and empty
    arrays, unicode and structured dtypes: declared sizes agree, nothing is refused."""
    arrays = {
        "images": np.asfortranarray(np.arange(2 * 5 * 7 * 3, dtype=np.uint16).reshape(2, 5, 7, 3)),
        "labels": np.array([3, 1]),
        "captions": np.array(["é", "two words"]),
        "seed": np.array(7),
        "empty": np.zeros((0, 4), np.float32),
        "records": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8", (2,))]),
    }
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        with np.load(path, allow_pickle=False) as z:
            for name, want in arrays.items():
                assert declared_array(z, path, name) == (want.shape, want.dtype)
        ds = read_dataset(path)
        assert ds.images.shape == (2, 5, 7, 3) and ds.captions == ["é", "two words"]
    v2 = write_npz(tmp_path / "v2.npz", images=lying_npy((2, 3, 3), "|u1", bytes(range(18)), version=(2, 0)))
    assert read_dataset(v2).images.reshape(-1).tolist() == list(range(18))


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from diffaudit.cli.main import main

    path = write_npz(tmp_path / "huge.npz", images=lying_npy((10**7, 1024, 1024, 3), "|u1"))
    code = main(["dedup", "--data", str(path), "--embedder", "pixel", "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "huge.npz: array 'images' declares shape" in err[0], err


def test_a_compressed_array_that_expands_past_the_limit_is_refused_before_it_is_decompressed(tmp_path, monkeypatch):
    """A 2.9 MB ``savez_compressed`` file held a (4, 16000, 16000, 3) array of zeros, 3 GB: the data loader
    decompressed it and ended in a MemoryError traceback. Its size is true, so the declared-size check let it
    through; the compression ratio (the rule of compressed shards) does not. Real image data passes."""
    from diffaudit.core import decompression
    from diffaudit.data import load_dataset

    monkeypatch.setattr(decompression, "MIN_DECOMPRESSED_LIMIT", 1 << 20)  # small files stand in for gigabytes
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, images=np.zeros((4, 512, 512, 3), np.uint8))  # 3 MiB in a few KiB
    with pytest.raises(DiffauditError, match=r"bomb.npz: array 'images' \(3.0 MiB\) is stored in .*decompression bomb"):
        load_dataset(str(bomb))
    real = tmp_path / "real.npz"
    pixels = np.random.default_rng(0).integers(0, 256, (8, 256, 256, 3), dtype=np.uint8)  # 1.5 MiB, hardly compresses
    np.savez_compressed(real, images=pixels)
    assert np.array_equal(load_dataset(str(real)).images, pixels)
