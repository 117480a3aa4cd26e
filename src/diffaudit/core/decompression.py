"""How far compressed input may expand: the one rule for compressed shards (:mod:`diffaudit.data.shards`)
and compressed ``.npz`` arrays (:mod:`diffaudit.core.npz_arrays`).

A small hostile file can declare, or decompress to, gigabytes (a 153 KB ``.tar.xz`` of 1 GiB; a 2.9 MB
``.npz`` of a 3 GB array). Image data (PNG, JPEG, WebP) hardly compresses, and raw pixels of real images
compress a few times, so genuine inputs stay far below :data:`MAX_DECOMPRESSION_RATIO`; anything up
to :data:`MIN_DECOMPRESSED_LIMIT` is allowed whatever its ratio (small files of flat images).
"""

from __future__ import annotations

#: Compressed input may decompress to this many times its own size...
MAX_DECOMPRESSION_RATIO = 100
#: ...or to this many bytes, whichever is larger; more is refused as a decompression bomb.
MIN_DECOMPRESSED_LIMIT = 256 << 20


def decompressed_limit(compressed_bytes: int) -> int:
    """How many bytes input stored in ``compressed_bytes`` may expand to: :data:`MAX_DECOMPRESSION_RATIO`
    times that, or :data:`MIN_DECOMPRESSED_LIMIT`, whichever is larger."""
    return max(MIN_DECOMPRESSED_LIMIT, MAX_DECOMPRESSION_RATIO * compressed_bytes)
