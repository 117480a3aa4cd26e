"""What a training run directory records beside its weights, read without loading a model (no
diffusers import: the report reads these too).

``dropped_duplicates.json`` (written by ``diffaudit train --dedup``): the keys of the near-duplicates
the run's keep list dropped whose kept near-duplicate the run trained on; ``settings.json``'s ``data``
record: the ``--data`` and options the run was trained on; ``checkpoints/step-N/``: where an unfinished
run resumes from; ``state/``: the state a finished run ended in, kept for ``train --extend``.
"""

from __future__ import annotations

from pathlib import Path

from diffaudit.core.io import read_json
from diffaudit.data.options import data_flags

#: Written by ``diffaudit train --dedup``: the near-duplicates the run holds copies of but never saw.
DROPPED_DUPLICATES = "dropped_duplicates.json"
#: A finished run's final training state (weights, EMA, optimizer, loss log), kept for ``train --extend``.
STATE_DIR = "state"


def checkpoint_dirs(run: Path) -> list[Path]:
    """The complete checkpoints (``checkpoints/step-N/`` with its ``state.json``) of a run, oldest first."""
    d = run / "checkpoints"
    return sorted(p for p in d.glob("step-*") if (p / "state.json").exists()) if d.exists() else []


def is_model_from_elsewhere(path: str | Path) -> bool:
    """Whether ``path`` is a model folder diffaudit did not train (a diffusers UNet or pipeline folder, e.g.
    one an audit links as its ``model-00``): a UNet config and no ``settings.json``, the record every
    diffaudit run keeps. Such a folder is complete as it is; a diffaudit run is finished only once its
    ``result.json`` is written."""
    root = Path(path)
    has_unet = (root / "unet" / "config.json").is_file() or (root / "config.json").is_file()
    return has_unet and not (root / "settings.json").is_file()


def read_dropped_duplicates(run_dir: str | Path) -> list[str] | None:
    """The keys a deduplicated run left out as near-duplicates of the examples it kept ([] for a run
    trained without ``--dedup``; None when it was deduplicated but the record is unreadable).

    Read from ``dropped_duplicates.json``; a run made before that file existed is read through the
    keep list its settings name (``removed_keys``), when that file is still where it was.
    """
    run = Path(run_dir)
    if (run / DROPPED_DUPLICATES).is_file():
        return _key_list(run / DROPPED_DUPLICATES, "keys")
    settings = _json_field(run / "settings.json", "settings") if (run / "settings.json").is_file() else None
    keep_list = settings.get("data", {}).get("dedup") if isinstance(settings, dict) and isinstance(settings.get("data"), dict) else None
    if not keep_list:
        return []
    return _key_list(Path(keep_list), "removed_keys") if Path(keep_list).is_file() else None


def trained_data(run_dir: str | Path) -> tuple[str, dict] | None:
    """(``--data`` spec, loader options) the run's settings say it was trained on; None when they do not say
    (a diffusers folder, or data passed in memory)."""
    settings = _json_field(Path(run_dir) / "settings.json", "settings") if (Path(run_dir) / "settings.json").is_file() else None
    data = settings.get("data") if isinstance(settings, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("spec"), str):
        return None
    return data["spec"], data.get("options") if isinstance(data.get("options"), dict) else {}


def trained_data_text(run_dir: str | Path) -> str:
    """`` (it was trained on --data cifar10 --image-size 16 --subset 2000)`` from the run's settings, "" when
    they do not say (a diffusers folder, or data passed in memory)."""
    data = trained_data(run_dir)
    return "" if data is None else f" (it was trained on --data {data_flags(*data)})"


def _json_field(path: Path, name: str):
    """``path``'s JSON object's field ``name``; None where the file holds no object."""
    value = read_json(path)
    return value.get(name) if isinstance(value, dict) else None


def _key_list(path: Path, name: str) -> list[str] | None:
    keys = _json_field(path, name)
    return [str(k) for k in keys] if isinstance(keys, list) else None
