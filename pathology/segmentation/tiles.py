"""The tile grid at the working resolution: cores that partition the slide, plus a halo.

Every working-resolution pixel lies in exactly one tile core, so a nucleus is owned by exactly
one tile (the one whose core holds its centre). Only tiles whose core touches tissue are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One tile: its core box and the read box (core + halo, clipped to the slide)."""

    index: int
    row: int
    col: int
    x: int  # core origin, working-resolution pixels
    y: int
    width: int
    height: int
    read_x: int
    read_y: int
    read_width: int
    read_height: int

    def core_contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which of the points (working-resolution pixel coordinates) lie in the core."""
        return (x >= self.x) & (x < self.x + self.width) & (y >= self.y) & (
            y < self.y + self.height)


def tile_grid(shape: tuple[int, int], *, tile_size: int, halo: int,
              tissue_mask: np.ndarray | None = None) -> list[Tile]:
    """Tiles covering an image of ``shape`` (height, width) at the working resolution.

    Parameters
    ----------
    shape
        (height, width) of the slide at the working resolution.
    tile_size
        Core edge length in pixels.
    halo
        Context added on each side of the core (clipped at the slide border).
    tissue_mask
        Optional boolean mask of the whole slide at any coarser resolution; tiles whose core
        does not overlap tissue are dropped.

    Returns
    -------
    list of Tile
        Row-major order; ``index`` is the position in the full grid (stable whatever the mask).

    Examples
    --------
    >>> [t.index for t in tile_grid((100, 250), tile_size=128, halo=16)]
    [0, 1]
    """
    height, width = shape
    if height <= 0 or width <= 0:
        raise ValueError(f"empty slide shape {shape}")
    n_rows, n_cols = math.ceil(height / tile_size), math.ceil(width / tile_size)
    tiles = []
    for row in range(n_rows):
        for col in range(n_cols):
            x, y = col * tile_size, row * tile_size
            w, h = min(tile_size, width - x), min(tile_size, height - y)
            if tissue_mask is not None and not _core_has_tissue(tissue_mask, shape, x, y, w, h):
                continue
            rx, ry = max(0, x - halo), max(0, y - halo)
            rw, rh = min(width, x + w + halo) - rx, min(height, y + h + halo) - ry
            tiles.append(Tile(row * n_cols + col, row, col, x, y, w, h, rx, ry, rw, rh))
    return tiles


def _core_has_tissue(mask: np.ndarray, shape: tuple[int, int], x: int, y: int, w: int,
                     h: int) -> bool:
    scale_y, scale_x = mask.shape[0] / shape[0], mask.shape[1] / shape[1]
    # Include the mask pixels that the core touches, even partially.
    y0, y1 = int(math.floor(y * scale_y)), int(math.ceil((y + h) * scale_y))
    x0, x1 = int(math.floor(x * scale_x)), int(math.ceil((x + w) * scale_x))
    return bool(mask[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].any())
