"""The tile grid of the tiled ℓ2 when the user gives none: one rule for `extract` and the audit.

The paper's grid is 4 x 4 (128-pixel tiles at 512 x 512, §4.1). On small images a 4 x 4 grid cuts
tiles of a pixel or two, whose ℓ2 is noise, so a fixed 4 makes standalone ``diffaudit extract`` and
the audit's extract stage disagree on the same generations. Both call :func:`default_grid`.
"""

from __future__ import annotations

from typing import Sequence

from diffaudit.core.errors import DiffauditError
from diffaudit.distances.pixel import DEFAULT_GRID

#: The smallest tile side, in pixels, that the default grid keeps (fewer tiles below 4 x this).
MIN_TILE_PIXELS = 4

#: The ``--grid`` help of every command that takes it (the rule of :func:`default_grid` in words).
GRID_HELP = (f"tiles per side of the tiled l2 (default: {DEFAULT_GRID}, fewer for images under "
             f"{DEFAULT_GRID * MIN_TILE_PIXELS} px so tiles keep >= {MIN_TILE_PIXELS} px)")


def default_grid(image_shape: Sequence[int]) -> int:
    """Tiles per side for images of ``image_shape`` (H, W[, C]): :data:`DEFAULT_GRID` (4), fewer when
    the shorter side is under 16 pixels so that every tile keeps at least :data:`MIN_TILE_PIXELS`
    pixels (8 x 8 digits: 2; 12 x 12: 3; 32 x 32 CIFAR-10: 4), and never below 1."""
    side = min(int(image_shape[0]), int(image_shape[1]))
    return max(1, min(DEFAULT_GRID, side // MIN_TILE_PIXELS))


def resolve_grid(grid: int | None, image_shape: Sequence[int]) -> int:
    """``grid`` as given (an explicit ``--grid`` is kept), else :func:`default_grid` of ``image_shape``."""
    return int(grid) if grid is not None else default_grid(image_shape)


def check_grid(grid: int, image_shape: Sequence[int], flag: str = "--grid") -> int:
    """``grid`` when every tile of it keeps a pixel of images of ``image_shape`` (H, W[, C]); else a
    :class:`DiffauditError` naming ``flag``, raised before any work (the tiled
    ℓ2 is computed only where near-duplicates are found, so an impossible grid would otherwise pass
    or fail by the data)."""
    side = min(int(image_shape[0]), int(image_shape[1]))
    if int(grid) > side:
        raise DiffauditError(f"{flag} {grid} is finer than the {int(image_shape[0])}x{int(image_shape[1])} generations: "
                             f"at most {side} tiles per side (every tile needs a pixel)")
    return int(grid)
