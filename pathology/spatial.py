"""Spatial statistics of cell point patterns inside a tissue window (vectorised, cKDTree).

Ripley's K and L (and the cross-type versions) use the tissue mask as the observation window
with a local edge correction: each focal cell's neighbour count is divided by the fraction of
its disk of radius r that lies inside the window (one FFT convolution of the mask per radius).
Under complete spatial randomness this makes ``K(r) = pi r^2`` for any window shape, and the
reported ``L(r) - r`` (um) is comparable across slides of any size and shape. Quadrat counts
give the Morisita-Horn colocalisation index and Getis-Ord Gi* hotspots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Window:
    """The observation window: a boolean tissue mask with its pixel size (um)."""

    mask: np.ndarray
    mpp: float

    @property
    def area_um2(self) -> float:
        """Window area (um^2)."""
        return float(self.mask.sum()) * self.mpp**2

    def lookup(self, grid: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Values of a grid aligned with the mask at points ``xy`` (um, x then y)."""
        rows = np.clip(np.floor(xy[:, 1] / self.mpp).astype(np.int64), 0, grid.shape[0] - 1)
        cols = np.clip(np.floor(xy[:, 0] / self.mpp).astype(np.int64), 0, grid.shape[1] - 1)
        return grid[rows, cols]

    def disk_fraction(self, radius_um: float) -> np.ndarray:
        """Fraction of the disk of ``radius_um`` around each pixel that lies in the window."""
        radius = radius_um / self.mpp
        half = int(np.ceil(radius))
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
        kernel = _disk_coverage(xx, yy, radius)
        inside = fftconvolve(self.mask.astype(np.float64), kernel, mode="same")
        return np.clip(inside / kernel.sum(), 0.0, 1.0)


def _disk_coverage(xx: np.ndarray, yy: np.ndarray, radius: float, *, sub: int = 4) -> np.ndarray:
    """Area fraction of each unit pixel covered by a disk of ``radius`` (supersampled)."""
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    cover = np.zeros(xx.shape, dtype=np.float64)
    for dy in offsets:
        for dx in offsets:
            cover += ((xx + dx) ** 2 + (yy + dy) ** 2) <= radius**2
    return cover / sub**2


def ripley_k(focal: np.ndarray, others: np.ndarray | None, *, window: Window,
             radii: tuple[float, ...], max_focal: int = 100_000, seed: int = 0,
             tree: cKDTree | None = None,
             fractions: Mapping[float, np.ndarray] | None = None) -> np.ndarray:
    """Ripley's K (univariate when ``others`` is None, else cross-type) with edge correction.

    ``K(r) = A / n_j * mean_i [ c_i(r) / f_i(r) ]`` where ``c_i`` counts the other cells
    within ``r`` of focal cell ``i``, ``f_i`` is the fraction of that disk inside the window and
    ``A`` the window area (``n_j - 1`` for the univariate case). A seeded random sample of at
    most ``max_focal`` focal cells keeps the estimator unbiased and the cost bounded.

    Parameters
    ----------
    focal
        ``(n, 2)`` focal cells (um).
    others
        ``(m, 2)`` other-type cells, or None for the univariate K of ``focal``.
    window
        The tissue window.
    radii
        Radii (um).
    max_focal, seed
        Size and seed of the focal-cell sample.
    tree
        A prebuilt cKDTree of the target cells (reused across calls).
    fractions
        Precomputed :meth:`Window.disk_fraction` grids by radius (reused across calls).

    Returns
    -------
    numpy.ndarray
        K at each radius (um^2); NaN when there are fewer than two cells.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> pts = rng.uniform(0, 1000, (4000, 2))
    >>> w = Window(np.ones((100, 100), bool), 10.0)
    >>> k = ripley_k(pts, None, window=w, radii=(50.0,))
    >>> bool(abs(np.sqrt(k[0] / np.pi) - 50) < 2)
    True
    """
    univariate = others is None
    targets = focal if univariate else others
    n_j = len(targets) - (1 if univariate else 0)
    if len(focal) < 1 or n_j < 1:
        return np.full(len(radii), np.nan)
    sample = focal
    if len(focal) > max_focal:
        rng = np.random.default_rng(seed)
        sample = focal[np.sort(rng.choice(len(focal), max_focal, replace=False))]
    tree = tree if tree is not None else cKDTree(targets)
    area = window.area_um2
    out = np.empty(len(radii))
    for index, radius in enumerate(radii):
        counts = tree.query_ball_point(sample, radius, return_length=True, workers=-1)
        counts = counts.astype(np.float64) - (1.0 if univariate else 0.0)
        grid = fractions[radius] if fractions and radius in fractions else \
            window.disk_fraction(radius)
        fraction = window.lookup(grid, sample)
        weights = np.where(fraction > 0.05, 1.0 / np.maximum(fraction, 0.05), 0.0)
        used = weights > 0
        if not used.any():
            out[index] = np.nan
            continue
        out[index] = area / n_j * float(np.mean(counts[used] * weights[used]))
    return out


def l_function(k: np.ndarray) -> np.ndarray:
    """Besag's ``L(r) = sqrt(K(r) / pi)`` (um)."""
    return np.sqrt(np.asarray(k, dtype=np.float64) / np.pi)


def nearest_distances(source: np.ndarray, target: np.ndarray, *,
                      tree: cKDTree | None = None) -> np.ndarray:
    """Distance (um) from each source cell to its nearest target cell (inf without targets)."""
    if len(source) == 0:
        return np.zeros(0)
    if len(target) == 0:
        return np.full(len(source), np.inf)
    tree = tree if tree is not None else cKDTree(target)
    return tree.query(source, k=1, workers=-1)[0]


def fraction_within(source: np.ndarray, target: np.ndarray, radii: tuple[float, ...], *,
                    tree: cKDTree | None = None) -> np.ndarray:
    """Fraction of source cells with at least one target cell within each radius.

    Examples
    --------
    >>> fraction_within(np.array([[0, 0], [100, 0]]), np.array([[10, 0]]), (20.0, 200.0))
    array([0.5, 1. ])
    """
    if len(source) == 0:
        return np.full(len(radii), np.nan)
    distances = nearest_distances(source, target, tree=tree)
    return np.array([float(np.mean(distances <= r)) for r in radii])


@dataclass(frozen=True)
class Quadrats:
    """A square grid over the slide: tissue fraction of each quadrat and which are used."""

    side_um: float
    tissue_fraction: np.ndarray
    valid: np.ndarray

    def counts(self, xy: np.ndarray) -> np.ndarray:
        """Cell counts per quadrat (grid shaped)."""
        shape = self.tissue_fraction.shape
        rows = np.clip(np.floor(xy[:, 1] / self.side_um).astype(np.int64), 0, shape[0] - 1)
        cols = np.clip(np.floor(xy[:, 0] / self.side_um).astype(np.int64), 0, shape[1] - 1)
        return np.bincount(rows * shape[1] + cols, minlength=shape[0] * shape[1]).reshape(
            shape).astype(np.float64)


def make_quadrats(window: Window, side_um: float, *, min_tissue: float = 0.5) -> Quadrats:
    """Quadrats of ``side_um`` aligned with the mask origin; valid if >= ``min_tissue`` tissue."""
    factor = side_um / window.mpp
    shape = (max(1, int(np.ceil(window.mask.shape[0] / factor))),
             max(1, int(np.ceil(window.mask.shape[1] / factor))))
    rows = np.minimum((np.arange(window.mask.shape[0]) / factor).astype(np.int64), shape[0] - 1)
    cols = np.minimum((np.arange(window.mask.shape[1]) / factor).astype(np.int64), shape[1] - 1)
    index = rows[:, None] * shape[1] + cols[None, :]
    tissue = np.bincount(index.ravel(), weights=window.mask.ravel().astype(np.float64),
                         minlength=shape[0] * shape[1]).reshape(shape)
    fraction = np.clip(tissue * window.mpp**2 / side_um**2, 0.0, 1.0)
    return Quadrats(side_um, fraction, fraction >= min_tissue)


def morisita_horn(a: np.ndarray, b: np.ndarray) -> float:
    """Morisita-Horn overlap of two count vectors (1 = same distribution, 0 = disjoint).

    Examples
    --------
    >>> morisita_horn(np.array([1, 2, 3]), np.array([2, 4, 6]))
    1.0
    >>> morisita_horn(np.array([1, 0]), np.array([0, 1]))
    0.0
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.sum() == 0 or b.sum() == 0:
        return float("nan")
    p, q = a / a.sum(), b / b.sum()
    return float(2 * np.sum(p * q) / (np.sum(p * p) + np.sum(q * q)))


def getis_ord_gi_star(values: np.ndarray, valid: np.ndarray, *, radius_cells: float) -> np.ndarray:
    """Getis-Ord Gi* z-scores on a grid with binary weights (centres within ``radius_cells``,
    self included); only ``valid`` cells take part. NaN outside ``valid``.

    Examples
    --------
    >>> v = np.zeros((9, 9)); v[4, 4] = 10
    >>> z = getis_ord_gi_star(v, np.ones((9, 9), bool), radius_cells=1)
    >>> bool(z[4, 4] > 1.96), bool(abs(z[0, 0]) < 1)
    (True, True)
    """
    # Equal to esda.G_Local(star=True, transform="B") to 1e-9 on real point patterns
    # (tests/pathology/test_spatial_esda.py); kept because the convolution takes 6 ms where
    # esda + libpysal distance-band weights take 9 s on 37,500 quadrats.
    valid = valid.astype(bool)
    x = np.where(valid, values, 0.0).astype(np.float64)
    n = int(valid.sum())
    if n < 3:
        return np.full(values.shape, np.nan)
    half = int(np.floor(radius_cells))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    kernel = (xx**2 + yy**2 <= radius_cells**2).astype(np.float64)
    mean = x[valid].mean()
    std = np.sqrt(np.mean(x[valid] ** 2) - mean**2)
    if std == 0:
        return np.where(valid, 0.0, np.nan)
    local = ndi.convolve(x, kernel, mode="constant")
    weights = ndi.convolve(valid.astype(np.float64), kernel, mode="constant")
    denominator = std * np.sqrt(np.maximum(n * weights - weights**2, 0.0) / (n - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (local - mean * weights) / denominator
    return np.where(valid & (denominator > 0), z, np.nan)
