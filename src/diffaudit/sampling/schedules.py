"""Timestep schedules for few-step sampling (pure functions), as diffusers' DDIMScheduler makes them."""

from __future__ import annotations

import numpy as np

from diffaudit.core.errors import DiffauditError


def ddim_timesteps(num_train_timesteps: int, steps: int, *, spacing: str = "leading", offset: int = 0) -> list[int]:
    """Descending timesteps of an n-step sampler over a T-step schedule (``DDIMScheduler.set_timesteps``):

    - ``leading``: t_k = k·(T // n) + offset, e.g. T = 1000, n = 4 -> [750, 500, 250, 0];
    - ``trailing``: round(T − k·T/n) − 1, e.g. [999, 749, 499, 249];
    - ``linspace``: round(linspace(0, T − 1, n)) descending, e.g. [999, 666, 333, 0].
    """
    if not 1 <= steps <= num_train_timesteps:
        raise DiffauditError(f"--steps must lie in [1, {num_train_timesteps}]; got {steps}")
    T = num_train_timesteps
    if spacing == "leading":
        ts = (np.arange(steps) * (T // steps)).round()[::-1].astype(np.int64) + int(offset)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise DiffauditError(f"unknown timestep spacing {spacing!r}; choose leading, trailing or linspace")
    if ts.max() >= T or ts.min() < 0:
        raise DiffauditError(f"{steps} steps with offset {offset} leave the schedule's [0, {T - 1}]: {ts.tolist()}")
    return [int(t) for t in ts]


def ddim_previous(num_train_timesteps: int, timesteps: list[int]) -> list[int]:
    """The timestep each step moves to, as ``DDIMScheduler.step`` takes it: t − T // n, whatever the
    spacing (so not always the next timestep of a trailing or linspace grid); −1 after the last, where
    the final ᾱ (1, or ᾱ_0 without ``set_alpha_to_one``) is used."""
    ratio = num_train_timesteps // len(timesteps)
    return [t - ratio if t - ratio >= 0 else -1 for t in timesteps]
