"""Whether the models an attack compares were built alike, checked before any loss is computed.

Membership inference (LiRA) and the inpainting attack compare a target's losses with shadow models'
on the same inputs: the same image, timestep t and noise ε. That comparison only means something when
every model reads those inputs the same way: the same kind of conditioning (a class-conditional
model's loss is taken with the label, an unconditional one's without), the same noise schedule ᾱ_t
(the noisy input x_t = sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·ε) and the same prediction target (ε, v or x₀).
A target that differs in any of these still gives numbers, and an AUC, but of another question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.models.denoiser import check_model_input, read_schedule, read_unet_config

#: Relative tolerance on ᾱ_t between two models' schedules (float32 configs round-trip through JSON).
SCHEDULE_RTOL = 1e-6


def conditioning(config: dict) -> str:
    """``text`` (a latent UNet with cross-attention: Stable Diffusion), ``class`` (class embeddings) or
    ``none``, from a UNet's config."""
    if config.get("_class_name") == "UNet2DConditionModel":
        return "text"
    return "class" if config.get("num_class_embeds") else "none"


def check_models_alike(models: Sequence[tuple[str, str | Path]], image_shape: tuple[int, int, int], labels, *,
                       timesteps: Sequence[int], timestep_flag: str = "--timesteps") -> None:
    """Refuse models an attack would compare that are not built alike (module docstring).

    Args:
        models: (flag, folder) per model, the target first; errors name a model by the flag its path
            came from (``--model``, ``--target``, ``--shadows``...).
        image_shape: (H, W, C) of the data's images; every pixel-space model must take them
            (:func:`~diffaudit.models.denoiser.check_model_input`).
        labels: the data's class labels (int (N,)) or None.
        timesteps: the timesteps the attack reads; each must lie in [0, T) of every schedule.
        timestep_flag: the option they came from, for errors.

    Raises:
        DiffauditError: naming the first model that differs from the first one, and how.
    """
    first = None
    for flag, run in models:
        config = read_unet_config(run, flag)
        kind = conditioning(config)
        if kind != "text":
            check_model_input(config, image_shape, labels=labels, what=f"{flag} {run}")
        alphas, prediction = read_schedule(run, flag)
        bad = [int(t) for t in timesteps if not 0 <= int(t) < len(alphas)]
        if bad:
            raise DiffauditError(f"{timestep_flag} must lie in [0, {len(alphas) - 1}] ({flag} {run} has {len(alphas)} "
                                 f"timesteps); got {bad[0]}")
        this = (flag, Path(run), kind, alphas, prediction)
        if first is None:
            first = this
            continue
        why = _difference(first, this)
        if why:
            raise DiffauditError(f"{why}: the attack compares their losses on the same images, timesteps and noise, so "
                                 "the models must be built alike")


def _difference(a: tuple, b: tuple) -> str | None:
    """How model ``b`` differs from ``a`` ((flag, path, conditioning, ᾱ, prediction_type) each), in words;
    None when alike."""
    name_a, name_b = f"{a[0]} {a[1]}", f"{b[0]} {b[1]}"
    words = {"text": "text-conditional (latent)", "class": "class-conditional", "none": "unconditional"}
    if a[2] != b[2]:
        return f"{name_b} is {words[b[2]]} but {name_a} is {words[a[2]]}"
    if len(a[3]) != len(b[3]):
        return f"{name_b} has a schedule of {len(b[3])} timesteps but {name_a} of {len(a[3])}"
    if not np.allclose(a[3], b[3], rtol=SCHEDULE_RTOL, atol=0.0):
        t = int(np.argmax(np.abs(a[3] - b[3])))
        return f"{name_b} has another noise schedule than {name_a} (ᾱ_{t} = {b[3][t]:.6g} against {a[3][t]:.6g})"
    if a[4] != b[4]:
        return f"{name_b} predicts {b[4]} but {name_a} predicts {a[4]}"
    return None
