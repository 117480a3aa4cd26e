"""``file_identity``: what, beside its path, tells whether a file still holds the same contents.

Commands record it in their settings for the input files they read (generations in an ``.npz``,
a duplicates list), so that a resume after a file was rewritten in place is a settings mismatch
instead of a silent reuse of work done on the old contents.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Files up to this size are identified by their contents, larger ones by size and modification time.
HASHED_FILE_BYTES = 64 << 20


def file_identity(path: str | os.PathLike) -> str:
    """``file:<SHA-256, 16 hex>`` of the contents, or ``file:<size>:<mtime ns>`` above
    :data:`HASHED_FILE_BYTES` (reading a large file whole on every resume would cost more than the
    check is worth; a rewrite changes the modification time)."""
    p = Path(path)
    st = p.stat()
    if st.st_size > HASHED_FILE_BYTES:
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "file:" + h.hexdigest()[:16]


def text_bytes(text: str) -> bytes:
    """UTF-8 of ``text``, for hashing and writing. A file name that is not UTF-8 reaches diffaudit's
    keys with its undecodable bytes as surrogates (``os.fsdecode``); they are written back as those bytes."""
    return text.encode("utf-8", "surrogateescape")


def text_digest(text: str) -> str:
    """SHA-256 (16 hex) of a text: settings record it instead of a long list of ids or a whole map."""
    return hashlib.sha256(text_bytes(text)).hexdigest()[:16]
