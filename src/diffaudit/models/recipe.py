"""How a run trained (its ``train_config.json``), compared between a model and the shadows LiRA reads it against.

LiRA (Carlini et al. 2022; 2023, Sec. 5) models the loss a target gives an example as drawn from the losses
of shadow models trained like it, IN or OUT. Shadows trained otherwise (fewer steps, another learning rate,
without the DP-SGD noise a target trained with) give distributions of other losses, and the likelihood
ratio is miscalibrated without any error. ``audit --model`` trains the shadows like its target; a
``mia --target`` of shadows trained apart is compared here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from diffaudit.core.io import read_json

#: The training options a recipe compares (``train_config.json`` keys), and the flag each is given by.
RECIPE_FLAGS = {"preset": "--preset", "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr",
                "warmup_steps": "--warmup-steps", "grad_clip": "--grad-clip", "ema_decay": "--ema-decay", "flip": "--flip",
                "class_conditional": "--class-conditional"}
#: The DP-SGD settings a recipe compares (``train_config.json``'s ``dp``), with their flags.
DP_RECIPE_FLAGS = {"noise_multiplier_used": "--dp-noise", "max_grad_norm": "--dp-max-grad-norm",
                   "poisson_sampling": "Poisson sampling (--dp-no-poisson)"}


def training_recipe(run: str | Path) -> dict[str, Any] | None:
    """{key: value} of :data:`RECIPE_FLAGS` a run's ``train_config.json`` records, and ``dp``: {key: value}
    of :data:`DP_RECIPE_FLAGS` for a DP-SGD run, None for a plain one; None when the run records no
    readable ``train_config.json`` (a model trained elsewhere)."""
    path = Path(run) / "train_config.json"
    if not path.is_file():
        return None
    try:
        config = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    recipe: dict[str, Any] = {k: config[k] for k in RECIPE_FLAGS if k in config}
    dp = config.get("dp")
    recipe["dp"] = {k: dp.get(k) for k in DP_RECIPE_FLAGS if k in dp} if isinstance(dp, dict) else None
    return recipe


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def recipe_differences(target: dict[str, Any], shadow: dict[str, Any]) -> list[str]:
    """How ``shadow`` trained otherwise than ``target`` (both :func:`training_recipe`), each as "FLAG A (the
    target) against B (the shadows)": DP-SGD on one side only, its noise multiplier, clipping and batching,
    and every option both record with another value (``--grad-clip`` only where neither trained with DP-SGD,
    which clips each example's gradient instead). Empty when they trained alike as far as both record."""
    out = []
    dt, ds = target.get("dp"), shadow.get("dp")
    if (dt is None) != (ds is None):
        out.append("DP-SGD: " + ("the target trained with it, the shadows without" if ds is None
                                 else "the shadows trained with it, the target without"))
    elif dt is not None:
        out += [f"{flag} {dt[k]} against {ds[k]}" for k, flag in DP_RECIPE_FLAGS.items()
                if k in dt and k in ds and not _same(dt[k], ds[k])]
    skip = {"grad_clip"} if dt is not None or ds is not None else set()
    out += [f"{flag} {target[k]} against {shadow[k]}" for k, flag in RECIPE_FLAGS.items()
            if k not in skip and k in target and k in shadow and not _same(target[k], shadow[k])]
    return out
