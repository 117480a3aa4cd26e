"""Read one array of an ``.npz`` only after checking the size its header declares.

An ``.npy`` member starts with a header declaring the array's shape and dtype; numpy allocates
``prod(shape) * itemsize`` bytes from it before reading the data. A hostile or damaged header (a
1 KB file declaring a (10^7, 1024, 1024, 3) array) then ends in a ``MemoryError`` traceback, or, where
the allocation succeeds, in gigabytes taken for a file that holds a few bytes. The zip archive
records each member's uncompressed size, so the two are compared before anything is allocated: an
array whose declared size is not what its member holds is a corrupt file, an error naming it.
A compressed member that expands past :mod:`diffaudit.core.decompression`'s limit is refused as a
decompression bomb. Whatever allocation still fails (a genuine array larger than this machine's
memory) is an error naming the file and the array, never a traceback.

Every reader of untrusted ``.npz`` files goes through :func:`read_npz_array`: datasets
(:mod:`diffaudit.data.npz`), samples' prompts (:mod:`diffaudit.store.read`), membership files
(:mod:`diffaudit.data.membership`) and ``--fid-features`` (:mod:`diffaudit.distances.frechet`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib import format as npy_format

from diffaudit.core import decompression
from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import bytes_text


def _member(npz: np.lib.npyio.NpzFile, name: str) -> str:
    """The zip member that holds array ``name`` (``name.npy``, or ``name`` itself as numpy also accepts)."""
    return name if name in npz.zip.namelist() else name + ".npy"  # as ``NpzFile.__getitem__`` picks it


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, Fortran order, dtype, offset of the data) from the header of the ``.npy`` array whose file
    object ``f`` stands at its start, reading nothing past the header. Raises what numpy raises for a
    malformed one (``ValueError``, ``EOFError``, ...)."""
    version = npy_format.read_magic(f)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    return shape, fortran, dtype, f.tell()


def declared_array(npz: np.lib.npyio.NpzFile, path, name: str) -> tuple[tuple, np.dtype] | None:
    """(shape, dtype) that the header of array ``name`` declares, after checking that its data size
    equals what the zip member holds; None for a member that is not an ``.npy`` array (numpy reads
    those as raw bytes) or an object array (refused by the caller, which never unpickles).

    Raises:
        DiffauditError: a malformed header, or a declared size the member does not hold (naming both).
    """
    info = npz.zip.getinfo(_member(npz, name))
    try:
        with npz.zip.open(info) as f:
            if f.read(len(npy_format.MAGIC_PREFIX)) != npy_format.MAGIC_PREFIX:
                return None
            f.seek(0)
            shape, _, dtype, header = read_npy_header(f)
    except Exception as exc:  # noqa: BLE001 - an untrusted header fails in many ways (ValueError, SyntaxError...)
        raise DiffauditError(f"{path}: array {name!r} has a damaged header ({type(exc).__name__}: {exc}); "
                             "re-create the file") from None
    if dtype.hasobject:
        return None
    if any(d < 0 for d in shape):
        raise DiffauditError(f"{path}: array {name!r} declares shape {shape}, with a negative dimension; "
                             "the file is corrupt: re-create it")
    count = math.prod(shape)  # Python integers: a huge shape cannot overflow into a small one
    declared, held = count * dtype.itemsize, info.file_size - header
    if declared != held:
        raise DiffauditError(
            f"{path}: array {name!r} declares shape {shape} of {dtype} ({bytes_text(declared)}), but the file holds "
            f"{bytes_text(held)} of data for it; the file is corrupt or truncated: re-create it"
        )
    if info.file_size > decompression.decompressed_limit(info.compress_size):  # savez_compressed's deflate: a 2.9 MB file held a 3 GB array
        raise DiffauditError(
            f"{path}: array {name!r} ({bytes_text(info.file_size)}) is stored in {bytes_text(info.compress_size)}, "
            f"compressed more than {decompression.MAX_DECOMPRESSION_RATIO} times (and past "
            f"{bytes_text(decompression.MIN_DECOMPRESSED_LIMIT)}): "
            "refused as a decompression bomb (real image data compresses a few times: save it with np.savez if it "
            "is genuine)"
        )
    return shape, dtype


def read_npz_array(npz: np.lib.npyio.NpzFile, path, name: str) -> np.ndarray:
    """Array ``name`` of the open ``npz`` (from ``path``, named in errors), its declared size checked
    first (:func:`declared_array`).

    The caller keeps its own handling of numpy's ``ValueError`` (an object array, which
    ``allow_pickle=False`` refuses) and of damaged zip data.

    Raises:
        DiffauditError: a damaged header, a declared size the file does not hold, or an array larger
            than the memory this machine can allocate (naming the file, the array and its size).
    """
    declared = declared_array(npz, path, name)
    try:
        return npz[name]
    except MemoryError:
        size = ""
        if declared is not None:
            shape, dtype = declared
            size = f" (shape {shape} of {dtype}, {bytes_text(math.prod(shape) * dtype.itemsize)})"
        raise DiffauditError(
            f"{path}: array {name!r}{size} does not fit in this machine's memory; "
            "use a machine with more memory or split the file"
        ) from None
