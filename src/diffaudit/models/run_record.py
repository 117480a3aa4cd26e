"""What a training run directory records about its training set, checked against a ``--data``.

:func:`diffaudit.models.training.train` writes ``train_ids.json`` (the training examples' keys, in
dataset order) and, in ``settings.json``, ``training_pixels_digest``: the
:func:`~diffaudit.data.digest.dataset_digest` of those examples (pixels, keys, labels, captions).
An attack labels examples IN or OUT by key, so a ``--data`` whose keys match but whose pixels do not
(``npz:<row>`` of another file, another ``--image-size``) would give member labels to images the model
never saw and report a wrong AUC without any error. :func:`check_trained_on` refuses that.
"""

from __future__ import annotations

from pathlib import Path

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import read_json
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.digest import dataset_digest

TRAIN_IDS = "train_ids.json"


def has_train_ids(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` records its training set (a diffaudit run directory)."""
    return (Path(run_dir) / TRAIN_IDS).is_file()


def read_train_keys(run_dir: str | Path, what: str = "--model") -> list[str]:
    """The keys of the examples ``run_dir`` trained on, in the order training recorded them.

    Raises :class:`DiffauditError` (naming the run as ``what``) when ``train_ids.json`` is missing
    or holds no ``keys`` list.
    """
    path = Path(run_dir) / TRAIN_IDS
    if not path.is_file():
        raise DiffauditError(f"{what} {run_dir}: no {TRAIN_IDS}, so its training set is unknown "
                             "(train it with `diffaudit train` or `diffaudit shadows`)")
    keys = read_json(path).get("keys")
    if not isinstance(keys, list):
        raise DiffauditError(f"{path}: no `keys` list")
    return [str(k) for k in keys]


def recorded_pixels_digest(run_dir: str | Path) -> str | None:
    """``training_pixels_digest`` from the run's ``settings.json``; None where it records none
    (a diffusers folder, or a run made before the digest was recorded)."""
    path = Path(run_dir) / "settings.json"
    if not path.is_file():
        return None
    settings = read_json(path).get("settings")
    value = settings.get("training_pixels_digest") if isinstance(settings, dict) else None
    return value if isinstance(value, str) else None


def check_trained_on(run_dir: str | Path, dataset: ImageDataset, what: str = "--model") -> list[int]:
    """Refuse a ``dataset`` that does not hold the very examples ``run_dir`` trained on.

    Every training key must be in ``dataset``; where the run recorded ``training_pixels_digest``,
    the digest of those examples in ``dataset`` (same keys, same order) must equal it, so the pixels,
    labels and captions are the ones the model saw.

    Returns:
        The dataset indices of the training examples, in the run's order.

    Raises:
        DiffauditError naming the first unknown key, or the two digests.
    """
    keys = read_train_keys(run_dir, what)
    index = dataset.index_of()
    unknown = [k for k in keys if k not in index]
    if unknown:
        raise DiffauditError(f"{what} {run_dir} trained on {len(unknown)} examples that are not in {dataset.source} "
                             f"(first: {unknown[0]!r}); give the --data it was trained on, with the same options")
    rows = [index[k] for k in keys]
    recorded = recorded_pixels_digest(run_dir)
    if recorded is not None:
        here = dataset_digest(dataset, rows)
        if here != recorded:
            raise DiffauditError(
                f"{what} {run_dir} was trained on other pixels than --data {dataset.source} holds under the same keys "
                f"(training-set digest {recorded}, here {here}): give the --data it was trained on, with the same "
                "--image-size, --mode and other data options"
            )
    return rows
