"""Large pyramidal TIFFs built from real tissue, for the size and memory benchmarks.

A real H&E region (CMU-1-Small-Region from ``../shared/data``) is repeated, with mirror flips
so that seams meet like-for-like, into a slide of any size. Tiles are encoded one at a time,
so writing a 40k x 40k slide never holds it in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

TILE = 512


def periodic_source(region: np.ndarray) -> np.ndarray:
    """A 2x2 mirror block of ``region`` that tiles the plane without visible seams."""
    top = np.concatenate([region, region[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def _tiles(source: np.ndarray, height: int, width: int) -> Iterator[np.ndarray]:
    src_h, src_w = source.shape[:2]
    for y in range(0, height, TILE):
        rows = (np.arange(y, y + TILE) % src_h)
        for x in range(0, width, TILE):
            cols = (np.arange(x, x + TILE) % src_w)
            yield source[rows][:, cols]


def write_large_slide(path: Path, region: np.ndarray, size: int, *, mpp: float,
                      levels: int = 4) -> Path:
    """Write a ``size`` x ``size`` tiled, JPEG-compressed pyramidal TIFF from ``region``.

    Levels are downsampled by 4 each, built from a downsampled source (so each level costs
    the same tile-by-tile streaming as level 0).
    """
    source = periodic_source(region)
    resolution = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(levels):
            factor = 4**level
            side = size // factor
            if side < TILE:
                break
            level_source = source[::factor, ::factor] if factor > 1 else source
            tif.write(_tiles(level_source, side, side), shape=(side, side, 3), dtype=np.uint8,
                      tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                      compressionargs={"level": 90}, resolution=(
                          resolution[0] / factor, resolution[1] / factor),
                      resolutionunit="CENTIMETER", subfiletype=0 if level == 0 else 1)
    return path
