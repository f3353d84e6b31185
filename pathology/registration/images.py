"""Low-resolution, stain-independent views of the images to register.

A slide is read through :class:`pathology.io.slide.Slide` at a coarse pixel size (its pyramid
level nearest that size, chunk by chunk: a full-resolution slide is never loaded); a plain RGB
image (PNG, JPEG, or a TIFF without a pixel size) is read whole and downsampled. Each view holds
a *signal* that does not depend on the stain (mean optical density for brightfield, whatever the
stains; the nuclear channel for fluorescence), a tissue mask, and the geometry that relates its
pixels to the level-0 pixels of the file.

Coordinates: level-0 pixel ``k`` covers ``[k, k + 1)``; physical coordinates are level-0
coordinates times the level-0 pixel size (micrometres), or level-0 pixels themselves (unit
``px``) when an image has no pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from pathology.config import TissueSection
from pathology.io.slide import PixelSizeError, Slide, SlideError
from pathology.tissue.detect import brightfield_od_and_saturation, detect_tissue

Kind = Literal["brightfield", "fluorescence"]
Unit = Literal["um", "px"]
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_PLAIN_PIXELS = 1 << 28  # a plain image larger than this (16k x 16k) must be a pyramid


class RegistrationInputError(ValueError):
    """An image cannot be used for registration; the message names the file and the fix."""


@dataclass(frozen=True)
class ImageSource:
    """An image file opened for registration: its size, pixel size and kind.

    Attributes
    ----------
    path
        The file.
    size
        Level-0 ``(width, height)`` in pixels.
    mpp
        Level-0 pixel size (um/px), ``None`` for an image without one (pixel units).
    kind
        ``brightfield`` (8-bit RGB) or ``fluorescence``.
    reader
        ``slide`` (:class:`~pathology.io.slide.Slide`) or ``plain`` (read whole).
    nuclear
        Fluorescence: index of the nuclear channel (``None``: brightest channel per pixel).
    """

    path: Path
    size: tuple[int, int]
    mpp: float | None
    kind: Kind
    reader: Literal["slide", "plain"]
    nuclear: int | None = None
    given_mpp: float | None = None
    backend: str = "auto"
    mpp_range: tuple[float, float] = (0.1, 2.0)
    mpp_tolerance: float = 0.02

    @property
    def unit(self) -> Unit:
        """``um`` when the pixel size is known, else ``px``."""
        return "um" if self.mpp is not None else "px"

    @property
    def unit_per_px(self) -> float:
        """Physical units per level-0 pixel (the pixel size, or 1 in pixel units)."""
        return self.mpp if self.mpp is not None else 1.0

    @property
    def extent(self) -> float:
        """Longest side in physical units."""
        return max(self.size) * self.unit_per_px


@dataclass(frozen=True)
class Overview:
    """One image at registration resolution.

    Attributes
    ----------
    source
        The file it was read from.
    signal
        ``float32 (h, w)``: stain-independent density, about 0 on glass and 1 on dense tissue.
    mask
        ``bool (h, w)`` tissue mask.
    display
        ``uint8 (h, w, 3)`` rendering for overlays.
    spacing
        ``(x, y)`` physical units per overview pixel; pixel ``(r, c)`` covers
        ``[c * sx, (c + 1) * sx) x [r * sy, (r + 1) * sy)``.
    """

    source: ImageSource
    signal: np.ndarray
    mask: np.ndarray
    display: np.ndarray
    spacing: tuple[float, float]


def _channels_to_kind(path: Path, channels: tuple[str, ...], dtype: str) -> Kind:
    rgb = tuple(c.upper() for c in channels[:3]) == ("R", "G", "B")
    return "brightfield" if rgb and dtype == "uint8" and len(channels) in (3, 4) else \
        "fluorescence"


def open_source(path: str | Path, *, mpp: float | None = None,
                kind: Kind | None = None, backend: str = "auto",
                mpp_range: tuple[float, float] = (0.1, 2.0), mpp_tolerance: float = 0.02,
                nuclear_channels: tuple[str, ...] = ("DAPI",)) -> ImageSource:
    """Open an image for registration without reading its pixels.

    Parameters
    ----------
    path
        A whole-slide image (anything :class:`~pathology.io.slide.Slide` opens) or a plain RGB
        image (PNG, JPEG ...; a TIFF without a pixel size is read as one).
    mpp
        Level-0 pixel size (um/px) to use (for a slide, checked against its metadata as the
        manifest's ``mpp`` is); ``None``: the slide's own, and pixel units for a plain image.
    kind
        Force ``brightfield`` or ``fluorescence``; default: 8-bit RGB is brightfield.
    backend, mpp_range, mpp_tolerance
        As in :class:`~pathology.io.slide.Slide`.
    nuclear_channels
        Fluorescence: channel names tried for nuclei (``slide.nuclear_channels``).

    Raises
    ------
    RegistrationInputError
        Missing or unreadable file, or a slide whose pixel size is contradictory.
    """
    path = Path(path)
    if not path.exists():
        raise RegistrationInputError(f"{path}: image file not found")
    if not path.is_file():
        raise RegistrationInputError(f"{path}: not a file")
    if path.suffix.lower() not in PLAIN_SUFFIXES:
        try:
            with Slide(path, manifest_mpp=mpp, backend=backend, mpp_range=mpp_range,
                       mpp_tolerance=mpp_tolerance) as slide:
                info = slide.info
        except PixelSizeError as error:
            if mpp is not None or not _small_tiff(path):
                raise RegistrationInputError(f"{error}; give the pixel size (--moving-mpp / "
                                             "--fixed-mpp, or the manifest's mpp)") from error
        except SlideError as error:
            if not _small_tiff(path):
                raise RegistrationInputError(str(error)) from error
        else:
            found = _channels_to_kind(path, info.channels, info.dtype)
            nuclear = None
            if (kind or found) == "fluorescence":
                from pathology.io.slide import nuclear_channel_index

                try:
                    nuclear = nuclear_channel_index(info.channels, nuclear_channels)
                except SlideError as error:
                    raise RegistrationInputError(f"{path}: {error}") from error
            return ImageSource(path, tuple(info.dimensions), info.pixel_size.mpp,
                               kind or found, "slide", nuclear, mpp, backend, mpp_range,
                               mpp_tolerance)
    image = _read_plain(path)
    found = "brightfield" if image.ndim == 3 and image.shape[2] in (3, 4) and \
        image.dtype == np.uint8 else "fluorescence"
    return ImageSource(path, (image.shape[1], image.shape[0]), mpp, kind or found, "plain")


def _small_tiff(path: Path) -> bool:
    """A single-level TIFF small enough to read whole (a plain image without pixel size)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return len(series.levels) == 1 and math.prod(series.shape[:2]) <= MAX_PLAIN_PIXELS
    except Exception:
        return False


def _read_plain(path: Path) -> np.ndarray:
    from skimage import io as skio

    try:
        image = np.asarray(skio.imread(path))
    except Exception as error:  # imageio raises many types for unreadable files
        raise RegistrationInputError(f"{path}: cannot read as an image ({error})") from error
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[0] < 8 or image.shape[1] < 8:
        raise RegistrationInputError(f"{path}: expected a 2-D image of at least 8 x 8 pixels, "
                                     f"found shape {image.shape}")
    if image.shape[0] * image.shape[1] > MAX_PLAIN_PIXELS:
        raise RegistrationInputError(f"{path}: {image.shape[1]} x {image.shape[0]} pixels is "
                                     "too large for a plain image; use a pyramidal slide")
    return image


def registration_spacing(moving: ImageSource, fixed: ImageSource, *, max_size_px: int
                         ) -> float:
    """Common physical pixel size at which the longer image is ``max_size_px`` across."""
    return max(moving.extent, fixed.extent) / max_size_px


def read_overview(source: ImageSource, spacing: float, *, tissue: TissueSection,
                  background: float = 255.0) -> Overview:
    """Read an image at ``spacing`` physical units per pixel and derive its signal and mask.

    Parameters
    ----------
    source
        From :func:`open_source`.
    spacing
        Physical units (um, or level-0 px) per overview pixel, at least one level-0 pixel.
    tissue
        The ``tissue`` section: its optical-density and saturation threshold ranges are
        used; morphology is scaled to the overview (a few pixels), so that the mask suits
        registration at any resolution.
    background
        Brightfield: transmitted light I0.

    Returns
    -------
    Overview
    """
    spacing = max(spacing, source.unit_per_px)
    if source.reader == "slide":
        with Slide(source.path, manifest_mpp=source.given_mpp, backend=source.backend,
                   mpp_range=source.mpp_range, mpp_tolerance=source.mpp_tolerance) as slide:
            # ``spacing`` level-0 px (pixel units) or um: the slide's um per overview pixel
            image = slide.read_overview(spacing / source.unit_per_px
                                        * slide.info.pixel_size.mpp)
        sx = sy = spacing
    else:
        full = _read_plain(source.path)
        factor = source.unit_per_px / spacing
        if factor < 0.999:
            from skimage.transform import rescale

            image = rescale(full.astype(np.float32), factor, order=1, channel_axis=-1,
                            anti_aliasing=True, preserve_range=True)
            image = np.clip(np.rint(image), 0, np.iinfo(full.dtype).max
                            if np.issubdtype(full.dtype, np.integer) else None
                            ).astype(full.dtype)
        else:
            image = full
        sx = source.size[0] * source.unit_per_px / image.shape[1]
        sy = source.size[1] * source.unit_per_px / image.shape[0]
    signal, display = _signal(image, source, background=background)
    mask = registration_mask(image, source.kind, signal=signal, tissue=tissue,
                             pixel=math.sqrt(sx * sy), background=background)
    return Overview(source, signal, mask, display, (sx, sy))


def registration_mask(image: np.ndarray, kind: Kind, *, signal: np.ndarray,
                      tissue: TissueSection, pixel: float, background: float = 255.0
                      ) -> np.ndarray:
    """Tissue mask of an overview for registration.

    :func:`pathology.tissue.detect.detect_tissue` with morphology scaled to the overview (a few
    pixels, so any resolution works) and, for brightfield, a threshold suited to pale stains:
    Otsu on the logarithm of the optical density (glass, a faint IHC counterstain and dense
    tissue lie decades apart), clipped to ``[od_low / 2, od_low * 2]`` of the ``tissue``
    section's range, so that an image that is all tissue is not split in half.
    """
    config = tissue.model_copy(update={
        "closing_radius_um": 2 * pixel, "opening_radius_um": 1 * pixel,
        "fluorescence_smooth_um": 2 * pixel, "min_tissue_area_um2": 30 * pixel**2,
        "max_hole_area_um2": 0.002 * signal.size * pixel**2})
    if kind == "fluorescence":
        return detect_tissue(signal[..., None], kind="fluorescence", mpp=pixel, config=config)
    od, _ = brightfield_od_and_saturation(image[..., :3], background=background)
    od = ndi.gaussian_filter(od, 1.0)
    low = tissue.od_threshold_range[0]
    logs = np.log(np.maximum(od, 1e-3))
    threshold = float(np.exp(threshold_otsu(logs))) if np.ptp(logs) > 0 else low
    threshold = float(np.clip(threshold, low / 2, low * 2))
    # detect_tissue with the threshold fixed and saturation off (it never exceeds 1).
    config = config.model_copy(update={"od_threshold_range": (threshold, threshold),
                                       "saturation_threshold_range": (1.0, 1.0)})
    return detect_tissue(image[..., :3], kind="brightfield", mpp=pixel, config=config,
                         background=background)


def _signal(image: np.ndarray, source: ImageSource, *, background: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Stain-independent density in about [0, 1] and an RGB rendering."""
    if source.kind == "brightfield":
        od, _ = brightfield_od_and_saturation(image[..., :3], background=background)
        signal = od
        display = image[..., :3].astype(np.uint8)
    else:
        if source.nuclear is not None:
            channel = image[..., source.nuclear]
        else:
            channel = image[..., :3].max(axis=2) if image.shape[2] >= 3 else image[..., 0]
        signal = np.log1p(np.maximum(channel.astype(np.float32), 0))
        signal -= np.percentile(signal, 1)
        grey = np.clip(signal / max(float(np.percentile(signal, 99.5)), 1e-6), 0, 1)
        display = np.repeat((255 * grey).astype(np.uint8)[..., None], 3, axis=2)
    signal = ndi.gaussian_filter(signal.astype(np.float32), 1.0)
    scale = float(np.percentile(signal, 99))
    signal = np.clip(signal / scale, 0, 2) if scale > 0 else np.zeros_like(signal)
    return signal.astype(np.float32), display
