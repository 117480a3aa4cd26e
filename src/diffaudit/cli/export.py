"""``diffaudit export``: write a sample store's generations as PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffaudit.cli.common import emit

NAME = "export"
HELP = "export a sample store to a folder of PNG files (one per generation, named by its id)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="sample store folder")
    p.add_argument("--out", required=True, help="folder for the PNG files")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from diffaudit.core.io import atomic_write, make_private_dir
    from diffaudit.store import SampleStore

    store = SampleStore.open(args.samples)
    out = make_private_dir(args.out)
    n = 0
    for images, meta in store.iter_shards():
        for img, gid in zip(images, meta["ids"]):
            im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            atomic_write(Path(out) / f"{gid}.png", lambda f, im=im: im.save(f, format="PNG"))
            n += 1
    emit(args, {"exported": n, "out": str(out)}, f"exported {n} PNG files to {out}")
    return 0
