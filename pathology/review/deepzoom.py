"""Deep Zoom tiles of a slide for OpenSeadragon.

Slides that OpenSlide opens are tiled by OpenSlide's own
:class:`openslide.deepzoom.DeepZoomGenerator`. Anything else (tiffslide-only files such as
multichannel QPTIFF / OME-TIFF) goes through :class:`SlideDeepZoom`, which lays out the same
Deep Zoom pyramid (same levels, tile grid and overlaps) over :class:`pathology.io.slide.Slide`
and renders channels as a colour composite. The composite's colours and per-channel display
maximum default to the panel's colours (from QC) and the slide's 99.5th percentiles; a tile
request may override both (:class:`ChannelDisplay`, the viewer's channel toggles and contrast
sliders). Only the pyramid levels of the main image are read: label and macro images are
never touched.
"""

from __future__ import annotations

import io
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathology.io.slide import Slide
from pathology.qc.overlays import (
    OKABE_ITO,
    channel_scales,
    display_rgb,
    hex_color,
    tint_from_hex,
)

TILE_SIZE = 254
OVERLAP = 1
JPEG_QUALITY = 80
DEFAULT_CYCLE = ("blue", "bluish_green", "vermillion", "yellow", "reddish_purple", "sky_blue",
                 "orange")
_CHANNEL_ITEM = re.compile(r"(\d{1,4})-([0-9a-fA-F]{6})-(\d{1,12}(?:\.\d{1,6})?)")


@dataclass(frozen=True)
class ChannelDisplay:
    """How a multichannel slide is drawn: a colour per channel (None: hidden) and the
    intensity shown at full brightness (the contrast).

    In a tile URL it is the ``ch`` parameter: one ``index-rrggbb-max`` item per shown channel,
    comma-separated (``ch=0-0072b2-180,3-ff0000-42.5``); ``ch=`` shows none.
    """

    tints: tuple[tuple[float, float, float] | None, ...]
    scales: tuple[float, ...]

    def query(self) -> str:
        """The ``ch`` value for this display."""
        return ",".join(f"{i}-{hex_color(t)[1:]}-{self.scales[i]:.6g}"
                        for i, t in enumerate(self.tints) if t is not None)

    @classmethod
    def parse(cls, value: str, n_channels: int) -> ChannelDisplay:
        """The display a ``ch`` value asks for.

        Raises
        ------
        ValueError
            A malformed item, a channel index out of range or repeated, a maximum of 0.

        Examples
        --------
        >>> ChannelDisplay.parse("1-ff0000-50", 3)
        ChannelDisplay(tints=(None, (1.0, 0.0, 0.0), None), scales=(1.0, 50.0, 1.0))
        """
        tints: list[tuple[float, float, float] | None] = [None] * n_channels
        scales = [1.0] * n_channels
        for item in filter(None, value.split(",")):
            match = _CHANNEL_ITEM.fullmatch(item)
            if match is None:
                raise ValueError(f"channel display item {item[:40]!r}: expected "
                                 "index-rrggbb-max")
            index, color, maximum = int(match[1]), match[2], float(match[3])
            if index >= n_channels or tints[index] is not None:
                raise ValueError(f"channel {index}: out of range or given twice "
                                 f"({n_channels} channels)")
            if maximum <= 0:
                raise ValueError(f"channel {index}: the display maximum must be > 0")
            tints[index] = tint_from_hex(color)
            scales[index] = maximum
        return cls(tuple(tints), tuple(scales))


class SlideDeepZoom:
    """The Deep Zoom pyramid of a :class:`~pathology.io.slide.Slide` (``limit_bounds=False``).

    Parameters
    ----------
    slide
        The open slide.
    tile_size, overlap
        As in OpenSlide's ``DeepZoomGenerator``.
    colors
        Default colour per channel (``#rrggbb``, None: hidden), e.g. the panel's colours that
        QC records in ``qc.json``; default an Okabe-Ito cycle over all channels.
    """

    def __init__(self, slide: Slide, *, tile_size: int = TILE_SIZE,
                 overlap: int = OVERLAP, colors: Sequence[str | None] | None = None) -> None:
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
        n = overview.shape[2]
        self._cycle = tuple(OKABE_ITO[DEFAULT_CYCLE[i % len(DEFAULT_CYCLE)]] for i in range(n))
        tints = (tuple(None if c is None else tint_from_hex(c) for c in colors)
                 if colors is not None and len(colors) == n else self._cycle)
        self.display = ChannelDisplay(tints, tuple(float(v) for v in self._scales))
        # the contrast sliders' range: the brightest overview pixel, at least twice the default
        peak = overview.reshape(-1, n).max(axis=0).astype(np.float64) if overview.size else (
            np.ones(n))
        self.limits = tuple(float(max(p, 2 * v)) for p, v in zip(peak, self._scales,
                                                                  strict=True))

    @property
    def multichannel(self) -> bool:
        """Whether tiles are a composite of channels (not the slide's own RGB)."""
        return not self._rgb

    def controls(self) -> list[dict]:
        """One dict per channel for the viewer's controls: ``index``, ``name``, ``color``
        (``#rrggbb``), ``shown``, ``max`` (default display maximum), ``limit``."""
        return [{"index": i, "name": name, "color": hex_color(tint or self._cycle[i]),
                 "shown": tint is not None, "max": self.display.scales[i],
                 "limit": self.limits[i]}
                for i, (name, tint) in enumerate(zip(self.slide.info.channels,
                                                     self.display.tints, strict=True))]

    def get_dzi(self, fmt: str = "jpeg") -> str:
        """The ``.dzi`` XML descriptor."""
        width, height = self.slide.info.dimensions
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
                f'Format="{fmt}" Overlap="{self.overlap}" TileSize="{self.tile_size}">'
                f'<Size Height="{height}" Width="{width}"/></Image>')

    def get_tile_array(self, level: int, address: tuple[int, int],
                       display: ChannelDisplay | None = None) -> np.ndarray:
        """One tile as 8-bit RGB ``(h, w, 3)``, multichannel slides drawn with ``display``
        (default :attr:`display`).

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
        if self._rgb:
            return display_rgb(image, rgb=True)
        display = display or self.display
        return display_rgb(image, scales=np.asarray(display.scales, np.float32), rgb=False,
                           tints=list(display.tints))


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
    colors
        Default channel colours of a multichannel slide (see :class:`SlideDeepZoom`).
    """

    def __init__(self, path: Path, *, backend: str, mpp: float | None = None,
                 colors: Sequence[str | None] | None = None) -> None:
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
            self._ours = SlideDeepZoom(self._handle, colors=colors)
            self._generator = None
        self.backend = "openslide" if self._generator is not None else "hccbio"

    @property
    def level_count(self) -> int:
        """Number of Deep Zoom levels."""
        source = self._generator or self._ours
        return source.level_count

    def channel_controls(self) -> list[dict]:
        """Per-channel display controls of a multichannel slide (empty for RGB slides; see
        :meth:`SlideDeepZoom.controls`)."""
        if self._ours is None or not self._ours.multichannel:
            return []
        return self._ours.controls()

    def parse_display(self, value: str | None) -> ChannelDisplay | None:
        """The display a tile URL's ``ch`` value asks for (None: the default).

        Raises
        ------
        ValueError
            ``value`` is malformed, or the slide is not multichannel.
        """
        if value is None:
            return None
        if self._ours is None or not self._ours.multichannel:
            raise ValueError("channel display applies to multichannel slides only")
        return ChannelDisplay.parse(value, len(self._ours.display.tints))

    def dzi(self) -> str:
        """The ``.dzi`` XML."""
        return (self._generator or self._ours).get_dzi("jpeg")

    def tile_array(self, level: int, col: int, row: int,
                   display: ChannelDisplay | None = None) -> np.ndarray:
        """One tile as 8-bit RGB (multichannel slides drawn with ``display``).

        Raises
        ------
        ValueError
            Level or address outside the pyramid.
        """
        with self._lock:
            if self._generator is not None:
                tile = self._generator.get_tile(level, (col, row))
                return np.asarray(tile.convert("RGB"))
            return self._ours.get_tile_array(level, (col, row), display)

    def tile_jpeg(self, level: int, col: int, row: int,
                  display: ChannelDisplay | None = None) -> bytes:
        """One tile as JPEG bytes."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.tile_array(level, col, row, display)).save(buffer, format="JPEG",
                                                               quality=JPEG_QUALITY)
        return buffer.getvalue()

    def close(self) -> None:
        """Release the slide."""
        self._handle.close()
