"""The slide's ``store.zarr``: tissue mask, tile progress and the identity of the run.

Tile progress is one zarr chunk per tile, so marking a tile done rewrites one tiny file; a
tile counts as done only when its Parquet part exists too (parts are renamed into place
atomically, before the flag is set). A store made with another input or configuration is
cleared before use, and the reason is returned to the caller.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import zarr

from hcccore.atomic import write_parquet
from pathology.io.folder import CELL_PARTS, SlideFolder
from pathology.tissue.detect import TISSUE_MASK

TILE_DONE = "tile_done"
PARTS_DIR = CELL_PARTS


class SlideStore:
    """The per-slide store folder: ``store.zarr`` plus the per-tile Parquet parts.

    Parameters
    ----------
    folder
        ``OUT/slides/<sample_id>``.
    identity
        What makes results valid: input file signature and configuration hash. A store with a
        different identity is cleared.
    fresh
        Clear the store whatever its identity (``--force``: tissue, tile progress and tile
        parts are computed again from the pixels).
    """

    def __init__(self, folder: Path, identity: dict, *, fresh: bool = False) -> None:
        self.folder = Path(folder)
        self.zarr_path = SlideFolder(self.folder).store
        self.parts = self.folder / PARTS_DIR
        self.identity = identity
        self.reset_reason: str | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        if fresh and (self.zarr_path.exists() or self.parts.exists()):
            self.reset_reason = "recomputed from the pixels (--force)"
            shutil.rmtree(self.zarr_path, ignore_errors=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        elif self.zarr_path.exists():
            group = zarr.open_group(str(self.zarr_path), mode="r")
            stored = group.attrs.get("identity")
            if stored != identity:
                changed = sorted(k for k in set(identity) | set(stored or {})
                                 if (stored or {}).get(k) != identity.get(k))
                self.reset_reason = f"recomputed: {', '.join(changed)} changed since last run"
                shutil.rmtree(self.zarr_path)
                shutil.rmtree(self.parts, ignore_errors=True)
        self.group = zarr.open_group(str(self.zarr_path), mode="a")
        # Written once: tile workers of one slide open the store concurrently.
        if self.group.attrs.get("identity") != identity:
            self.group.attrs["identity"] = identity

    # -- tissue ----------------------------------------------------------------------------
    def tissue_mask(self) -> tuple[np.ndarray, float] | None:
        """The stored tissue mask and its pixel size, if computed (a mask without its pixel
        size was cut short by a killed run, :meth:`save_tissue_mask` writes it last, and is
        computed again)."""
        if TISSUE_MASK not in self.group:
            return None
        array = self.group[TISSUE_MASK]
        if "mpp" not in array.attrs:
            return None
        return np.asarray(array[...]).astype(bool), float(array.attrs["mpp"])

    def save_tissue_mask(self, mask: np.ndarray, mpp: float) -> None:
        """Store the tissue mask (uint8, 0/1) with its pixel size in um/px."""
        array = self.group.create_array(TISSUE_MASK, shape=mask.shape, dtype="uint8",
                                        chunks=(min(1024, mask.shape[0]),
                                                min(1024, mask.shape[1])), overwrite=True)
        array[...] = mask.astype(np.uint8)
        array.attrs["mpp"] = mpp  # last: its presence says the mask is complete

    # -- tiles -----------------------------------------------------------------------------
    def init_tiles(self, n_grid: int, grid: dict) -> None:
        """Create the tile-progress array (one chunk per grid position) if absent."""
        if TILE_DONE in self.group:
            if self.group[TILE_DONE].attrs.get("grid") == grid:
                return
            del self.group[TILE_DONE]
            shutil.rmtree(self.parts, ignore_errors=True)
        array = self.group.create_array(TILE_DONE, shape=(max(n_grid, 1),), dtype="uint8",
                                        chunks=(1,), fill_value=0)
        array.attrs["grid"] = grid

    def part_path(self, tile_index: int) -> Path:
        """Where a tile's cells are written."""
        return self.parts / f"tile_{tile_index:07d}.parquet"

    def tile_done(self, tile_index: int) -> bool:
        """Whether the tile finished (flag set and part present)."""
        return bool(self.group[TILE_DONE][tile_index]) and self.part_path(tile_index).exists()

    def save_tile(self, tile_index: int, table: pa.Table) -> None:
        """Write the tile's cells, then mark it done (in that order, for crash safety)."""
        write_parquet(table, self.part_path(tile_index))
        self.group[TILE_DONE][tile_index] = 1

    def forget_tile(self, tile_index: int) -> None:
        """Mark the tile unfinished and remove its part (a damaged part is computed again)."""
        self.group[TILE_DONE][tile_index] = 0
        self.part_path(tile_index).unlink(missing_ok=True)

    def set_attr(self, key: str, value) -> None:
        """Record a JSON-serialisable fact in the store's attributes."""
        self.group.attrs[key] = json.loads(json.dumps(value))
