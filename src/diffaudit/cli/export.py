"""``diffaudit export``: write a sample store's generations as PNG files.

The output folder records which store it holds (its identity: the manifest's digest), so a second
export of another store into it is refused instead of mixing two stores' images under the same
names. Every run checks every generation's file and writes only those missing (each is written
atomically, so one that exists is whole): a stopped export resumes, a finished one re-run puts back
the files deleted since, and one made while sampling was unfinished catches up once more shards
are finished. ``written_now`` counts the files this run wrote. A store with unfinished shards is
refused unless ``--partial`` says that its finished generations are wanted now. A store generated from
prompts lists them in ``result.json`` (``prompts``): ``p<P>-i<I>.png`` is image I of ``prompts[P]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffaudit.cli.common import emit

NAME = "export"
HELP = "export a sample store to a folder of PNG files (one per generation, named by its id)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="sample store: a folder or an object-store URL (s3://bucket/store)")
    p.add_argument("--out", required=True, help="folder for the PNG files (resumed automatically; refused if it "
                                                 "holds another store's export)")
    p.add_argument("--partial", action="store_true",
                   help="export the finished generations of a store whose sampling is not finished (default: refused)")
    p.add_argument("--fresh", action="store_true", help="delete what --out holds and start over")


def _summary(r: dict) -> str:
    from diffaudit.report.fmt import counted

    now, unfinished = r["written_now"], r.get("unfinished_shards") or 0
    text = f"exported {r['exported']} PNG files to {r['out']}" + (f" ({now} written now)" if now != r["exported"] else "")
    if unfinished:  # --partial: the store's unfinished shards are not in the folder yet
        text += (f"; a partial export: {counted(unfinished, 'shard')} of the store {'are' if unfinished != 1 else 'is'} "
                 "not finished (re-run once sampling has finished to add them)")
    return text


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of each setting not named after its option (for a refusal to resume): the identity of the
    generations is --samples'."""
    return {"samples_identity": "--samples (the store's generations)"}


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from diffaudit.core.errors import DiffauditError
    from diffaudit.core.io import atomic_write
    from diffaudit.core.outdir import prepare_out_dir
    from diffaudit.core.progress import progress_bar
    from diffaudit.core.results import write_result
    from diffaudit.store import SampleStore, samples_identity

    from diffaudit.store.pool import SamplePool

    if SamplePool.is_pool(args.samples):  # its stores are what export writes, each under its own ids
        members = SamplePool.open(args.samples).members
        raise DiffauditError(f"--samples {args.samples} is a pool of {len(members)} stores (`diffaudit pool`); export "
                             f"each store to its own folder: {', '.join(members)}")
    store = SampleStore.open(args.samples)
    pending = store.pending()
    if pending and not args.partial:
        raise DiffauditError(
            f"{args.samples}: {len(pending)} of {store.n_shards} shards are not finished; finish sampling (re-run "
            "`diffaudit sample` with the same flags) or pass --partial to export the finished generations")
    settings = {"samples_identity": samples_identity(args.samples)}  # the same as its shards finish
    out, _ = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh,
                             upgrade=lambda old: {k: v for k, v in old.items() if k != "partial"},  # earlier record
                             refuse_foreign="export writes generated images into a new or empty folder, so they are "
                                            "never mixed with real ones")
    done = store.completed()
    n = written = 0
    total = sum(store.plan(k).stop - store.plan(k).start for k in done)
    with progress_bar("export", total, unit="img") as bar:
        for k in done:
            images, meta = store.read_shard(k, mmap=True)
            for img, gid in zip(images, meta["ids"]):
                path = Path(out) / f"{gid}.png"
                if not path.exists():
                    im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
                    atomic_write(path, lambda f, im=im: im.save(f, format="PNG"))
                    written += 1
                n += 1
                bar.advance(1)
    prompts = store.manifest.get("prompts") or []
    # which prompt each file was generated from: p<P>-i<I>.png is image I of prompts[P] (None: no prompt)
    named = {"prompts": prompts} if any(p is not None for p in prompts) else {}
    result = write_result(out / "result.json", NAME, settings, exported=n, written_now=written,
                          unfinished_shards=len(pending), out=str(out), samples=str(args.samples), **named)
    emit(args, result, _summary(result))
    return 0
