"""Datasets are read from local (or mounted) paths: a URL is refused saying what to do instead."""

from __future__ import annotations

import os
import re

from diffaudit.core.errors import DiffauditError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def check_local(spec: str | os.PathLike) -> None:
    """Refuse a URL as a dataset (``s3://``, ``gs://``, ``https://``, ``file://``): read as a path it would
    fold its ``//`` and be reported as a missing ``s3:/bucket/...`` of this disk."""
    s = os.fspath(spec)
    m = _URL.match(s)
    if m is None:
        return
    if m.group(1).lower() == "file":
        path = file_url_path(s)
        raise DiffauditError(f"{s}: a dataset is given by its path, not a file:// URL"
                             + (f" ({path})" if path else ""))
    raise DiffauditError(
        f"{s}: a dataset is read from a local or mounted path, not a URL; copy its files first (`aws s3 sync`, "
        "`gcloud storage rsync`) or mount the bucket (s3fs, gcsfuse) at the same path on every node "
        "(sample stores are the exception: --out and --samples take s3:// URLs)"
    )


def file_url_path(url: str) -> str | None:
    """The local path a ``file://`` URL names (``file:///x`` and ``file://localhost/x``: ``/x``), None for
    another host's file or another kind of URL."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(url)
    if parsed.scheme.lower() != "file" or parsed.netloc not in ("", "localhost"):
        return None
    return url2pathname(parsed.path)
