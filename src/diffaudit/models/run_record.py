"""What a training run directory records about its training set, checked against a ``--data``.

:func:`diffaudit.models.training.train` writes ``train_ids.json`` (the training examples' keys, in
dataset order), in ``settings.json`` ``training_pixels_digest`` (the
:func:`~diffaudit.data.digest.dataset_digest` of those examples: pixels, keys, labels, captions), and
in ``result.json`` ``training_digests`` (:func:`training_digests`: pixels and keys apart from labels).
An attack labels examples IN or OUT by key, so a ``--data`` whose keys match but whose pixels do not
(``npz:<row>`` of another file, another ``--image-size``) would give member labels to images the model
never saw and report a wrong AUC without any error. :func:`check_trained_on` refuses that, comparing
labels only for a class-conditional model (an unconditional one never saw them) and never captions
(a pixel model does not read them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import read_json
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.digest import dataset_digest
from diffaudit.models.denoiser import check_image_shape, made_by, not_a_model_reason, read_unet_config
from diffaudit.models.digest import TRAIN_IDS
from diffaudit.models.run_files import trained_data, trained_data_text


def train_ids_howto(run_dir: str | Path) -> str:
    """How to give a model trained outside diffaudit its training set: the ``train_ids.json`` to write."""
    return (f"`diffaudit train` and `shadows` write it; for a model trained elsewhere, write {Path(run_dir) / TRAIN_IDS} "
            "yourself as {\"keys\": [...]}: the ids of the --data examples it trained on (an image folder's are paths "
            "inside it, `cat/0001.png`; an .npz's `npz:ROW`; WebDataset shards' each sample's name without its extension)")


def has_train_ids(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` records its training set (a diffaudit run directory)."""
    return (Path(run_dir) / TRAIN_IDS).is_file()


def run_of_unet(path: str | Path) -> Path | None:
    """The run whose ``unet/`` folder ``path`` is, when that run records its training set (whoever gave the
    UNet folder meant the run); None otherwise."""
    root = Path(path)
    return root.parent if root.name == "unet" and has_train_ids(root.parent) else None


def no_train_ids_error(run_dir: str | Path, what: str = "--model", hint: str = "") -> DiffauditError:
    """The error for a ``run_dir`` without ``train_ids.json``, said as what it is: a folder that does not
    exist, one that holds no model (another command's folder, an unfinished run: why, and what to pass or
    re-run), or a model that does not record its training set (how to write it; ``hint`` follows)."""
    root = Path(run_dir)
    if not root.exists():
        return DiffauditError(f"{what} {run_dir} does not exist")
    reason = not_a_model_reason(root)
    if reason is not None:
        return DiffauditError(f"{what} {run_dir}: {reason}")
    run = run_of_unet(root)
    if run is not None:
        return DiffauditError(f"{what} {run_dir} is the UNet folder of the run {run}, which records its training set: "
                              f"pass {run}")
    return DiffauditError(f"{what} {run_dir}: no {TRAIN_IDS}, so its training set is unknown; {train_ids_howto(run_dir)}{hint}")


def read_train_keys(run_dir: str | Path, what: str = "--model") -> list[str]:
    """The keys of the examples ``run_dir`` trained on, in the order training recorded them.

    Raises :class:`DiffauditError` (naming the run as ``what``) when ``train_ids.json`` is missing
    (:func:`no_train_ids_error`) or holds no ``keys`` list.
    """
    path = Path(run_dir) / TRAIN_IDS
    if not path.is_file():
        raise no_train_ids_error(run_dir, what)
    record = read_json(path)
    keys = record.get("keys") if isinstance(record, dict) else None
    if not isinstance(keys, list):
        raise DiffauditError(f"{path}: no `keys` list; {train_ids_howto(run_dir)}")
    keys = [str(k) for k in keys]
    if not keys:  # refused later in the words of a view file the audit writes
        raise DiffauditError(f"{path}: its `keys` list is empty; {train_ids_howto(run_dir)}")
    counts = Counter(keys)
    twice = next((k for k in keys if counts[k] > 1), None)
    if twice is not None:  # later refused as "keys are not unique" of the data, after the sampling
        raise DiffauditError(f"{path}: the key {twice!r} is listed {counts[twice]} times; list each training "
                             "example once (an example trained on several times too)")
    return keys


def training_digests(dataset: ImageDataset, rows: Sequence[int]) -> dict[str, str | None]:
    """Digests of the training examples ``rows`` of ``dataset``, in that order (16 hex each).

    ``images``: :func:`~diffaudit.data.digest.dataset_digest` of the pixels and keys alone;
    ``labels``: SHA-256 of the labels (int64), None without labels. Recorded in a finished run's
    ``result.json``; :func:`check_trained_on` compares them.
    """
    bare = dataclasses.replace(dataset, labels=None, captions=None)
    labels = None
    if dataset.labels is not None:
        labels = hashlib.sha256(np.asarray(dataset.labels, dtype=np.int64)[np.asarray(rows, dtype=np.int64)].tobytes()).hexdigest()[:16]
    return {"images": dataset_digest(bare, rows), "labels": labels}


def _recorded(run: Path) -> tuple[dict | None, str | None]:
    """(``training_digests`` of result.json, ``training_pixels_digest`` of settings.json), None where absent
    (a diffusers folder, or a run made before they were recorded)."""
    digests = None
    if (run / "result.json").is_file():
        value = read_json(run / "result.json").get("training_digests")
        digests = value if isinstance(value, dict) and isinstance(value.get("images"), str) else None
    combined = None
    if (run / "settings.json").is_file():
        settings = read_json(run / "settings.json").get("settings")
        value = settings.get("training_pixels_digest") if isinstance(settings, dict) else None
        combined = value if isinstance(value, str) else None
    return digests, combined


def _deduped_npz_text(run: Path, given: str) -> str:
    """When ``run`` trained on an .npz that ``dedup --write-deduped`` wrote (``images`` and the original
    ``keys``) and ``given`` (the --data source) is other data: how to audit it against the data it came
    from; else ""."""
    data = trained_data(run)
    if data is None or not str(data[0]).endswith(".npz") or not Path(data[0]).is_file():
        return ""
    if Path(given).is_file() and Path(given).resolve() == Path(data[0]).resolve():
        return ""
    try:
        with np.load(data[0], allow_pickle=False) as z:
            deduped = {"images", "keys"} <= set(z.files)
    except (OSError, ValueError):
        return ""
    if not deduped:
        return ""
    return (f". {data[0]} is a deduplicated .npz (`dedup --write-deduped`): its examples are named npz:<row>, not by "
            "their keys in the data it was cut from, so the model can be audited only with --data set to it. To audit "
            "against the original data, train on that data with `train --dedup KEEP.json` (the dedup folder's "
            "keep.json), which keeps the original keys and records the near-duplicates it dropped")


def _unknown_key_note(unknown: list[str], dataset: ImageDataset) -> str:
    """Why training keys are not among ``dataset``'s where that can be told: one names an image ``--skip-bad``
    skipped as bad (an id is its path inside the folder; the skipped are named by path), or the keys are
    absolute paths to images whose ids here are their paths inside the folder; "" otherwise."""
    skipped = {name.replace(os.sep, "/"): reason for name, reason in dataset.skipped}
    for key in unknown:
        hit = next((name for name in skipped if name == key or name.endswith("/" + key)), None)
        if hit is not None:
            return f"; {key!r} is an image --skip-bad skipped as bad ({hit}: {skipped[hit]})"
    index = dataset.index_of()
    inside = [k for k in index if unknown[0].replace(os.sep, "/").endswith("/" + k)]
    if os.path.isabs(unknown[0]) and inside:
        return (f"; its keys are absolute paths, where an image's id is its path inside the folder ({unknown[0]!r} is "
                f"{max(inside, key=len)!r}): write them so")
    return ""


def check_trained_on(run_dir: str | Path, dataset: ImageDataset, what: str = "--model", *,
                     allow_missing: bool = False, keys: list[str] | None = None) -> list[int]:
    """Refuse a ``dataset`` that does not hold the very examples ``run_dir`` trained on.

    Every training key must be in ``dataset`` (unless ``allow_missing``: then only the keys present
    are returned and nothing more can be compared; ``keys``: the run's training keys when the caller
    has read them already); the pixels under those keys must be the ones the
    run recorded, and so must the labels when the model is class-conditional. Runs that record only
    the older combined digest (pixels, keys, labels and captions) are compared on it.

    Returns:
        The dataset indices of the training examples found, in the run's order.

    Raises:
        DiffauditError naming the first unknown key, or what differs with both digests.
    """
    run = Path(run_dir)
    keys = read_train_keys(run, what) if keys is None else keys
    index = dataset.index_of()
    unknown = [k for k in keys if k not in index]
    rows = [index[k] for k in keys if k in index]
    if unknown:
        if allow_missing:
            return rows
        maker = made_by(run)
        canaries = [k for k in unknown if k.startswith("canary/")]  # as diffaudit.defenses.canaries names them
        if maker is not None and maker[0] == "canaries" and canaries:
            raise DiffauditError(f"{what} {run} is the model of the canaries run {maker[1]}: {len(canaries):,} of the "
                                 f"{len(keys):,} examples it trained on are the canaries that run inserted (first: "
                                 f"{canaries[0]!r}), which no --data holds, so it is measured by that run itself: "
                                 f"`diffaudit report {maker[1]}` shows its canaries' exposure and extraction")
        stem = unknown[0].rsplit(".", 1)[0]
        named = (f"; its keys carry a file extension where {dataset.source}'s have none ({stem!r} is one of them): "
                 "write them without it" if "." in unknown[0] and stem in index else "")
        named += _unknown_key_note(unknown, dataset)
        raise DiffauditError(f"{what} {run}: {len(unknown):,} of the {len(keys):,} examples it trained on are not among "
                             f"the {len(dataset):,} examples of {dataset.source} as loaded (first: {unknown[0]!r}){named}; "
                             f"give the --data it was trained on, with the same options (a --subset may leave them out)"
                             f"{trained_data_text(run)}{_deduped_npz_text(run, dataset.source)}")
    if not (run / "model_index.json").exists():  # a pipeline's UNet (a latent model) takes latents, not images
        check_image_shape(read_unet_config(run, flag=what), dataset.image_shape, what=f"{what} {run}")
    advice = "give the --data it was trained on, with the same --image-size, --mode and other data options" + trained_data_text(run)
    digests, combined = _recorded(run)
    if digests is not None:
        here = training_digests(dataset, rows)
        if here["images"] != digests["images"]:
            raise DiffauditError(f"{what} {run} was trained on other pixels than --data {dataset.source} holds under the "
                                 f"same keys (training-set digest {digests['images']}, here {here['images']}): {advice}")
        conditional = bool(read_unet_config(run).get("num_class_embeds"))
        if conditional and here["labels"] != digests.get("labels"):
            raise DiffauditError(f"{what} {run} is class-conditional and was trained with other labels than --data "
                                 f"{dataset.source} gives the same images: {advice}")
    elif combined is not None:
        here = dataset_digest(dataset, rows)
        if here != combined:
            raise DiffauditError(f"{what} {run} was trained on other pixels, labels or captions than --data {dataset.source} "
                                 f"holds under the same keys (training-set digest {combined}, here {here}): {advice}")
    return rows
