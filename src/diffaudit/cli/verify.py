"""``diffaudit verify``: which generations reproduce training images (paper §3, §4.1, §5.1)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from diffaudit.attacks.extraction.inputs import check_extract_samples, read_generations
from diffaudit.attacks.extraction.knn_cache import iter_cached_knn
from diffaudit.attacks.extraction.verification import (
    DEFAULT_DELTA,
    DEFAULT_EIDETIC_DELTA,
    MAP_RESIZES,
    RULES,
    Verification,
    VerifySettings,
    auto_rule,
    by_member,
    check_prompt_map,
    decide,
    verify_decided,
)
from diffaudit.cli.common import (
    add_data_args, add_run_args, canonical_path, canonical_settings, data_options, emit, emit_finished, load_data,
    devices_record, file_in_folder, given_options, ray_address, run_devices, speaking_as, upgrading_paths,
)
from diffaudit.cli.ray_work import ImagesRecipe, data_recipe, knn_on_ray
from diffaudit.core.errors import DiffauditError
from diffaudit.core.identity import file_identity, text_digest
from diffaudit.core.io import read_json, save_npz_atomic
from diffaudit.core.outdir import prepare_out_dir
from diffaudit.core.progress import Timer, printable, progress_bar, stage_line, warning_line
from diffaudit.core.ray_pool import RAY_HELP, connect
from diffaudit.core.results import write_result
from diffaudit.core.seeds import derive_seed, numpy_rng
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.digest import dataset_digest, shared_images
from diffaudit.data.loader import ImagesDifferInSize
from diffaudit.data.native import NativeImages
from diffaudit.distances.frechet import fid_from_file
from diffaudit.distances.knn_backends import KNN_BACKENDS
from diffaudit.distances.normalized import DEFAULT_ALPHA, DEFAULT_NEIGHBORS, neighborhood_size
from diffaudit.store import SampleStore, sampler_classes, sampler_kind, samples_identity
from diffaudit.store.location import check_reachable_by_workers
from diffaudit.store.pool import SamplePool, split_pooled_id
from diffaudit.report.fmt import counted

NAME = "verify"
HELP = "verify generations against the training set: (l2, delta)-extraction or the normalised distance, unique counts"
DESCRIPTION = (
    "For every generation (or only the flagged medoids of `diffaudit extract`, --from-extract), its exact nearest "
    "training images in --data. --rule l2 (default for a Stable Diffusion pipeline's generations): extracted when "
    "l2 <= --delta (0.15). --rule ratio (default for a pixel-space model's, class-conditional ones included): l2 to "
    "the nearest divided by alpha times the mean l2 to the n nearest (alpha 0.5, n = min(50, N)) is <= 1 (Carlini et al. 2023, Sec. 5.1). Each training image is counted once (its first "
    "generation; the closest generation counted for it is kept too, as closest_*, and is the one the report shows) "
    "and training images within --dup-delta of each other count as one; eidetic_k is the number of "
    "training images within --eidetic-delta of the match, itself included. --baseline DATASET repeats the "
    "verification against an equal-size set the model never saw (false-positive baseline). --train-map checks "
    "each prompt's generations against its own training image(s) under every crop alignment, after the "
    "shorter-side resize Stable Diffusion trained with (--map-resize); with --train-map, --data may hold images of "
    "different sizes (only that check then runs). A sample store whose model records its training set "
    "(train_ids.json) is compared with --data: examples the model never trained on (counted as training images "
    "all the same), or most of its training examples missing, are warned of and recorded (data_vs_model). Works on "
    "samples from any generator (e.g. a GAN's, in a folder or .npz)."
)
#: Settings that hold the path of an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`).
PATH_SETTINGS = ("samples", "data", "data_options.cifar_root", "from_extract", "baseline", "train_map", "fid_features")
#: --baseline images also in --data listed by key in result.json (all are counted).
LEFT_OUT_LISTED = 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="generations: a sample store (a folder, or an object-store URL such "
                                                    "as s3://bucket/store), a pool of stores (`diffaudit pool`: several "
                                                    "models' generations counted together, each model's count beside), "
                                                    "image folder, WebDataset shards or .npz")
    add_data_args(p, required=True, cache=True)
    add_run_args(p)
    g = p.add_argument_group("verification")
    g.add_argument("--rule", choices=("auto",) + RULES, default="auto",
                   help="l2: (l2, delta)-extraction; ratio: normalised distance <= 1; auto: l2 for a Stable Diffusion pipeline's "
                        "generations, ratio for a pixel-space model's (a sample store records which; other inputs: "
                        "l2 when they carry text prompts, ratio without prompts or with class indices)")
    g.add_argument("--delta", type=float, default=DEFAULT_DELTA, help="delta of (l2, delta)-extraction, in (0, 1]")
    g.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="alpha of the normalised distance")
    g.add_argument("--n-neighbors", type=int, default=DEFAULT_NEIGHBORS, help="n of the normalised distance (capped at N_train)")
    g.add_argument("--eidetic-delta", type=float, default=DEFAULT_EIDETIC_DELTA, help="radius of the eidetic count, in (0, 1]")
    g.add_argument("--dup-delta", type=float, default=DEFAULT_EIDETIC_DELTA,
                   help="training images within this l2 of each other count as one image, in (0, 1]")
    g.add_argument("--from-extract", default=None, metavar="RESULT",
                   help="verify only the flagged medoids of this extract result.json (or the extract folder holding it); "
                        "it must have been made from "
                        "--samples (its recorded samples identity is compared; a result of an earlier version that "
                        "records none is used with a warning)")
    g.add_argument("--baseline", default=None, metavar="DATASET",
                   help="images the model never saw (e.g. cifar10-test): same verification, reported as the false-positive baseline")
    g.add_argument("--train-map", default=None, metavar="MAP",
                   help="JSON {prompt: [training keys or indices]}: check each prompt's generations against its own images, every crop alignment")
    g.add_argument("--map-resize", choices=MAP_RESIZES, default="shorter-side",
                   help="how training resized an image before its random square crop, for --train-map: shorter-side "
                        "(Stable Diffusion's training transform: the shorter side resized to the generation's size, "
                        "aspect ratio kept, bilinear) or none (windows of the image as stored) (default: %(default)s)")
    g.add_argument("--fid-features", default=None, metavar="NPZ",
                   help=".npz with feature matrices `samples` and `reference` (or their mu_/sigma_ statistics), e.g. Inception "
                        "pool3 features computed elsewhere; without it fid is 'not computed'")
    g.add_argument("--backend", choices=sorted(KNN_BACKENDS), default="torch", help="exact nearest-neighbour backend")
    g.add_argument("--ray", type=ray_address, default=None, metavar="ADDRESS",
                   help=f"search the nearest training (and --baseline) images on a Ray cluster: {RAY_HELP}; every node "
                        "reads --samples and --data at the same paths and writes into --out (a shared filesystem); the "
                        "result is the one a single process gives")


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of each setting not named after its option (for a refusal to resume): what the seed and
    the left-out images of --baseline, and the medoids of --from-extract, are recorded as."""
    return {"baseline_seed": "--seed, which picks the equal-size --baseline",
            "baseline_left_out": "the --baseline images also in --data, left out of it",
            "from_extract_samples": "the medoids --from-extract flags"}


def _select_from_extract(path: str, samples: ImageDataset, spec: str) -> tuple[ImageDataset, list[str]]:
    """The flagged medoids of the extract result ``path`` among ``samples`` (read from ``spec``), and
    their ids. Refused when the result was made from other generations (see
    :func:`~diffaudit.attacks.extraction.inputs.check_extract_samples`), since ids such as ``p0-i17``
    exist in every sample store; a result that records no samples identity gets a warning on stderr."""
    r = read_json(path)
    if r.get("command") != "extract":
        raise DiffauditError(f"--from-extract {path}: not a result.json of `diffaudit extract`")
    warning = check_extract_samples(r, samples_identity(spec, samples), path=path, samples=spec,
                                    samples_recorded_as=canonical_path(spec))
    if warning:
        warning_line("verify", warning)
    medoids = [p["medoid"] for p in r.get("prompts", []) if p.get("flagged") and p.get("medoid") is not None]
    medoids += [g["medoid"] for g in r.get("groups", [])]
    index = samples.index_of()
    missing = [m for m in medoids if m not in index]
    if missing:
        raise DiffauditError(f"--from-extract {path}: {len(missing)} medoid(s) are not in --samples (first: {missing[0]}); "
                             "pass the samples the extract ran on")
    return samples.subset([index[m] for m in medoids]), medoids


def _in_all_samples(extracted: list, medoids: list[str] | None, samples: ImageDataset) -> list[dict[str, Any]]:
    """``extracted`` as records, each ``sample_index`` the generation's position in --samples (with
    --from-extract, verification saw only the medoids; their positions there are not the user's)."""
    records = [e.to_dict() for e in extracted]
    if medoids is not None:
        index = samples.index_of()
        for rec in records:
            rec["sample_index"] = index[rec["sample"]]
    return records


def _load_train_map(path: str, train: ImageDataset | NativeImages) -> dict[str, list[int]]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DiffauditError(f"--train-map {path}: expected a JSON object {{prompt: [training keys or indices]}}")
    index = train.index_of()
    out: dict[str, list[int]] = {}
    for prompt, refs in data.items():
        refs = refs if isinstance(refs, list) else [refs]
        ids = []
        for ref in refs:
            if isinstance(ref, int) and not isinstance(ref, bool):
                if not 0 <= ref < len(train):
                    raise DiffauditError(f"--train-map {path}: index {ref} of prompt {prompt!r} is outside --data (N = {len(train)})")
                ids.append(ref)
            elif isinstance(ref, str) and ref in index:
                ids.append(index[ref])
            else:
                raise DiffauditError(f"--train-map {path}: {ref!r} (prompt {prompt!r}) is not a key or index of --data")
        out[str(prompt)] = ids
    return out


def _map_to_prompts(prompt_map: dict[str, list[int]], prompts: Sequence[str]) -> dict[str, list[int]]:
    """``prompt_map`` keyed by the samples' own ``prompts``, for those it names: a key names a prompt when the
    two agree up to whitespace (a caption read from its .txt file keeps its newline; two keys of one form
    are one prompt)."""
    from diffaudit.defenses.prompts import normalise_caption

    by_form: dict[str, list[int]] = {}
    for key, ids in prompt_map.items():
        merged = by_form.setdefault(normalise_caption(key), [])
        merged += [i for i in ids if i not in merged]
    return {p: by_form[normalise_caption(p)] for p in dict.fromkeys(prompts) if normalise_caption(p) in by_form}


def _check_map_prompts(prompt_map: dict[str, list[int]], prompts: Sequence[str], path: str,
                       medoids: bool = False) -> None:
    """Refuse a --train-map that names none of the samples' ``prompts`` (:func:`_map_to_prompts`): it would
    check nothing, and "0 of 0 reproduce" read as no copy. Keys that name no prompt, and prompts without
    a key (their generations are not checked), are said; ``medoids``: the samples are the clique medoids
    of --from-extract, whose prompts are the flagged ones only."""
    from diffaudit.defenses.prompts import normalise_caption

    out = _map_to_prompts(prompt_map, prompts)
    sampled = list(dict.fromkeys(prompts))
    by_form = {normalise_caption(k) for k in prompt_map}
    if not out:
        raise DiffauditError(f"--train-map {path} names none of the {len(sampled):,} prompts of --samples (its first key "
                             f"{next(iter(prompt_map), '')!r}, their first prompt {sampled[0]!r}), so nothing would be "
                             "checked: its keys must be the prompts the generations were made with")
    unused = len(by_form - {normalise_caption(p) for p in out})
    if unused:
        which = ("prompts --from-extract flagged (only their clique medoids are verified)" if medoids else
                 "prompts of --samples")
        warning_line("verify", f"{unused:,} of the {len(by_form):,} prompts of --train-map {'is' if unused == 1 else 'are'} "
                     f"not among the {which} and {'is' if unused == 1 else 'are'} not checked")
    if len(out) < len(sampled):
        short = len(sampled) - len(out)
        warning_line("verify", f"{short:,} of the {len(sampled):,} {'flagged prompts' if medoids else 'prompts of --samples'} "
                     f"{'has' if short == 1 else 'have'} no entry in --train-map: {'its' if short == 1 else 'their'} "
                     "generations are not checked against their own training images")


def _run_verification(label: str, samples: ImageDataset, train: ImageDataset, vs: VerifySettings, out: Path, cache: str,
                      args, device, workers_device, recipes: tuple[ImagesRecipe, ImagesRecipe] | None = None
                      ) -> Verification:
    """Verify ``samples`` against ``train`` on ``device``; with ``--ray``, the neighbours are searched on
    the cluster first, by workers on ``workers_device`` that read what ``recipes`` (the samples', the
    training images') say."""
    n = neighborhood_size(len(train), vs.n_neighbors)
    if args.ray:
        knn_on_ray(args.ray, samples.images, *recipes, n, out / cache, device=workers_device, backend=args.backend,
                   label=f"verify: nearest {label} images", fault_name="verify-knn")
    chunks = []  # per chunk (nearest id, l2, ratio, extracted), each (q,): never the (Q, n) neighbour lists
    with Timer() as t, progress_bar(f"verify: nearest {label} images", len(samples), unit="img") as bar:
        for _, knn in iter_cached_knn(samples.images, train.images, n, out / cache, backend=args.backend, device=device,
                                      fault_name="verify-knn", progress=bar.advance):
            chunks.append((knn.indices[:, 0], *decide(knn, vs, len(train))))
    ids, l2, ratio, ext = (np.concatenate(col) for col in zip(*chunks))
    v = verify_decided(samples.keys, ids, l2, ratio, ext, train.images, train.keys, settings=vs, device=device)
    stage_line(f"verify: {counted(v.unique_extracted, f'unique {label} image')} "
               f"{'matched' if label == '--data' else 'extracted'} by "
               f"{v.n_extracting_samples:,} of {counted(len(samples), 'generation')} ({t.seconds:.1f} s)")
    return v


def _pool_counts(spec: str, v: Verification, samples: ImageDataset, train: ImageDataset, device) -> dict[str, Any]:
    """What each store of the pool ``spec`` extracted (:func:`by_member`): ``{"members": [{"samples", "n_samples",
    "n_extracting_samples", "unique_extracted" (alone), "first_credited"}]}``, the pooled count being verify's
    own ``unique_extracted``. Said in a line."""
    members = SamplePool.open(spec).members
    member = np.array([split_pooled_id(key)[0] for key in samples.keys], dtype=np.int64)
    rows = by_member(v, member, len(members), samples.keys, train.images, train.keys, device=device)
    alone = ", ".join(f"{r['unique_extracted']:,}" for r in rows)
    first = ", ".join(f"{r['first_credited']:,}" for r in rows)
    stage_line(f"verify: pooled over {len(members)} stores: each alone extracts {alone} unique images; first extracted "
               f"by each: {first}")
    return {"members": [{"samples": m, **r} for m, r in zip(members, rows)]}


def _queries_recipe(settings: dict[str, Any], all_samples: ImageDataset, medoids: list[str] | None) -> ImagesRecipe:
    """How ``--ray`` workers read the generations verified: ``--samples`` as the settings record it
    (absolute: the workers' nodes read it too), checked by the identity of all of it, then the
    ``--from-extract`` medoids picked."""
    index = all_samples.index_of() if medoids is not None else None
    return ImagesRecipe("generations", settings["samples"], samples_identity(settings["samples"], all_samples),
                        pick=None if medoids is None else tuple(index[m] for m in medoids))


def _recipes(args, settings: dict[str, Any], queries: ImagesRecipe | None, which: str, options: dict[str, Any],
             digest: str, pick=None) -> tuple[ImagesRecipe, ImagesRecipe] | None:
    """(``queries``, how ``--ray`` workers read the images verified against: the ``data`` or ``baseline``
    setting ``which``, loaded with ``options``, then ``pick``); None without ``--ray``."""
    if queries is None:
        return None
    return queries, data_recipe(settings[which], digest, options, canonical_path(getattr(args, "data_cache", None)), pick)


def _load_train(args, opts: dict[str, Any]) -> ImageDataset | None:
    """--data loaded (see :func:`~diffaudit.cli.common.load_data`), or None when its images differ in
    size and --train-map is given (then only that check runs, on :func:`_native_train`); without
    --train-map such data is the loader's error, which says how to resize it."""
    try:
        # verify compares pixels and maps --train-map keys: a training caption is never used, so one missing
        # leaves the captions out rather than the image (which --skip-bad would drop from the search)
        return load_data(args, args.data, need_captions=False, **opts)
    except ImagesDifferInSize:
        if not args.train_map:
            raise
        return None


def _native_train(args, opts: dict[str, Any], samples: ImageDataset) -> NativeImages:
    """--data read image by image at each image's own size (listed as the loader lists it). Without --mode,
    each image takes the generations' channels (what the loader does to a dataset mixing gray and colour)."""
    mode = opts["mode"] or ("L" if samples.images.shape[-1] == 1 else "RGB")
    return NativeImages(args.data, subset=opts["subset"], subset_seed=opts["subset_seed"], skip_bad=opts["skip_bad"],
                        cifar_root=opts["cifar_root"], mode=mode)


def _native_digest(train: NativeImages, prompt_map: dict[str, list[int]]) -> tuple[str, dict[str, list[int]]]:
    """What identifies mixed-size --data without decoding all of it: a digest of every listed key and of
    the mapped images' pixels (:meth:`NativeImages.digest`; the other images never enter the check).
    Returns it with ``prompt_map`` less the images found unreadable (with --skip-bad, recorded in
    ``train.skipped``)."""
    digest = train.digest(sorted({j for ids in prompt_map.values() for j in ids}))
    return digest, {p: [j for j in ids if j not in train.bad] for p, ids in prompt_map.items()}


def _upgrade_settings(old: dict[str, Any]) -> dict[str, Any]:
    """Settings of an earlier version read as today's: before --map-resize, --train-map windows were taken
    from the training image as stored (``none``); without --train-map the setting is not recorded. Before
    ``baseline_left_out``, no --baseline image was left out (a folder whose baseline shared images with --data
    is then other settings: its equal-size pick included them)."""
    if "map_resize" not in old:
        old = {**old, "map_resize": "none" if old.get("train_map") else None}
    if "baseline_left_out" not in old:
        old = {**old, "baseline_left_out": 0 if old.get("baseline") else None}
    if "delta" in old:  # recorded whether used or not
        old = {**old, "delta": _delta_used(old.get("rule"), old.get("train_map"), old["delta"])}
    return old


def _delta_used(rule: Any, train_map: Any, delta: float) -> float | None:
    """``--delta`` as recorded: by the l2 rule and the --train-map check, which take it; None under the
    ratio rule alone, whose results it does not change (so a resume that gives it is no other run)."""
    return delta if rule == "l2" or train_map else None


#: The options each rule reads: given under the other rule (and --delta without --train-map), they change nothing.
RULE_OPTIONS = {"l2": (("delta", "--delta"),), "ratio": (("alpha", "--alpha"), ("n_neighbors", "--n-neighbors"))}


def _say_unused_rule_options(args: argparse.Namespace, rule: str) -> None:
    """Warn of options given on the command line that the rule in use does not read (``--delta 0.05`` under the
    ratio rule): the run goes on as if they were not given, and its settings record none of them."""
    given = given_options(getattr(args, "_argv", []))
    unused = [flag for other, options in RULE_OPTIONS.items() if other != rule for dest, flag in options
              if dest in given and not (dest == "delta" and args.train_map)]
    if unused and speaking_as(NAME) == NAME:
        other = "ratio" if rule == "l2" else "l2"
        warning_line("verify", f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} for --rule {other}, and this "
                     f"run verifies by rule {rule}: {'it changes' if len(unused) == 1 else 'they change'} nothing here"
                     f"{'; pass --rule l2 to verify by (l2, delta)' if other == 'l2' else ''}")
    if "map_resize" in given and not args.train_map and speaking_as(NAME) == NAME:
        warning_line("verify", "--map-resize says how --train-map's images were cropped, and this run has no --train-map: "
                               "it changes nothing here")


def _names() -> tuple[str, str]:
    """How verify's messages name its --data and its --baseline: by flag, or in an audit's verify stage
    (the audit has no --baseline) by what the audit gives it."""
    if speaking_as(NAME) == NAME:
        return "--data", "--baseline"
    return "the training images", "the audit's never-seen images"


def _unseen_part(base: ImageDataset, train: ImageDataset, source: str) -> tuple[np.ndarray | None, list[dict[str, str]] | None]:
    """The positions of --baseline's images that --data does not hold pixel for pixel (None: all of them)
    and, for those it does, ``{"baseline_key", "train_key"}`` each. A baseline image the model was trained
    on is not "never seen": counted, it would raise the false-positive baseline and weaken the test of the
    extracted count against it. Refused when every baseline image is a training image."""
    shared = shared_images(base, train)
    if not shared:
        return None, None
    data, baseline = _names()
    if len(shared) == len(base):
        example = "--data cifar10 --baseline cifar10-test" if baseline == "--baseline" else "--heldout cifar10-test"
        raise DiffauditError(f"{baseline} {printable(source)}: every one of its {len(base):,} images is also in {data}, pixel "
                             f"for pixel; the baseline must be images the model never saw (e.g. {example})")
    left = {i for i, _ in shared}
    stage_line(f"verify: {len(shared):,} of the {len(base):,} images of {baseline} are also in {data}, pixel for pixel "
               "(e.g. " + ", ".join(printable(base.keys[i]) for i, _ in shared[:3]) + "): left out of the baseline")
    return (np.array([i for i in range(len(base)) if i not in left], dtype=np.int64),
            [{"baseline_key": base.keys[i], "train_key": train.keys[j]} for i, j in shared])


def _store_model(spec: str) -> str | None:
    """The model folder the sample store ``spec`` records it sampled, when that folder is still there, records
    its training set (``train_ids.json``) and holds the weights the store records (``model_digest``); None for
    any other input, or when that cannot be told."""
    from diffaudit.models.digest import model_digest
    from diffaudit.models.run_record import has_train_ids

    try:
        if not SampleStore.is_store(spec):
            return None
        sampler = SampleStore.open(spec).manifest.get("sampler")
    except DiffauditError:
        return None
    model = sampler.get("model") if isinstance(sampler, dict) else None
    if not isinstance(model, str) or not Path(model).is_dir() or not has_train_ids(model):
        return None
    recorded = sampler.get("model_digest")
    if isinstance(recorded, str) and model_digest(model, members=False) != recorded:
        return None  # the folder holds other weights now: its training set need not be the one that generated
    return model


def _data_vs_model(spec: str, train: ImageDataset | NativeImages, data_spec: str) -> dict[str, Any] | None:
    """How --data compares with the training set of the model that made --samples (a sample store whose model
    records its training keys, ``train_ids.json``): ``n_data`` examples, ``n_trained`` the model trained on,
    ``n_not_trained`` of --data's it never trained on (yet counted as training images), ``n_trained_missing``
    of its training examples --data lacks. Each mismatch is said in a warning line; None when the model or
    its training set is not known (and in an audit, which gives verify the model's own training set).

    A key is an example's name, not its pixels: two datasets may name other images alike (CIFAR-10's train and
    test splits both hold a ``dog_0865``). Where --data holds every training key, the pixels under them are
    checked against the digest the run recorded (:func:`~diffaudit.models.run_record.check_trained_on`: another
    --center-crop or --image-size is said); where it holds only some and the run was trained on another
    built-in dataset than --data (``data_spec``, as given: ``cifar10`` against ``cifar10-test``), the shared names
    are not taken for its training images. (Other specs may name the same images, as a view of the data does.)"""
    from diffaudit.data.builtin import BUILTIN_NAMES
    from diffaudit.models.run_files import trained_data, trained_data_text
    from diffaudit.models.run_record import check_trained_on, read_train_keys

    if speaking_as(NAME) != NAME:
        return None
    # a pool's generations were made by each of its stores' models, whose training sets together are its own
    models = [_store_model(m) for m in SamplePool.open(spec).members] if SamplePool.is_pool(spec) else [_store_model(spec)]
    if None in models:
        return None
    try:
        trained_by = {one: set(read_train_keys(one)) for one in models}
    except DiffauditError:
        return None
    trained = set().union(*trained_by.values())
    model = models[0]
    advice = ("give the --data and data options it trained on" + (trained_data_text(model) or " (e.g. the same --subset)")
              if len(trained_by) == 1 else "give a --data that holds every pooled model's training images (the dataset "
              "their training sets were drawn from, with the data options they share)")
    made = (f"the model that made --samples ({model})" if len(trained_by) == 1 else
            f"the {len(trained_by)} models that made the pool's generations (the first {model})")
    keys = set(train.keys)
    n_in = len(trained & keys)
    recorded = {one: trained_data(one) for one in trained_by}
    other_split = {r[0] for r in recorded.values() if r is not None and r[0] != data_spec}
    if 0 < n_in < len(trained) and other_split and {*other_split, data_spec} <= set(BUILTIN_NAMES):
        warning_line("verify", f"{n_in:,} example{'s' * (n_in != 1)} of --data {data_spec} {'are' if n_in != 1 else 'is'} "
                     f"named like images {made} trained on, but {'it' if len(trained_by) == 1 else 'they'} "
                     f"{'was' if len(trained_by) == 1 else 'were'} trained on --data {', '.join(sorted(other_split))}: two "
                     "datasets may name other images alike (CIFAR-10's train and test splits do), so they are not taken "
                     "for training images")
        n_in = 0
    elif isinstance(train, ImageDataset):
        for one, its_keys in trained_by.items():
            if not its_keys <= keys:
                continue
            try:
                check_trained_on(one, train, what="the model that made --samples" if len(trained_by) == 1 else
                                 f"the pool's model {one}")
            except DiffauditError as exc:  # the names are there, the images under them are not the ones it trained on
                warning_line("verify", f"{exc} (--data holds by name every example it trained on, but not as it "
                             "trained on them)")
    counts = {"n_data": len(train), "n_trained": len(trained), "n_not_trained": len(train) - n_in,
              "n_trained_missing": len(trained) - n_in}
    if counts["n_not_trained"]:
        warning_line("verify", f"{counts['n_not_trained']:,} of the {len(train):,} examples of --data were never "
                     f"trained on by {made}, which trained on {len(trained):,}; they are counted as \"training images\" "
                     f"all the same, so a match to one of them is not memorization: {advice}")
    if counts["n_trained_missing"] * 2 > len(trained):
        warning_line("verify", f"--data lacks {counts['n_trained_missing']:,} of the {len(trained):,} examples "
                     f"{made} trained on, so generations that copy them are not found: {advice}")
    return counts


def _auto_rule(args, samples: ImageDataset) -> tuple[str, str]:
    """``--rule auto`` as :func:`auto_rule` chooses it, except on a resume, which keeps the rule the
    folder recorded (an earlier version chose l2 for a class-conditional model's generations: its
    finished work stays as it was, never refused as "other settings" for a flag the user did not
    change). The reason is :func:`auto_rule`'s whenever the rules agree, so that a resumed run writes
    the result an uninterrupted one does."""
    from diffaudit.core.outdir import recorded_settings

    chosen = auto_rule(sampler_kind(args.samples), samples.captions)
    recorded = None if args.fresh else (recorded_settings(args.out, NAME) or {}).get("rule")
    if recorded in RULES and recorded != chosen[0]:
        return recorded, "the rule this --out recorded when it was made"
    return chosen


def _check_shapes(samples: ImageDataset, other: ImageDataset, what: str) -> None:
    if samples.image_shape != other.image_shape:
        raise DiffauditError(
            f"--samples images are {samples.image_shape} (H, W, C) but {what} images are {other.image_shape}; "
            "load them at the same size (--image-size, --mode)"
        )


def run(args: argparse.Namespace) -> int:
    if args.ray:  # a cluster that cannot be reached is an error before anything is read or written
        check_reachable_by_workers(args.samples, "--samples")
        connect(args.ray)
    args.from_extract = file_in_folder(args.from_extract, "result.json")  # the folder of `diffaudit extract` too
    # read and checked before any search (a wrong file would otherwise be refused after all of it)
    fid = fid_from_file(args.fid_features) if args.fid_features else "not computed"
    rule = args.rule
    vs_probe = VerifySettings("l2" if rule == "auto" else rule, args.delta, args.alpha, args.n_neighbors,
                              args.eidetic_delta, args.dup_delta).validate()
    device, workers_device = run_devices(args, "verify")
    opts = data_options(args)
    train = _load_train(args, opts)
    samples = read_generations(args.samples)
    n_samples_total, all_samples = len(samples), samples
    medoids = None
    if args.from_extract:
        samples, medoids = _select_from_extract(args.from_extract, samples, args.samples)
    rule_reason = "--rule " + rule
    if rule == "auto":
        rule, why = _auto_rule(args, samples)
        rule_reason = f"--rule auto: {why}"
    _say_unused_rule_options(args, rule)
    vs = VerifySettings(rule, vs_probe.delta, vs_probe.alpha, vs_probe.n_neighbors, vs_probe.eidetic_delta, vs_probe.dup_delta)
    native = train is None  # --data's images differ in size: only the --train-map check runs
    note = None
    if native:
        train = _native_train(args, opts, samples)
        note = ("--data's images differ in size: only the --train-map crop-alignment check was run, on the mapped "
                "training images read at their own size; the nearest-neighbour verification against the whole "
                "training set" + (" and --baseline" if args.baseline else "") + " cannot run on it")
        stage_line(f"verify: {note}")
    data_vs_model = _data_vs_model(args.samples, train, args.data)
    prompt_map = _load_train_map(args.train_map, train) if args.train_map else None
    if prompt_map is not None and samples.captions is None:
        raise DiffauditError("--train-map needs samples with prompts; these samples carry none")
    if prompt_map is not None and len(samples):
        _check_map_prompts(prompt_map, samples.captions, args.train_map, medoids=medoids is not None)
    if len(samples) and prompt_map is None:
        _check_shapes(samples, train, "--data")
    # the whole-set nearest-neighbour verification (and --baseline) needs --data at the samples' size
    whole_set = not native and (prompt_map is None or samples.image_shape == train.image_shape)
    base = load_data(args, args.baseline, need_captions=False, **dict(opts, subset=None)) if args.baseline and not native else None
    if base is not None and len(samples):  # before the search over --data, which a refusal after it would waste
        _check_shapes(samples, base, "--baseline")
    unseen, left_out = _unseen_part(base, train, args.baseline) if base is not None else (None, None)
    if native:
        data_digest, prompt_map = _native_digest(train, prompt_map)
    else:
        data_digest = dataset_digest(train)
    if len(samples):  # a degenerate ratio rule is refused before --out records anything
        if whole_set:
            vs.neighbourhood(len(train))
        if base is not None:
            n_base = len(base) if unseen is None else len(unseen)  # less any image also in --data
            vs.neighbourhood(min(n_base, len(train)), why=f"--baseline {printable(args.baseline)} holds "
                             f"{counted(n_base, 'image')} not in --data" if n_base <= len(train) else None)
    settings = {
        "samples": str(args.samples), "samples_identity": samples_identity(args.samples, samples),
        "data": str(args.data), "data_options": opts, "rule": rule, "delta": _delta_used(rule, args.train_map, vs.delta),
        "alpha": vs.alpha, "n_neighbors": vs.n_neighbors, "eidetic_delta": vs.eidetic_delta, "dup_delta": vs.dup_delta,
        "from_extract": args.from_extract, "baseline": args.baseline, "train_map": args.train_map,
        "map_resize": args.map_resize if args.train_map else None,
        "fid_features": args.fid_features,
        "fid_features_identity": file_identity(args.fid_features) if args.fid_features else None,
        # what the path names alone would not tell apart on a resume: the medoids an extract result
        # selected (it may be rewritten in place), and the seed of the equal-size baseline pick
        "from_extract_samples": text_digest("\0".join(samples.keys)) if args.from_extract else None,
        "baseline_seed": args.seed if args.baseline else None,
        # and the contents behind --data, --baseline and --train-map (rewritten in place, they are other data)
        "data_digest": data_digest,
        "baseline_digest": dataset_digest(base) if base is not None else None,
        # --baseline's images that --data holds pixel for pixel are left out of it (the pick changes with them)
        "baseline_left_out": len(left_out) if left_out is not None else (0 if base is not None else None),
        "train_map_digest": text_digest(json.dumps(prompt_map, sort_keys=True)) if prompt_map is not None else None,
    }
    settings = canonical_settings(settings, PATH_SETTINGS)
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh,
                                   upgrade=upgrading_paths(PATH_SETTINGS, then=_upgrade_settings))
    if emit_finished(args, out, resumed, lambda r: _summary(r, out)):
        return 0
    queries = _queries_recipe(settings, all_samples, medoids) if args.ray and len(samples) else None
    fields: dict[str, Any] = {"n_samples": len(samples), "n_samples_total": n_samples_total, "n_train": len(train), "rule": rule,
                              "rule_reason": rule_reason,
                              "n_neighbors": neighborhood_size(len(train), vs.n_neighbors)}
    if medoids is not None:
        fields["verified_medoids"] = medoids
    if data_vs_model is not None:  # --data against the training set of the model that made --samples
        fields["data_vs_model"] = data_vs_model
    if sampler_classes(str(args.samples)):  # its prompts are class indices: the report calls them classes, by name
        fields["prompt_kind"] = "class"
        if getattr(train, "class_names", None):
            fields["class_names"] = [str(c) for c in train.class_names]
    if len(samples) == 0:  # --from-extract of a result that flagged nothing: said, and the report says not measured
        fields.update(extracted=[], unique_extracted=0, n_extracting_samples=0)
        if medoids is not None:
            warning_line("verify", f"{args.from_extract} flags no clique among its {n_samples_total:,} generations: "
                         "no generation is verified, so whether the model emits training images is not measured (extract's "
                         "own warnings say why: e.g. fewer generations per prompt than --min-clique)")
    elif whole_set:
        from diffaudit.report.view_misc import untrained_matches  # here: it imports matplotlib's plots

        # --data holding images the model never trained on: its matches are not all training images extracted
        v = _run_verification("--data" if untrained_matches(data_vs_model) else "training", samples, train, vs, out,
                              "knn", args, device, workers_device,
                              _recipes(args, settings, queries, "data", dict(opts, need_captions=False), data_digest))
        save_npz_atomic(out / "per_sample.npz", sample=np.array(samples.keys, dtype=str), train_id=v.train_ids,
                        l2=v.l2, ratio=v.ratio, extracted=v.is_extracted)
        fields.update(extracted=_in_all_samples(v.extracted, medoids, all_samples), unique_extracted=v.unique_extracted,
                      n_extracting_samples=v.n_extracting_samples, per_sample_file="per_sample.npz")
        if SamplePool.is_pool(args.samples):
            fields["pool"] = _pool_counts(args.samples, v, samples, train, device)
    elif native:
        fields.update(extracted=None, unique_extracted=None, n_extracting_samples=None, note=note, data_mixed_sizes=True)
        if train.skipped:
            fields["train_skipped"] = [list(x) for x in train.skipped]
    else:
        fields.update(extracted=None, unique_extracted=None, n_extracting_samples=None,
                      note="samples and --data differ in size: only the --train-map crop-alignment check was run")
    fields["baseline_unique_extracted"] = None
    if base is not None:
        pick = unseen  # positions in --baseline as loaded: its unseen images, then an equal-size pick of them
        kept = np.arange(len(base)) if unseen is None else unseen
        if len(kept) > len(train):
            pick = kept[np.sort(numpy_rng(derive_seed(args.seed, "verify-baseline")).choice(len(kept), len(train), replace=False))]
        if pick is not None:
            base = base.subset(pick)
        if len(base) < len(train):  # the report weighs the two counts as given, with Fisher's exact test
            stage_line(f"verify: the baseline ({_names()[1]}) is {len(base):,} images never seen against {len(train):,} training "
                       "images: the two counts are of unequal sets (an equal-size baseline compares them directly)")
        fields["baseline"] = {"source": str(args.baseline), "n_images": len(base), "equal_size": len(base) == len(train),
                              "n_left_out": len(left_out or []),  # also in --data, pixel for pixel
                              "left_out": (left_out or [])[:LEFT_OUT_LISTED], "n_extracting_samples": 0, "extracted": []}
        fields["baseline_unique_extracted"] = 0
        if len(samples):
            vb = _run_verification("baseline", samples, base, vs, out, "knn-baseline", args, device, workers_device,
                                   _recipes(args, settings, queries, "baseline", dict(opts, subset=None, need_captions=False),
                                            settings["baseline_digest"], pick))
            fields["baseline_unique_extracted"] = vb.unique_extracted
            fields["baseline"].update(n_extracting_samples=vb.n_extracting_samples,
                                      extracted=_in_all_samples(vb.extracted, medoids, all_samples))
    if prompt_map is not None:
        with Timer() as t:
            checks = check_prompt_map(samples.images, samples.keys, samples.captions,
                                      _map_to_prompts(prompt_map, samples.captions),
                                      train if native else train.images, train.keys, delta=vs.delta,
                                      resize=args.map_resize)
        fields["prompt_checks"] = checks
        fields["prompt_checks_extracted"] = sum(c["extracted"] for c in checks)
        stage_line(f"verify: {fields['prompt_checks_extracted']:,} of {len(checks):,} mapped generations within delta of "
                   f"their own training image ({t.seconds:.1f} s)")
    fields["fid"] = fid
    fields["score_direction"] = "l2 and ratio: smaller = closer to the training image (extracted at l2 <= delta or ratio <= 1)"
    fields["runtime"] = {**devices_record(args, device, workers_device), "backend": args.backend}
    result = write_result(out / "result.json", NAME, settings, {"seed": args.seed}, **fields)
    emit(args, result, _summary(result, out))
    return 0


def _summary(r: dict[str, Any], out: Path) -> str:
    base = "" if r.get("baseline_unique_extracted") is None else f" (baseline: {r['baseline_unique_extracted']})"
    from diffaudit.report.view_misc import extraction_words

    ue = r.get("unique_extracted")
    reason = f" ({r['rule_reason']})" if r.get("rule_reason") else ""
    if r.get("n_samples") == 0 and r.get("verified_medoids") == []:
        return f"verify: no generation verified (the extract result flagged none): nothing measured -> {out / 'result.json'}"
    what, caveat = extraction_words(ue, r.get("data_vs_model"))
    if ue is None and r.get("prompt_checks_extracted") is not None:  # --data could not be searched whole
        from diffaudit.report.summary import prompt_check_counts

        c = prompt_check_counts(r)
        n, u = c["prompt_checks_n"], c["prompt_checks_unique_extracted"]
        distinct = "" if u is None else f" ({counted(u, 'distinct training image')})"
        return (f"verify: {c['prompt_checks_extracted']:,}{'' if n is None else f' of {n:,}'} mapped generations "
                f"reproduce their own prompt's training image{distinct}, by the --train-map check alone (--data was not "
                f"searched whole){caveat} -> {out / 'result.json'}")
    return (f"verify: {'n/a' if ue is None else f'{ue:,}'} unique {what} from {counted(r['n_samples'], 'generation')} "
            f"by rule {r['rule']}{reason}{base}{caveat} -> {out / 'result.json'}")
