"""``diffaudit prompts``: the captions of the most duplicated training images, as a prompt file."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffaudit.cli.common import (
    add_data_args, add_run_args, canonical_settings, data_options, emit, emit_finished, file_in_folder, load_data,
    upgrading_paths,
)
from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.core.identity import text_digest
from diffaudit.core.io import read_json, write_json_atomic
from diffaudit.core.outdir import prepare_out_dir
from diffaudit.core.progress import stage_line
from diffaudit.core.results import write_result
from diffaudit.data.dataset import CAPTION_SOURCES
from diffaudit.data.digest import dataset_digest
from diffaudit.defenses.dedup import check_threshold, find_duplicates
from diffaudit.defenses.embedders import EMBEDDERS, get_embedder, upgrade_embedder_record
from diffaudit.defenses.prompts import normalise_caption, rank_prompts, write_prompt_file

NAME = "prompts"
HELP = "rank captions by the duplication of their images and write the top N as a prompt file"
DESCRIPTION = (
    "Step 1 of generate-and-filter (Carlini et al. 2023, Sec. 4.2.1): take the captions of the most duplicated "
    "training images as prompts. An image's duplicate count is the number of other images whose embedding is at "
    "least --threshold similar to its own (its direct near-duplicates: a chain of images that each resemble the "
    "next does not count as one group). The counts come from a `diffaudit dedup` run on the same --data "
    "(--duplicates DIR) or are computed here with --embedder/--threshold. Writes prompts.txt (one per line, UTF-8) "
    "for `diffaudit sample --prompts prompts.txt --per-prompt 500`, train_map.json ({prompt: the keys of the images "
    "it captions}) for `diffaudit verify --train-map`, and result.json with each prompt's score (the largest "
    "duplicate count of its images) and image indices."
)
#: Settings that hold the path of an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`).
PATH_SETTINGS = ("data", "data_options.cifar_root", "duplicates", "embedder.model")
#: Each prompt's own training images by key, for ``verify --train-map``.
TRAIN_MAP = "train_map.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p, required=True, cache=True)
    add_run_args(p)
    g = p.add_argument_group("selection")
    g.add_argument("--top", type=int, default=1000, help="prompts written (paper: 350,000 from LAION)")
    g.add_argument("--min-score", type=int, default=0, help="keep captions whose images have at least this many duplicates")
    g.add_argument("--duplicates", default=None, metavar="DEDUP_DIR",
                   help="a `diffaudit dedup` output folder (or its result.json) made on the same --data")
    g.add_argument("--embedder", choices=sorted(EMBEDDERS), default="pixel", help="embedder when --duplicates is not given (the paper: CLIP; "
                   "--embedder clip needs --clip-model, a local CLIP folder, whose threshold is not calibrated)")
    g.add_argument("--threshold", type=float, default=None,
                   help="when --duplicates is not given: similarity at or above which two images are duplicates, "
                        "1 = identical, larger = stricter (cosine for pixel and clip, 1 - Hamming/64 for phash; "
                        "default: the embedder's calibrated value, pixel 0.97, phash 0.906; clip 0.95, not calibrated)")
    g.add_argument("--clip-model", default=None, help="clip embedder: a local folder or cached hub name")


def _as_result_file(path: str | None) -> str | None:
    """A recorded ``--duplicates``: a dedup folder as the ``result.json`` in it (as one is recorded now)."""
    return str(Path(path) / "result.json") if path and (Path(path) / "result.json").is_file() else path


def _counts_from(path: str, ds) -> tuple[np.ndarray, str]:
    """Each image's duplicate count from a `diffaudit dedup` run on the same data: int64 (N,) and which
    count it is (``neighbour_count``, direct near-duplicates; an older run without them: its groups'
    sizes − 1). Refused when the run was made on other data (its recorded data digest), since keys such
    as ``npz:<i>`` name an image of any file of that length."""
    r = read_json(Path(path))  # the dedup folder's result.json (file_in_folder)
    if r.get("command") != "dedup" or "duplicate_count" not in r:
        raise DiffauditError(f"--duplicates {path}: not the output of `diffaudit dedup`")
    if len(r["duplicate_count"]) != len(ds):
        raise DiffauditError(f"--duplicates {path}: made on {len(r['duplicate_count'])} images, but --data has {len(ds)}; "
                             "run dedup on the same --data and options")
    recorded = (r.get("settings") or {}).get("data_digest")
    if recorded is not None and recorded != dataset_digest(ds):
        raise DiffauditError(f"--duplicates {path}: made on other data than --data {ds.source} (its images, keys or "
                             f"captions differ: data digest {recorded}, not {dataset_digest(ds)}); run dedup on the "
                             "same --data and options")
    if "neighbour_count" in r:
        return np.asarray(r["neighbour_count"], dtype=np.int64), "neighbour_count"
    index = {k: i for i, k in enumerate(ds.keys)}
    counts = np.zeros(len(ds), dtype=np.int64)
    for g in r.get("groups", []):
        for k in g.get("keys", []):
            if k not in index:
                raise DiffauditError(f"--duplicates {path}: key {k!r} is not in --data; run dedup on the same --data")
            counts[index[k]] = len(g["keys"]) - 1
    return counts, "group_size_minus_one"


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of the embedder and of its model (``embedder.model``; its ``model_digest``: the contents of that flag)."""
    return {"embedder.name": "--embedder", "embedder.model": "--clip-model"}


def _embedder_and_threshold(args: argparse.Namespace):
    """The embedder and the effective threshold, checked before the output folder records them."""
    options = {"device": str(resolve_device(args.device)), "model": args.clip_model} if args.embedder == "clip" else {}
    if args.clip_model and args.embedder != "clip":
        raise DiffauditError("--clip-model is for --embedder clip")
    emb = get_embedder(args.embedder, **options)
    return emb, check_threshold(emb.default_threshold if args.threshold is None else args.threshold, emb.metric)


def run(args: argparse.Namespace) -> int:
    from diffaudit.cli.dedup import refuse_unused_options

    refuse_unused_options(args)  # --clip-model without --embedder clip
    opts = data_options(args)
    ds = load_data(args, args.data, **opts)  # with --data-cache: the parts dedup decoded, read memory-mapped
    if ds.captions is None:
        raise DiffauditError(f"--data {args.data}: the dataset has no captions; give one with captions ({CAPTION_SOURCES})")
    if args.duplicates:
        # the dedup folder and its result.json are one input: recorded as the file
        args.duplicates = file_in_folder(args.duplicates, "result.json")
        counts, count_kind = _counts_from(args.duplicates, ds)
        emb = threshold = None
    else:
        counts, count_kind = None, "neighbour_count"
        emb, threshold = _embedder_and_threshold(args)
    settings = {"data": str(args.data), "data_options": opts, "top": args.top, "min_score": args.min_score,
                "duplicates": args.duplicates, "embedder": None if emb is None else emb.settings(),
                "threshold": threshold,
                # the contents behind the paths (rewritten in place, they are other inputs)
                "data_digest": dataset_digest(ds),
                "duplicate_counts": None if counts is None else text_digest(",".join(map(str, counts.tolist())))}
    settings = canonical_settings(settings, PATH_SETTINGS)
    # a clip embedder's record from before its weights' digest: read as made with this model (as it resumed then)
    # and a --duplicates folder recorded as given, before it was recorded as its result.json
    upgrade = upgrading_paths(PATH_SETTINGS, then=lambda old: {
        **old, "embedder": upgrade_embedder_record(old.get("embedder"), settings["embedder"]),
        "duplicates": _as_result_file(old.get("duplicates"))})
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh, upgrade=upgrade)
    if emit_finished(args, out, resumed, lambda r: _summary(r, out)):
        return 0
    if counts is None:
        counts = find_duplicates(ds.images, emb, threshold=threshold, seed=args.seed).neighbour_count
    ranked = rank_prompts(ds.captions, counts, top=args.top, min_score=args.min_score)
    write_prompt_file(out / "prompts.txt", ranked)
    # each prompt's own training images, by key, for `verify --train-map` (the paper's check of a generation
    # against the images its caption came from)
    write_json_atomic(out / TRAIN_MAP, {x.prompt: [ds.keys[i] for i in x.indices] for x in ranked})
    uncaptioned = sum(1 for c in ds.captions if not normalise_caption(c))  # no prompt to give: rank_prompts skips them
    if uncaptioned:
        stage_line(f"prompts: {uncaptioned:,} of {len(ds):,} images {'has' if uncaptioned == 1 else 'have'} an empty "
                   "caption (no prompt, however duplicated)")
    r = write_result(out / "result.json", NAME, settings, {"seed": args.seed}, prompt_file="prompts.txt",
                     train_map_file=TRAIN_MAP, n_prompts=len(ranked), n_images=len(ds), n_uncaptioned_images=uncaptioned,
                     n_duplicated_images=int((counts > 0).sum()),
                     n_prompts_without_duplicates=sum(x.score == 0 for x in ranked), score=count_kind,
                     prompts=[x.to_dict() for x in ranked])
    stage_line(f"prompts: {len(ranked)} prompts -> {out / 'prompts.txt'}")
    emit(args, r, _summary(r, out))
    return 0


def _summary(r: dict, out: Path) -> str:
    """The result line: the prompts written, and how many of them are captions of images without a duplicate
    (with the default --min-score 0 the list is filled up with them when fewer images are duplicated)."""
    plain = r.get("n_prompts_without_duplicates") or 0
    text = f"{r['n_prompts']} prompts in {out / 'prompts.txt'}"
    if plain:
        text += (f" ({plain} of them caption{'s' if plain > 1 else ''} of images without a near-duplicate; "
                 "--min-score 1 keeps only duplicated ones)")
    return text
