"""Timestep schedules for few-step sampling (pure functions)."""

from __future__ import annotations

from diffaudit.core.errors import DiffauditError


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending timesteps, "leading" spacing as diffusers' DDIMScheduler: t_k = k·(T // steps).

    Example: T = 1000, steps = 4 -> [750, 500, 250, 0].
    """
    if not 1 <= steps <= num_train_timesteps:
        raise DiffauditError(f"--steps must lie in [1, {num_train_timesteps}]; got {steps}")
    ratio = num_train_timesteps // steps
    return [k * ratio for k in range(steps)][::-1]
