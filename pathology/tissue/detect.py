"""Tissue detection on a low-resolution overview of the slide.

Brightfield: optical density and HSV saturation, each thresholded with Otsu (clipped to a
configured range so that a slide that is all tissue, or all glass, is not split in half), then
morphology and a minimum-area filter. Fluorescence: the smoothed nuclear channel with Otsu,
closed so that the dark space between nuclei counts as tissue.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk, opening, remove_small_holes

from pathology.config import TissueSection
from pathology.io.folder import SlideFolder
from pathology.segmentation.stains import optical_density

Kind = Literal["brightfield", "fluorescence"]


def _radius_px(radius_um: float, mpp: float) -> int:
    return max(0, int(round(radius_um / mpp)))


def _clipped_otsu(values: np.ndarray, low: float, high: float) -> float:
    if values.size == 0 or np.ptp(values) == 0:
        return low
    return float(np.clip(threshold_otsu(values), low, high))


def brightfield_od_and_saturation(rgb: np.ndarray, *, background: float = 255.0
                                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean optical density over R, G, B and HSV saturation of every pixel.

    8-bit images go through lookup tables (per value for the density, per (max, min) pair
    for the saturation, built with scikit-image's ``rgb2hsv``), so the values equal the
    direct computation while memory holds two single-channel float32 planes instead of
    several float copies of the whole RGB overview.

    Returns
    -------
    tuple of numpy.ndarray
        ``od`` and ``saturation``, ``(H, W)`` float32.

    Examples
    --------
    >>> od, sat = brightfield_od_and_saturation(np.array([[[255, 255, 255], [255, 0, 0]]],
    ...                                                  np.uint8))
    >>> sat.tolist()
    [[0.0, 1.0]]
    """
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        values = rgb.astype(np.float32)
        od = optical_density(values, background=background).mean(axis=2)
        return od, rgb2hsv(np.clip(values / 255.0, 0, 1))[..., 1]
    levels = np.arange(256, dtype=np.float32)
    od_table = optical_density(levels, background=background)
    high, low = np.meshgrid(levels, levels, indexing="ij")
    pairs = np.stack([high, low, low], axis=-1) / 255.0  # saturation depends on max, min only
    saturation_table = rgb2hsv(np.clip(pairs, 0, 1))[..., 1].astype(np.float32)
    od = od_table[rgb[..., 0]]
    od += od_table[rgb[..., 1]]
    od += od_table[rgb[..., 2]]
    od /= np.float32(3)
    return od, saturation_table[rgb.max(axis=2), rgb.min(axis=2)]


def detect_tissue(overview: np.ndarray, *, kind: Kind, mpp: float, config: TissueSection,
                  nuclear_channel: int = 0, background: float = 255.0) -> np.ndarray:
    """Boolean tissue mask of a slide overview.

    Parameters
    ----------
    overview
        ``(H, W, C)`` image of the whole slide at ``mpp`` um/px (see
        :meth:`pathology.io.slide.Slide.read_overview`).
    kind
        ``"brightfield"`` (RGB, tissue absorbs light) or ``"fluorescence"`` (tissue emits).
    mpp
        Pixel size of ``overview``; morphology radii and areas are given in um.
    config
        The ``tissue`` section of the pathology configuration.
    nuclear_channel
        Fluorescence: index of the nuclear channel in ``overview``.
    background
        Brightfield: transmitted light intensity I0 for optical density.

    Returns
    -------
    numpy.ndarray
        ``bool`` mask, ``True`` on tissue.

    Examples
    --------
    >>> img = np.full((64, 64, 3), 250, np.uint8); img[16:48, 16:48] = (150, 60, 140)
    >>> mask = detect_tissue(img, kind="brightfield", mpp=8.0, config=TissueSection())
    >>> bool(mask[32, 32]), bool(mask[2, 2])
    (True, False)
    """
    if overview.ndim != 3:
        raise ValueError(f"overview must be (H, W, C), got shape {overview.shape}")
    if kind == "brightfield":
        od, saturation = brightfield_od_and_saturation(overview, background=background)
        od_threshold = _clipped_otsu(od, *config.od_threshold_range)
        sat_threshold = _clipped_otsu(saturation, *config.saturation_threshold_range)
        # Dark, unsaturated pixels are tissue too (hematoxylin-dense areas), but pure black
        # (scanner padding) is not.
        mask = ((od > od_threshold) | (saturation > sat_threshold)) & (
            overview[..., :3].max(axis=2) > 8)
    elif kind == "fluorescence":
        channel = overview[..., nuclear_channel].astype(np.float32)
        sigma = config.fluorescence_smooth_um / mpp
        smooth = ndi.gaussian_filter(channel, sigma) if sigma > 0.3 else channel
        positive = smooth[smooth > 0]
        if positive.size == 0:
            return np.zeros(channel.shape, dtype=bool)
        mask = smooth > threshold_otsu(positive) * 0.5 if np.ptp(positive) else smooth > 0
    else:
        raise ValueError(f"unknown slide kind {kind!r}; expected brightfield or fluorescence")
    closing_px = _radius_px(config.closing_radius_um, mpp)
    opening_px = _radius_px(config.opening_radius_um, mpp)
    if closing_px:
        mask = closing(np.pad(mask, closing_px), disk(closing_px))[closing_px:-closing_px,
                                                                    closing_px:-closing_px]
    max_hole_px = int(config.max_hole_area_um2 / mpp**2)
    if max_hole_px > 0:
        mask = remove_small_holes(mask, max_size=max_hole_px)
    if opening_px:
        mask = opening(mask, disk(opening_px))
    min_area_px = int(math.ceil(config.min_tissue_area_um2 / mpp**2))
    if min_area_px > 1:
        labels, n = ndi.label(mask)
        if n:
            sizes = np.bincount(labels.ravel())
            keep = sizes >= min_area_px
            keep[0] = False
            mask = keep[labels]
    return mask


def explain_no_tissue(overview: np.ndarray, *, kind: Kind, mpp: float, config: TissueSection,
                      nuclear_channel: int = 0, background: float = 255.0) -> str:
    """Why :func:`detect_tissue` found nothing, naming the setting and a value that would pass.

    Small images (ROI exports, TMA cores) are often smaller than
    ``tissue.min_tissue_area_um2``; the message then says so and suggests
    ``tissue.mode: whole_image``.

    Examples
    --------
    >>> img = np.full((16, 16, 3), 250, np.uint8); img[2:14, 2:14] = (150, 60, 140)
    >>> print(explain_no_tissue(img, kind="brightfield", mpp=8.0, config=TissueSection()))
    ... # doctest: +NORMALIZE_WHITESPACE
    no tissue detected: the image is 16384 um^2 and its largest tissue piece 16384 um^2, but
    tissue.min_tissue_area_um2 is 20000 um^2; set tissue.min_tissue_area_um2 to at most 16384
    (e.g. 8192), or tissue.mode: whole_image for an ROI or a TMA core
    """
    height, width = overview.shape[:2]
    image_um2 = height * width * mpp**2
    loose = detect_tissue(overview, kind=kind, mpp=mpp, nuclear_channel=nuclear_channel,
                          background=background,
                          config=config.model_copy(update={"min_tissue_area_um2": 0.0}))
    labels, n = ndi.label(loose)
    largest = float(np.bincount(labels.ravel())[1:].max()) * mpp**2 if n else 0.0
    if largest <= 0:
        return (f"no tissue detected: nothing in the {image_um2:.0f} um^2 image passes the "
                "tissue thresholds (tissue.od_threshold_range, "
                "tissue.saturation_threshold_range); check the slide, or set tissue.mode: "
                "whole_image for an ROI or a TMA core that is all tissue")
    return (f"no tissue detected: the image is {image_um2:.0f} um^2 and its largest tissue "
            f"piece {largest:.0f} um^2, but tissue.min_tissue_area_um2 is "
            f"{config.min_tissue_area_um2:.0f} um^2; set tissue.min_tissue_area_um2 to at most "
            f"{largest:.0f} (e.g. {largest / 2:.0f}), or tissue.mode: whole_image for an ROI "
            "or a TMA core")


# -- the stored mask ----------------------------------------------------------------------------

TISSUE_MASK = "tissue_mask"  # the array in the slide folder's store.zarr; attribute "mpp"


class TissueMaskError(ValueError):
    """A slide folder has no complete tissue mask; the message names the store."""


def read_tissue_mask(folder: Path) -> tuple[np.ndarray, float]:
    """The tissue mask stored in a slide folder's ``store.zarr``, and its pixel size (um/px).

    Parameters
    ----------
    folder
        The slide folder (:class:`pathology.io.folder.SlideFolder`).

    Returns
    -------
    numpy.ndarray, float
        Boolean mask and um/px.

    Raises
    ------
    TissueMaskError
        No store, no mask, or a mask without its pixel size (a run cut short).
    """
    import zarr

    path = SlideFolder(Path(folder)).store
    try:
        array = zarr.open_group(str(path), mode="r")[TISSUE_MASK]
        return np.asarray(array[...]).astype(bool), float(array.attrs["mpp"])
    except (KeyError, FileNotFoundError, OSError, ValueError) as error:
        raise TissueMaskError(f"{path}: no tissue_mask with an 'mpp' attribute ({error}); run "
                              "'hccbio slides run' first") from error
