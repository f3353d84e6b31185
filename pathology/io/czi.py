"""Zeiss CZI images (Axioscan brightfield and fluorescence, LSM) through Zeiss's own reader.

`pylibCZIrw <https://github.com/ZEISS/pylibczirw>`_ wraps libCZI, the reference
implementation of the format. :class:`CziImage` offers the part of tiffslide's interface that
:class:`pathology.io.slide.Slide` uses (``dimensions``, ``level_dimensions``,
``level_downsamples``, ``read_region``, ``close``) plus the channel names and pixel size the
file states, like :class:`pathology.io.stacks.TiffStack`.

- The image is the bounding rectangle of all scenes (an Axioscan slide's tissue regions);
  outside the scanned scenes it is white (brightfield) or 0 (fluorescence).
- Brightfield (``Bgr24`` / ``Bgr48``, one channel) is returned as R, G, B; fluorescence as one
  channel per CZI channel, named from the file's ``Channel/@Name``.
- The pixel size is the file's ``Scaling/Distance`` (metres per pixel, stated by the
  instrument).
- Levels: libCZI renders any zoom from the file's own pyramid; levels at downsamples
  1, 4, 16, ... are offered so that overviews read a few pixels, not the whole slide.
- Z stacks and time series: the first plane (``Z = 0``, ``T = 0``) is read; which one is
  recorded in :attr:`CziImage.plane_note`.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from pathology.io.metadata import ChannelNames

CZI_SUFFIX = ".czi"
LEVEL_FACTOR = 4
MIN_LEVEL_SIZE = 512
PIXEL_TYPES = {"Gray8": (np.uint8, 1), "Gray16": (np.uint16, 1), "Gray32Float": (np.float32, 1),
               "Bgr24": (np.uint8, 3), "Bgr48": (np.uint16, 3)}


class CziError(ValueError):
    """A CZI file cannot be read as a slide; the message names the file."""


def is_czi(path: Path) -> bool:
    """Whether ``path`` is a CZI file (by its suffix; the reader checks the content).

    Examples
    --------
    >>> is_czi(Path("scan.CZI")), is_czi(Path("scan.tiff"))
    (True, False)
    """
    return Path(path).suffix.lower() == CZI_SUFFIX


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


class CziImage:
    """A Zeiss CZI file read region by region.

    Parameters
    ----------
    path
        The ``.czi`` file.

    Attributes
    ----------
    channels
        :class:`pathology.io.metadata.ChannelNames` (R, G, B for brightfield; the file's channel
        names for fluorescence; None when the file names none).
    n_channels, dtype, evidence
        As :class:`pathology.io.stacks.TiffStack`.

    Raises
    ------
    CziError
        pylibCZIrw is not installed, the file is not a CZI, or channels of different pixel
        types.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.properties: dict[str, str | None] = {"czi.vendor": "zeiss"}
        try:
            from pylibCZIrw import czi
        except ImportError as error:
            raise CziError(f"{self.path}: reading CZI needs pylibCZIrw (pip install "
                           "pylibCZIrw)") from error
        self._stack = contextlib.ExitStack()
        try:
            self._reader = self._stack.enter_context(czi.open_czi(str(self.path)))
            box = self._reader.total_bounding_box
            rect = self._reader.total_bounding_rectangle
            types = dict(self._reader.pixel_types)
            metadata = self._reader.metadata or {}
        except Exception as error:  # libCZI raises RuntimeError and others for broken files
            self._stack.close()
            raise CziError(f"{self.path}: not a readable CZI file ({type(error).__name__}: "
                           f"{error})") from error
        if len(set(types.values())) != 1:
            self.close()
            raise CziError(f"{self.path}: channels of different pixel types ({types}); "
                           "export the channels with one type")
        pixel_type = next(iter(types.values()))
        if pixel_type not in PIXEL_TYPES:
            self.close()
            raise CziError(f"{self.path}: pixel type {pixel_type} is not supported "
                           f"({', '.join(PIXEL_TYPES)})")
        dtype, samples = PIXEL_TYPES[pixel_type]
        self.dtype = np.dtype(dtype)
        self._pixel_type = pixel_type
        self._rgb = samples == 3
        self._origin = (int(rect.x), int(rect.y))
        self.dimensions = (int(rect.w), int(rect.h))
        self._czi_channels = list(range(*box.get("C", (0, 1))))
        self.n_channels = 3 if self._rgb else len(self._czi_channels)
        self._plane = {"Z": box.get("Z", (0, 1))[0], "T": box.get("T", (0, 1))[0]}
        n_z = box.get("Z", (0, 1))[1] - box.get("Z", (0, 1))[0]
        n_t = box.get("T", (0, 1))[1] - box.get("T", (0, 1))[0]
        self.plane_note = (f"first of {n_z} Z planes and {n_t} time points" if n_z > 1 or n_t > 1
                           else "")
        self._background = 255 if self._rgb else 0
        value = 1.0 if self._rgb else 0.0  # libCZI takes the background as RGB in [0, 1]
        self._background_rgb = czi.Color(value, value, value)
        image_md = (metadata.get("ImageDocument") or {}).get("Metadata") or {}
        if self._rgb:
            self.channels = ChannelNames(("R", "G", "B"), "rgb")
        else:
            found = _as_list((((image_md.get("Information") or {}).get("Image") or {})
                              .get("Dimensions") or {}).get("Channels", {}).get("Channel"))
            names = [c.get("@Name") or c.get("Name") or "" for c in found]
            self.channels = (ChannelNames(tuple(names), "czi")
                             if len(names) == self.n_channels and all(names) else None)
        self.evidence = self._pixel_size_evidence(image_md)
        downsamples = [1]
        while max(self.dimensions) / (downsamples[-1] * LEVEL_FACTOR) >= MIN_LEVEL_SIZE:
            downsamples.append(downsamples[-1] * LEVEL_FACTOR)
        self.level_dimensions = tuple((max(1, math.ceil(self.dimensions[0] / d)),
                                       max(1, math.ceil(self.dimensions[1] / d)))
                                      for d in downsamples)
        self.level_downsamples = tuple(float(d) for d in downsamples)

    def _pixel_size_evidence(self, image_md: dict) -> list[tuple[str, float, float, bool]]:
        distances = {d.get("@Id"): d.get("Value") for d in _as_list(
            ((image_md.get("Scaling") or {}).get("Items") or {}).get("Distance"))}
        try:
            mpp_x, mpp_y = (float(distances["X"]) * 1e6, float(distances["Y"]) * 1e6)
        except (KeyError, TypeError, ValueError):
            return []
        if mpp_x <= 0 or mpp_y <= 0:
            return []
        return [("czi:Scaling/Distance", mpp_x, mpp_y, True)]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int], *,
                    as_array: bool = True, padding: bool = True) -> np.ndarray:
        """A box of ``size`` (width, height) at ``level``, its top-left corner ``location``
        in level-0 pixels, as ``(height, width, channels)``; outside the scenes is
        background (white brightfield, 0 fluorescence)."""
        del as_array, padding  # always an array, always padded (tiffslide's keywords)
        downsample = self.level_downsamples[level]
        width, height = int(size[0]), int(size[1])
        roi = (self._origin[0] + int(location[0]), self._origin[1] + int(location[1]),
               max(1, int(round(width * downsample))), max(1, int(round(height * downsample))))
        zoom = 1.0 / downsample
        out = np.full((height, width, self.n_channels), self._background, dtype=self.dtype)
        if self._rgb:
            planes = [self._read(roi, 0, zoom)[..., ::-1]]  # libCZI gives B, G, R
        else:
            planes = [self._read(roi, c, zoom) for c in self._czi_channels]
        for index, plane in enumerate(planes):
            h, w = min(height, plane.shape[0]), min(width, plane.shape[1])
            if self._rgb:
                out[:h, :w] = plane[:h, :w]
            else:
                out[:h, :w, index] = plane[:h, :w, 0]
        return out

    def _read(self, roi: tuple[int, int, int, int], channel: int, zoom: float) -> np.ndarray:
        return np.asarray(self._reader.read(
            roi=roi, plane={**self._plane, "C": channel}, zoom=zoom,
            background_pixel=self._background_rgb))

    def close(self) -> None:
        """Release the file."""
        self._stack.close()

    def __enter__(self) -> CziImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
