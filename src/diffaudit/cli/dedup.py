"""``diffaudit dedup``: near-duplicate groups of a training set, and the kept list for ``--dedup`` training."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffaudit.cli.common import (
    add_data_args, add_run_args, canonical_settings, data_options, emit, emit_finished, given_options, load_data, out_file,
    upgrading_paths,
)
from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import open_npz, read_json, save_npz_atomic
from diffaudit.core.outdir import prepare_out_dir
from diffaudit.core.progress import Timer, warning_line
from diffaudit.core.results import write_result
from diffaudit.data.digest import dataset_digest
from diffaudit.defenses.dedup import KEEP_RULE, check_threshold, find_duplicates, write_deduped_npz, write_keep_list
from diffaudit.defenses.embedders import DEFAULT_CLIP_MODEL, EMBEDDERS, get_embedder, upgrade_embedder_record
from diffaudit.defenses.neighbours import INDEX_KINDS, check_search_options, ivf_cells

NAME = "dedup"
HELP = "find near-duplicate groups in a training set (pixel, phash or CLIP embeddings + faiss)"
DESCRIPTION = (
    "Embed every image of --data, join every pair whose similarity is at least --threshold (faiss: exact flat "
    "index, or IVF/HNSW for millions) and group them into connected components (Carlini et al. 2023, Sec. 4.2.1 "
    "and 7: CIFAR-10 near-duplicates removed at similarity > 0.85). Writes result.json (groups with member indices, "
    "keys and the members kept, per-image duplicate_count), keep.json (what `diffaudit train --dedup` keeps: "
    "greedy in index order, each image kept unless an already-kept image is its near-duplicate, so every removed "
    "image has a kept near-duplicate, named in removed_duplicate_of), edges.npz, and with --write-deduped an .npz "
    "of the kept images. --seed seeds the IVF k-means (a setting with --index ivf). "
    "Default thresholds are calibrated on duplicates planted in CIFAR-10 (diffaudit.defenses.calibration)."
)
#: Settings that hold the path of an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`).
PATH_SETTINGS = ("data", "data_options.cifar_root", "embedder.model")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p, required=True, cache=True)
    add_run_args(p)
    g = p.add_argument_group("near-duplicates")
    g.add_argument("--embedder", choices=sorted(EMBEDDERS), default="pixel", help="image embedding (the paper: CLIP for "
                   "the prompts, a CNN for CIFAR-10; --embedder clip needs --clip-model, a local CLIP folder)")
    g.add_argument("--threshold", type=float, default=None,
                   help="similarity at or above which two images are duplicates (default: the embedder's calibrated "
                        "value: pixel 0.97, phash 0.906 = at most 6 of 64 bits; clip 0.95, not calibrated)")
    g.add_argument("--index", choices=INDEX_KINDS, default="flat", help="faiss index: flat (exact), ivf or hnsw (approximate)")
    g.add_argument("--k", type=int, default=64, help="neighbours per query with --index hnsw")
    g.add_argument("--nlist", type=int, default=None, help="IVF cells (default: 4*sqrt(N), at most N/39 so each cell trains on 39 images)")
    g.add_argument("--nprobe", type=int, default=16, help="IVF cells searched per query")
    g.add_argument("--batch-size", type=int, default=4096, help="images embedded and queried at once (bounds memory)")
    g.add_argument("--max-shift", type=int, default=None,
                   help="tolerate translations up to this many pixels (pixel default 2, phash default 2, clip 0)")
    g.add_argument("--pixel-size", type=int, default=None, help="pixel embedder: down-sampled side (default: 8)")
    g.add_argument("--pixel-color", choices=("ycc", "rgb", "gray"), default=None,
                   help="pixel embedder: colour (default: ycc, 8x8 luma + 4x4 chroma)")
    g.add_argument("--clip-model", default=None, help=f"clip embedder: local folder or cached hub name (default: {DEFAULT_CLIP_MODEL})")
    g.add_argument("--write-deduped", default=None, metavar="FILE.npz",
                   help="also write the kept images as an .npz (a folder, existing, ending in / or a new path without a suffix: deduped.npz inside it); "
                        "its examples are named npz:<i> when loaded, the original keys are kept in its `keys` array; an "
                        "existing file is replaced only if it is such an .npz")


#: Options that only one choice of --index or --embedder reads: (flag, its destination, the choice, the value it needs).
_FOR_ONE_CHOICE = (("--k", "k", "index", "hnsw"), ("--nlist", "nlist", "index", "ivf"), ("--nprobe", "nprobe", "index", "ivf"),
                   ("--pixel-size", "pixel_size", "embedder", "pixel"), ("--pixel-color", "pixel_color", "embedder", "pixel"),
                   ("--clip-model", "clip_model", "embedder", "clip"))


def refuse_unused_options(args: argparse.Namespace) -> None:
    """Refuse options given on the command line that the chosen --index or --embedder does not read (``--k``
    with the exact flat search): they would run as if not given. ``prompts`` shares the embedder's."""
    given = given_options(getattr(args, "_argv", []))
    for flag, dest, choice, needs in _FOR_ONE_CHOICE:
        if dest in given and hasattr(args, choice) and getattr(args, choice) != needs:
            raise DiffauditError(f"{flag} is for --{choice} {needs}, and --{choice} is {getattr(args, choice)}: drop {flag}"
                                 + (f" or pass --{choice} {needs}" if choice == "index" else ""))


def _embedder_options(args: argparse.Namespace, device) -> dict:
    if args.embedder == "pixel":
        return {"size": args.pixel_size, "color": args.pixel_color, "max_shift": args.max_shift}
    if args.embedder == "phash":
        return {"max_shift": args.max_shift}
    if args.max_shift:
        raise DiffauditError("--max-shift is not supported by the clip embedder (CLIP is already shift-tolerant)")
    return {"model": args.clip_model, "device": str(device)}


def _warn_upsampling(args: argparse.Namespace, embedder, ds) -> None:
    """Say when the pixel embedder's side exceeds the images': they are upsampled, which adds no detail
    and makes the embedding larger (a duplicate is found as well at the images' own size)."""
    h, w = ds.image_shape[:2]
    if args.embedder == "pixel" and embedder.size > min(h, w):
        fits = min(h, w) - (min(h, w) % 2 if embedder.color == "ycc" else 0)  # ycc halves the side for chroma
        warning_line("dedup", f"--pixel-size {embedder.size} exceeds the {h}x{w} images of --data: they are upsampled, "
                     f"which adds no detail; --pixel-size {fits} or less compares them at their own size")


def _summary(r: dict) -> str:
    return (f"{r['n_groups']} near-duplicate group{'' if r['n_groups'] == 1 else 's'} ({r['n_in_groups']} images, "
            f"{r['n_removed']} removed by --dedup) "
            f"among {r['n_images']} images; embedder {r['embedder']['name']} at threshold {r['threshold']:.4g}")


def _seed_setting(args: argparse.Namespace) -> dict:
    """``{"seed": ...}`` where the seed shapes the result (the IVF k-means), else ``{}``: flat search is
    exact and HNSW is built without it, so their folders resume under any --seed (as before)."""
    return {"seed": args.seed} if args.index == "ivf" else {}


#: The flags of the embedder's recorded settings (``embedder.model``'s ``model_digest``: the contents of --clip-model).
EMBEDDER_FLAGS = {"embedder.name": "--embedder", "embedder.size": "--pixel-size", "embedder.color": "--pixel-color",
                  "embedder.max_shift": "--max-shift", "embedder.model": "--clip-model"}


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of each embedder setting (:data:`EMBEDDER_FLAGS`), for a refusal to resume."""
    return dict(EMBEDDER_FLAGS)


def _upgrade_settings(old: dict, out: Path, embedder: dict) -> dict:
    """Settings of an earlier version read as today's: a clip embedder did not record its weights' digest
    (:func:`~diffaudit.defenses.embedders.upgrade_embedder_record`); an IVF run did not record its seed; its
    result's ``seeds`` did, when it finished (an unfinished one stays unmatched: its k-means seed is unknown)."""
    old = {**old, "embedder": upgrade_embedder_record(old.get("embedder"), embedder)}
    if old.get("index") != "ivf" or "seed" in old or not (out / "result.json").exists():
        return old
    seed = (read_json(out / "result.json").get("seeds") or {}).get("seed")
    return {**old, "seed": seed} if isinstance(seed, int) else old


def _stale_keep_list(result: dict) -> str | None:
    """Why a finished result's keep list no longer holds: an earlier rule chose it (each group cut to its
    first member, which also removed images with no kept near-duplicate)."""
    if result.get("keep_rule") == KEEP_RULE:
        return None
    return f"holds a keep list made by an earlier rule; rebuilding it ({KEEP_RULE}) from the cached embeddings"


def _deduped_target(spec: str) -> Path:
    """The file ``--write-deduped`` names (``deduped.npz`` inside a folder), refused when a file there is not a
    deduplicated .npz (``images`` and ``keys``) this command wrote: a user's file is never replaced."""
    path = out_file(spec, "deduped.npz")
    if path.exists():
        try:
            with open_npz(path) as z:
                ours = {"images", "keys"} <= set(z.files)
        except DiffauditError:
            ours = False
        if not ours:
            raise DiffauditError(f"--write-deduped {path} exists and is not a deduplicated .npz that `diffaudit dedup` "
                                 "wrote: choose another path (diffaudit does not replace your files)")
    return path


def _warn_most_removed(args: argparse.Namespace, embedder, threshold: float, n: int, kept: int) -> None:
    """Warn when a ``--threshold`` below the embedder's default removes more than half the images as
    duplicates: at such a value (``-1`` joins every pair) unrelated images count as copies of each other."""
    if args.threshold is None or threshold >= embedder.default_threshold or n - kept <= n / 2:
        return
    warning_line(NAME, f"--threshold {threshold:g} removes {n - kept} of {n} images as duplicates of another: below "
                       f"the {args.embedder} embedder's calibrated {embedder.default_threshold:g}, unrelated images "
                       "join the same group; raise --threshold unless the data is mostly copies")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.batch_size < 1:
        raise DiffauditError("--batch-size must be at least 1")
    check_search_options(k=args.k, nlist=args.nlist, nprobe=args.nprobe)
    refuse_unused_options(args)
    embedder = get_embedder(args.embedder, **_embedder_options(args, device))
    # checked before the folder records it: a NaN cannot be written, and a refused value would block the corrected one
    threshold = check_threshold(embedder.default_threshold if args.threshold is None else args.threshold, embedder.metric)
    if args.write_deduped:
        args.write_deduped = str(_deduped_target(args.write_deduped))
    opts = data_options(args)
    # captions are never used but to carry them into --write-deduped's .npz: only then is one missing an error
    ds = load_data(args, args.data, need_captions=bool(args.write_deduped), **opts)
    _warn_upsampling(args, embedder, ds)
    settings = canonical_settings({
        "data": str(args.data), "data_options": opts, "data_digest": dataset_digest(ds), "embedder": embedder.settings(),
        "threshold": threshold, "index": args.index, "k": args.k, "nlist": args.nlist, "nprobe": args.nprobe,
        "batch_size": args.batch_size, **_seed_setting(args),
    }, PATH_SETTINGS)
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh,
                                   upgrade=upgrading_paths(PATH_SETTINGS, then=lambda old: _upgrade_settings(old, Path(args.out), settings["embedder"])))
    if emit_finished(args, out, resumed, _summary, stale=_stale_keep_list, stale_files=("keep.json", "edges.npz")):
        if args.write_deduped:
            from diffaudit.defenses.dedup import load_keep_list

            write_deduped_npz(args.write_deduped, ds, load_keep_list(out / "keep.json", ds))
        return 0
    with Timer() as t:
        res = find_duplicates(ds.images, embedder, threshold=threshold, index=args.index, k=args.k, nlist=args.nlist,
                              nprobe=args.nprobe, batch_size=args.batch_size, seed=args.seed, cache_dir=out / "embeddings")
    _warn_most_removed(args, embedder, threshold, len(ds), len(res.keep_indices()))
    save_npz_atomic(out / "edges.npz", pairs=res.edges.pairs, similarity=res.edges.similarity)
    write_keep_list(out / "keep.json", ds, res)
    if args.write_deduped:
        write_deduped_npz(args.write_deduped, ds, res.keep_indices())
    cells = {"ivf_cells": ivf_cells(len(ds), args.nlist)} if args.index == "ivf" else {}  # what --nlist (or its default) came to
    result = write_result(out / "result.json", NAME, settings, {"seed": args.seed}, **res.result_fields(ds.keys),
                          **cells, keep_file="keep.json", edges_file="edges.npz", seconds=round(t.seconds, 3))
    emit(args, result, f"{_summary(result)} ({t.seconds:.1f} s)")
    return 0
