"""A dataset and its loader options written as the command-line flags that load it again."""

from __future__ import annotations

from typing import Any


def data_flags(spec: Any, options: dict[str, Any] | None = None) -> str:
    """``cifar10 --image-size 16 --subset 2000``: the spec and its options as flags. Options that are None
    or False are left out, a true one is a bare flag, and ``subset_seed`` only shows beside a subset
    when it is not the default 0."""
    opts = options or {}
    flags = "".join(f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                    for k, v in opts.items()
                    if v is not None and v is not False and not (k == "subset_seed" and (not v or not opts.get("subset"))))
    return f"{spec}{flags}"
