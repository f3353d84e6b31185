"""Deep Zoom tiles of a slide for OpenSeadragon.

Slides that OpenSlide opens are tiled by OpenSlide's own
:class:`openslide.deepzoom.DeepZoomGenerator`. Anything else (tiffslide-only files such as
multichannel QPTIFF / OME-TIFF) goes through :class:`SlideDeepZoom`, which lays out the same
Deep Zoom pyramid (same levels, tile grid and overlaps) over :class:`pathology.slide.Slide`
and renders channels as a fixed colour composite. Only the pyramid levels of the main image
are read: label and macro images are never touched.
"""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path

import numpy as np

from pathology.qc.overlays import channel_scales, display_rgb
from pathology.slide import Slide

TILE_SIZE = 254
OVERLAP = 1
JPEG_QUALITY = 80


class SlideDeepZoom:
    """The Deep Zoom pyramid of a :class:`~pathology.slide.Slide` (``limit_bounds=False``).

    Parameters
    ----------
    slide
        The open slide.
    tile_size, overlap
        As in OpenSlide's ``DeepZoomGenerator``.
    """

    def __init__(self, slide: Slide, *, tile_size: int = TILE_SIZE,
                 overlap: int = OVERLAP) -> None:
        self.slide = slide
        self.tile_size = tile_size
        self.overlap = overlap
        size = tuple(slide.info.dimensions)
        dims = [size]
        while size[0] > 1 or size[1] > 1:
            size = tuple(max(1, math.ceil(z / 2)) for z in size)
            dims.append(size)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(reversed(dims))
        self.level_count = len(self.level_dimensions)
        self.level_tiles = tuple((math.ceil(w / tile_size), math.ceil(h / tile_size))
                                 for w, h in self.level_dimensions)
        mpp = 8.0 * slide.info.pixel_size.mpp
        overview = slide.read_overview(max(mpp, slide.info.level_mpp(
            len(slide.info.level_downsamples) - 1)))
        self._scales = channel_scales(overview)
        self._rgb = tuple(c.upper() for c in slide.info.channels[:3]) == ("R", "G", "B")

    def get_dzi(self, fmt: str = "jpeg") -> str:
        """The ``.dzi`` XML descriptor."""
        width, height = self.slide.info.dimensions
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
                f'Format="{fmt}" Overlap="{self.overlap}" TileSize="{self.tile_size}">'
                f'<Size Height="{height}" Width="{width}"/></Image>')

    def get_tile_array(self, level: int, address: tuple[int, int]) -> np.ndarray:
        """One tile as 8-bit RGB ``(h, w, 3)``.

        Raises
        ------
        ValueError
            Level or address outside the pyramid.
        """
        if not 0 <= level < self.level_count:
            raise ValueError("Invalid level")
        cols, rows = self.level_tiles[level]
        col, row = address
        if not (0 <= col < cols and 0 <= row < rows):
            raise ValueError("Invalid address")
        width, height = self.level_dimensions[level]
        ts, ov = self.tile_size, self.overlap
        x0 = col * ts - ov * (col != 0)
        y0 = row * ts - ov * (row != 0)
        w = min(ts, width - ts * col) + ov * (col != 0) + ov * (col != cols - 1)
        h = min(ts, height - ts * row) + ov * (row != 0) + ov * (row != rows - 1)
        downsample = 2 ** (self.level_count - 1 - level)
        mpp = self.slide.info.pixel_size.mpp * downsample
        image = self.slide.read_region_at(x0, y0, w, h, mpp=mpp)
        return display_rgb(image, scales=self._scales, rgb=self._rgb)


class TileSource:
    """Thread-safe Deep Zoom access to one slide file, by the best available backend.

    Parameters
    ----------
    path
        The slide file (only slides of the run are ever opened).
    backend
        ``openslide`` uses OpenSlide's ``DeepZoomGenerator``; anything else uses
        :class:`SlideDeepZoom`.
    mpp
        The manifest's level-0 pixel size, for files without one in their metadata.
    """

    def __init__(self, path: Path, *, backend: str, mpp: float | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if backend == "openslide":
            import openslide
            from openslide.deepzoom import DeepZoomGenerator

            self._handle = openslide.OpenSlide(str(self.path))
            self._generator = DeepZoomGenerator(self._handle, tile_size=TILE_SIZE,
                                                overlap=OVERLAP, limit_bounds=False)
            self._ours = None
        else:
            self._handle = Slide(self.path, backend="tiffslide", manifest_mpp=mpp)
            self._ours = SlideDeepZoom(self._handle)
            self._generator = None
        self.backend = "openslide" if self._generator is not None else "hccbio"

    @property
    def level_count(self) -> int:
        """Number of Deep Zoom levels."""
        source = self._generator or self._ours
        return source.level_count

    def dzi(self) -> str:
        """The ``.dzi`` XML."""
        return (self._generator or self._ours).get_dzi("jpeg")

    def tile_array(self, level: int, col: int, row: int) -> np.ndarray:
        """One tile as 8-bit RGB.

        Raises
        ------
        ValueError
            Level or address outside the pyramid.
        """
        with self._lock:
            if self._generator is not None:
                tile = self._generator.get_tile(level, (col, row))
                return np.asarray(tile.convert("RGB"))
            return self._ours.get_tile_array(level, (col, row))

    def tile_jpeg(self, level: int, col: int, row: int) -> bytes:
        """One tile as JPEG bytes."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.tile_array(level, col, row)).save(buffer, format="JPEG",
                                                               quality=JPEG_QUALITY)
        return buffer.getvalue()

    def close(self) -> None:
        """Release the slide."""
        self._handle.close()
