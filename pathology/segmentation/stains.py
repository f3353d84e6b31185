"""Stain vectors for colour deconvolution: the Ruifrok-Johnston defaults, or hematoxylin and
DAB vectors estimated per slide (Macenko et al., ISBI 2009) from a sample of its pixels.

A stain matrix has one row per stain (hematoxylin, second stain or residual, DAB), each a unit
optical-density vector over R, G, B; :func:`stain_densities` inverts it. Optical density
(:func:`optical_density`) and the stain densities are shared by the tissue mask, the cell
measurements and QC.
"""

from __future__ import annotations

import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

DEFAULT_MATRIX = (rgb_from_hed / np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)).astype(
    np.float64)


def optical_density(rgb: np.ndarray, *, background: float = 255.0) -> np.ndarray:
    """Optical density ``-log10(I / I0)`` per RGB channel (``I`` clipped to [1, I0]).

    Examples
    --------
    >>> float(optical_density(np.array([[[255, 25.5, 2.55]]]))[0, 0, 1].round(6))
    1.0
    """
    rgb = np.clip(np.asarray(rgb, dtype=np.float32), 1.0, background)
    return -np.log10(rgb / background)


def stain_densities(rgb: np.ndarray, *, background: float = 255.0,
                    unmixing: np.ndarray | None = None) -> np.ndarray:
    """Hematoxylin, eosin and DAB optical densities by colour deconvolution.

    Uses the Ruifrok & Johnston stain vectors of scikit-image (``hed_from_rgb``) on true
    optical densities, so the values are in OD units (absorbance), comparable across slides.

    Parameters
    ----------
    unmixing
        Optional ``(3, 3)`` optical-density-to-stain matrix, e.g. from per-slide estimated
        vectors (:func:`deconvolution_matrix`); default
        scikit-image's.

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` float32: hematoxylin, eosin (or residual), DAB.
    """
    od = optical_density(rgb[..., :3], background=background)
    matrix = hed_from_rgb if unmixing is None else unmixing
    return (od @ np.asarray(matrix, dtype=np.float32)).astype(np.float32)


class StainError(ValueError):
    """Stain vectors cannot be estimated from the given pixels."""


def estimate_hdab_matrix(rgb: np.ndarray, *, background: float = 255.0,
                         min_od: float = 0.15, percentile: float = 1.0,
                         max_pixels: int = 500_000, seed: int = 0) -> np.ndarray:
    """Hematoxylin and DAB vectors of one slide by Macenko's method.

    Pixels with total optical density below ``min_od`` (glass) are ignored; the optical
    densities are projected on the plane of their two main axes, and the directions at the
    ``percentile`` and ``100 - percentile`` angles are the two stains. The bluer one (larger
    red absorption relative to blue) is hematoxylin; the third row is their unit cross product
    (a residual orthogonal to both, in the place of eosin: with estimated vectors the
    ``*_eosin_od`` columns hold this residual).

    Parameters
    ----------
    rgb
        ``(..., 3)`` uint8 pixels from the slide's tissue.

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` rows hematoxylin, residual, DAB (unit vectors).

    Raises
    ------
    StainError
        Too few stained pixels.

    Examples
    --------
    >>> from skimage.data import immunohistochemistry
    >>> m = estimate_hdab_matrix(immunohistochemistry())
    >>> bool(angle_degrees(m[2], DEFAULT_MATRIX[2]) < 20)
    True
    """
    od = optical_density(np.asarray(rgb)[..., :3], background=background).reshape(-1, 3)
    od = od[od.sum(axis=1) > min_od].astype(np.float64)
    if len(od) < 100:
        raise StainError(f"only {len(od)} stained pixels (optical density > {min_od}); need "
                         "at least 100 to estimate stain vectors")
    if len(od) > max_pixels:
        od = od[np.random.default_rng(seed).choice(len(od), max_pixels, replace=False)]
    _, vectors = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vectors[:, [2, 1]]  # the two largest axes
    plane *= np.sign(plane.sum(axis=0, keepdims=True) + 1e-12)  # positive OD directions
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [percentile, 100 - percentile])
    a = plane @ np.array([np.cos(low), np.sin(low)])
    b = plane @ np.array([np.cos(high), np.sin(high)])
    a, b = np.abs(a) / np.linalg.norm(a), np.abs(b) / np.linalg.norm(b)
    hematoxylin, dab = (a, b) if a[0] / a[2] > b[0] / b[2] else (b, a)
    residual = np.cross(hematoxylin, dab)  # orthogonal to both: what neither stain explains
    residual /= np.linalg.norm(residual)
    return np.vstack([hematoxylin, residual, dab])


def counterstain_matrix(rgb: np.ndarray, *, background: float = 255.0) -> np.ndarray:
    """Stain vectors of an IHC image for re-rendering its counterstain: hematoxylin as seen
    in its own unstained (DAB-poor) nuclei, DAB Ruifrok-Johnston's, and their cross product.

    The hematoxylin vector is the mean optical-density direction, less the glass's (the
    palest 20 % of pixels), of the densest pixels (top 15 %) among those with little DAB
    (Ruifrok DAB density under a quarter of the hematoxylin density): counterstained nuclei.
    On the four DeepLIIF tiles it lies within 0.2-4.6 degrees of the direction of their
    annotated DAB-negative nuclei, where Macenko's estimate (:func:`estimate_hdab_matrix`) is
    up to 20 degrees off on a tile dominated by DAB; on scikit-image's IHC image it is within
    3 degrees of Macenko's. For :func:`rescale_stains` (``matrix=``): a paler counterstain is
    less of the same dye.

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` rows hematoxylin, residual, DAB (unit vectors).

    Examples
    --------
    >>> from skimage.data import immunohistochemistry
    >>> image = immunohistochemistry()
    >>> m = counterstain_matrix(image)
    >>> bool(angle_degrees(m[0], estimate_hdab_matrix(image)[0]) < 5)
    True
    """
    od = optical_density(np.asarray(rgb)[..., :3], background=background).reshape(-1, 3)
    od = od.astype(np.float64)
    total = od.sum(axis=1)
    glass = _glass_od(od)
    densities = (od - glass) @ hed_from_rgb
    poor = densities[:, 2] < 0.25 * np.clip(densities[:, 0], 1e-6, None)
    if not poor.any():
        raise StainError("no pixel with more hematoxylin than DAB")
    dense = poor & (total > np.quantile(total[poor], 0.85))
    if dense.sum() < 100:
        raise StainError(f"only {int(dense.sum())} counterstained pixels; need at least 100")
    hematoxylin = np.clip(od[dense].mean(axis=0) - glass, 1e-6, None)
    hematoxylin /= np.linalg.norm(hematoxylin)
    dab_vector = DEFAULT_MATRIX[2] / np.linalg.norm(DEFAULT_MATRIX[2])
    residual = np.cross(hematoxylin, dab_vector)
    residual /= np.linalg.norm(residual)
    return np.vstack([hematoxylin, residual, dab_vector])


def _glass_od(od: np.ndarray) -> np.ndarray:
    """The glass's optical density: the mean of the palest 20 % of ``(N, 3)`` pixels."""
    total = od.sum(axis=1)
    return od[total <= np.quantile(total, 0.2)].mean(axis=0)


def angle_degrees(u: np.ndarray, v: np.ndarray) -> float:
    """Angle between two stain vectors (degrees)."""
    cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def deconvolution_matrix(matrix: np.ndarray) -> np.ndarray:
    """The matrix that maps optical densities to stain amounts (``od @ result``)."""
    return np.linalg.inv(np.asarray(matrix, dtype=np.float64)).astype(np.float32)


def rescale_stains(rgb: np.ndarray, *, hematoxylin: float = 1.0, eosin: float = 1.0,
                   dab: float = 1.0, matrix: np.ndarray | None = None) -> np.ndarray:
    """Re-render a brightfield image with each stain's amount scaled (a stain-batch shift).

    Colour deconvolution with the Ruifrok-Johnston vectors
    (:func:`pathology.segmentation.stains.stain_densities`,
    the densities that cells.parquet reports), each stain's optical density multiplied by its
    factor, and the image rendered back through the inverse matrix (``rgb_from_hed``). A factor
    above 1 stains darker, below 1 paler; with all factors 1 the image comes back unchanged.
    Used to train and test classifiers on stain strengths other than their training set's.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` uint8 image.
    hematoxylin, eosin, dab
        Non-negative factors on each stain's optical density.
    matrix
        ``(3, 3)`` stain vectors (rows hematoxylin, eosin or residual, DAB) to unmix and
        render with, e.g. the image's own from :func:`estimate_hdab_matrix`: a stain whose hue
        differs from Ruifrok-Johnston's then keeps its hue when scaled (with the default
        vectors, the part of a bluish counterstain that the hematoxylin vector does not
        explain stays behind in the eosin channel, and a paler rendering turns cyan).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 image.

    Examples
    --------
    >>> from skimage.data import immunohistochemistry
    >>> image = immunohistochemistry()
    >>> int(np.abs(rescale_stains(image).astype(int) - image).max()) <= 1
    True
    >>> bool(rescale_stains(image, hematoxylin=2.0).mean() < image.mean())
    True
    >>> own = estimate_hdab_matrix(image)
    >>> int(np.abs(rescale_stains(image, matrix=own).astype(int) - image).max()) <= 1
    True
    """
    factors = np.array([hematoxylin, eosin, dab], dtype=np.float64)
    if np.any(factors < 0) or not np.all(np.isfinite(factors)):
        raise ValueError(f"stain factors must be finite and >= 0, got {factors.tolist()}")
    vectors = rgb_from_hed if matrix is None else np.asarray(matrix, dtype=np.float64)
    unmixing = None if matrix is None else deconvolution_matrix(vectors)
    stains = stain_densities(np.asarray(rgb)[..., :3], unmixing=unmixing).astype(
        np.float64) * factors
    intensity = 255.0 * np.power(10.0, -(stains @ vectors))
    return np.clip(intensity, 0, 255).round().astype(np.uint8)


def hematoxylin_level(rgb: np.ndarray, matrix: np.ndarray, *, background: float = 255.0,
                      percentile: float = 95.0) -> float:
    """How dark an IHC image's counterstain is: a high percentile of the hematoxylin density
    (``matrix``'s first stain, e.g. :func:`counterstain_matrix`; the glass's optical density
    subtracted, as there) over the pixels with little DAB (under a quarter of their
    hematoxylin), i.e. the counterstained nuclei.

    Examples
    --------
    >>> from skimage.data import immunohistochemistry
    >>> image = immunohistochemistry()
    >>> m = counterstain_matrix(image)
    >>> pale = rescale_stains(image, hematoxylin=0.5, matrix=m)
    >>> ratio = hematoxylin_level(pale, m) / hematoxylin_level(image, m)
    >>> bool(0.45 < ratio < 0.55)
    True
    """
    od = optical_density(np.asarray(rgb)[..., :3], background=background).reshape(-1, 3)
    od = od.astype(np.float64)
    densities = (od - _glass_od(od)) @ deconvolution_matrix(matrix).astype(np.float64)
    hematoxylin, dab = densities[:, 0], densities[:, 2]
    poor = dab < 0.25 * np.clip(hematoxylin, 1e-6, None)
    if not poor.any():
        raise StainError("no pixel with more hematoxylin than DAB")
    return float(np.percentile(hematoxylin[poor], percentile))


def counterstain_gain(level: float, reference: float, max_gain: float) -> float:
    """The factor that brings a counterstain ``level`` up to ``reference``: never below 1 (a
    dark counterstain is left as it is), never above ``max_gain``.

    Examples
    --------
    >>> counterstain_gain(0.1, 0.4, 5.0), counterstain_gain(0.6, 0.4, 5.0)
    (4.0, 1.0)
    >>> counterstain_gain(0.01, 0.4, 5.0)
    5.0
    """
    if not level > 0:
        return float(max_gain)
    return float(min(max(reference / level, 1.0), max_gain))
