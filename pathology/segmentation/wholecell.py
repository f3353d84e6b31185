"""Whole cells of fluorescence slides, grown from the nuclei into the membrane / cytoplasm signal.

Multiplex panels read membrane and cytoplasm markers (CD3, CD8, CD45, panCK) in the cell, not
in the nucleus. Like Mesmer-style pipelines, cells are grown from the segmented nuclei into a
cytoplasm / membrane signal (``cells.whole_cell``):

1. **signal**: the sum of the chosen channels, each divided by its slide-wide 99th percentile
   (so one bright marker does not drown the rest), Gaussian-smoothed; pixels above the
   slide's Otsu threshold of that signal are cell (both computed once per slide on the
   normalisation windows, so a cell does not depend on its tile);
2. **expand**: every nucleus grows by up to ``max_distance_um`` (scikit-image
   ``expand_labels``: each pixel goes to the nearest nucleus, so growth stops halfway between
   neighbours) and keeps only signal pixels connected to it; **watershed**: the same
   allowed area split by a watershed on the smoothed signal seeded by the nuclei (borders
   fall on membrane ridges); **membrane**: a seeded watershed on the membrane composite
   itself, flooded from the nuclei upwards so that neighbouring cells meet on the membrane
   ridges, within ``max_distance_um`` and not limited by the signal threshold (a membrane
   marker is dark inside the cell it outlines); **ring**: the nucleus plus a fixed ring, no
   signal;
3. the nucleus itself always belongs to its cell.

Outlines are stored as star polygons (32 rays from the nucleus' star-convex centre, like the
nucleus polygons) for QuPath and for comparison with other segmentations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_components
from skimage.segmentation import expand_labels, watershed

SCALE_PERCENTILE = 99.0


@dataclass(frozen=True)
class WholeCellPlan:
    """The per-slide settings of whole-cell growth (small and picklable).

    ``channels`` are indices into the slide's channels; ``scales`` their 99th percentiles;
    ``threshold`` the Otsu cut of the smoothed, scaled sum; distances in working pixels.
    """

    method: str
    channels: tuple[int, ...]
    scales: tuple[float, ...]
    threshold: float
    max_distance_px: float
    smooth_px: float
    ring_px: float

    def to_json(self, names: tuple[str, ...], working_mpp: float) -> dict:
        """JSON record for features.json (channel names, distances in um)."""
        return {"method": self.method, "channels": [names[i] for i in self.channels],
                "scales": list(self.scales), "threshold": self.threshold,
                "max_distance_um": self.max_distance_px * working_mpp,
                "smooth_um": self.smooth_px * working_mpp,
                "ring_um": self.ring_px * working_mpp}


def membrane_signal(image: np.ndarray, channels: tuple[int, ...], scales: tuple[float, ...], *,
                    smooth_px: float) -> np.ndarray:
    """The smoothed sum of ``image[..., channels] / scales`` (``(H, W)`` float32).

    Examples
    --------
    >>> img = np.zeros((5, 5, 2), np.float32); img[2, 2] = (4, 2)
    >>> float(membrane_signal(img, (0, 1), (4.0, 2.0), smooth_px=0)[2, 2])
    2.0
    """
    signal = np.zeros(image.shape[:2], dtype=np.float32)
    for index, scale in zip(channels, scales, strict=True):
        signal += image[..., index].astype(np.float32) / np.float32(scale)
    if smooth_px > 0:
        signal = ndi.gaussian_filter(signal, smooth_px, mode="nearest", truncate=3.0)
    return signal


def plan_whole_cells(windows: list[np.ndarray], *, method: str, channels: tuple[int, ...],
                     max_distance_px: float, smooth_px: float,
                     ring_px: float) -> WholeCellPlan:
    """Per-slide channel scales and signal threshold from sample windows of the slide.

    Parameters
    ----------
    windows
        ``(h, w, C)`` windows of the slide at the working resolution (the normalisation
        lattice, fixed independently of tiling).
    method, channels, max_distance_px, smooth_px, ring_px
        As in ``cells.whole_cell`` (distances in working pixels).

    Returns
    -------
    WholeCellPlan
    """
    if method == "ring" or not channels or not windows:
        return WholeCellPlan("ring" if method == "ring" or not channels else method, channels,
                             tuple(1.0 for _ in channels), 0.0, max_distance_px, smooth_px,
                             ring_px)
    scales = []
    for index in channels:
        values = np.concatenate([w[..., index].ravel() for w in windows]).astype(np.float64)
        scale = float(np.percentile(values, SCALE_PERCENTILE)) if values.size else 0.0
        positive = values[values > 0]
        if scale <= 0 and positive.size:  # sparse counts (MIBI, IMC): scale by the stained pixels
            scale = float(np.percentile(positive, SCALE_PERCENTILE))
        scales.append(scale if scale > 0 else 1.0)
    signal = np.concatenate([membrane_signal(w, channels, tuple(scales), smooth_px=smooth_px)
                             .ravel() for w in windows])
    threshold = float(threshold_otsu(signal)) if np.ptp(signal) > 0 else float(signal.max())
    return WholeCellPlan(method, channels, tuple(scales), threshold, max_distance_px,
                         smooth_px, ring_px)


def grow_cells(nuclei: np.ndarray, image: np.ndarray, plan: WholeCellPlan) -> np.ndarray:
    """Whole-cell labels (same ids as ``nuclei``) grown from nuclei into the signal.

    Parameters
    ----------
    nuclei
        ``(H, W)`` nucleus instance labels (0 = background).
    image
        ``(H, W, C)`` pixels of the same box.
    plan
        From :func:`plan_whole_cells`.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` cell labels; every nucleus pixel keeps its label.

    Examples
    --------
    >>> nuc = np.zeros((1, 9), int); nuc[0, 4] = 1
    >>> img = np.zeros((1, 9, 1), np.float32); img[0, 2:7] = 1
    >>> plan = WholeCellPlan("expand", (0,), (1.0,), 0.5, 3.0, 0.0, 1.0)
    >>> grow_cells(nuc, img, plan).tolist()
    [[0, 0, 1, 1, 1, 1, 1, 0, 0]]
    """
    nuclei = np.asarray(nuclei)
    if plan.method == "ring":
        return expand_labels(nuclei, distance=plan.ring_px)
    reach = expand_labels(nuclei, distance=plan.max_distance_px)
    signal = membrane_signal(image, plan.channels, plan.scales, smooth_px=plan.smooth_px)
    allowed = (signal > plan.threshold) & (reach > 0)
    allowed |= nuclei > 0
    if plan.method == "membrane":
        cells = watershed(signal, markers=nuclei, mask=(reach > 0) | (nuclei > 0))
    elif plan.method == "watershed":
        cells = watershed(-signal, markers=nuclei, mask=allowed)
    else:
        cells = np.where(allowed, reach, 0)
    cells[nuclei > 0] = nuclei[nuclei > 0]
    # keep each cell's part that touches its nucleus (no islands across a gap in the signal)
    pieces = connected_components(cells, background=0, connectivity=1)
    keep = np.zeros(int(pieces.max()) + 1, dtype=bool)
    keep[np.unique(pieces[nuclei > 0])] = True
    keep[0] = False
    return np.where(keep[pieces], cells, 0)


def star_polygons(cells: np.ndarray, label_ids: np.ndarray, centres: np.ndarray, *,
                  n_rays: int = 32, max_radius_px: float = 64.0,
                  step_px: float = 0.5) -> np.ndarray:
    """Star polygons of labelled cells: along each of ``n_rays`` rays from the centre, the
    last point inside the cell before the ray first leaves it.

    Returns
    -------
    numpy.ndarray
        ``(len(label_ids), 2, n_rays)`` row and column coordinates (pixels of ``cells``).

    Examples
    --------
    >>> cells = np.zeros((11, 11), int); cells[3:8, 3:8] = 1
    >>> poly = star_polygons(cells, np.array([1]), np.array([[5.0, 5.0]]), n_rays=4)
    >>> poly[0].round(1).tolist()
    [[7.0, 5.0, 3.0, 5.0], [5.0, 7.0, 5.0, 3.0]]
    """
    n = len(label_ids)
    angles = np.arange(n_rays) * (2 * np.pi / n_rays)
    dy, dx = np.cos(angles), np.sin(angles)
    radii = np.arange(0.0, max_radius_px + step_px, step_px)
    out = np.zeros((n, 2, n_rays), dtype=np.float64)
    if n == 0:
        return out
    height, width = cells.shape
    chunk = max(1, 200_000 // (n_rays * len(radii)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        cy = centres[start:stop, 0][:, None, None]
        cx = centres[start:stop, 1][:, None, None]
        rows = cy + dy[None, :, None] * radii[None, None, :]
        cols = cx + dx[None, :, None] * radii[None, None, :]
        r = np.clip(np.rint(rows).astype(np.int64), 0, height - 1)
        c = np.clip(np.rint(cols).astype(np.int64), 0, width - 1)
        inside = cells[r, c] == label_ids[start:stop, None, None]
        inside &= (rows >= -0.5) & (rows < height - 0.5) & (cols >= -0.5) & (cols < width - 0.5)
        inside[..., 0] = True
        first_out = np.where(inside.all(axis=2), len(radii), np.argmin(inside, axis=2))
        last_in = radii[np.maximum(first_out - 1, 0)]
        out[start:stop, 0] = centres[start:stop, 0, None] + dy[None] * last_in
        out[start:stop, 1] = centres[start:stop, 1, None] + dx[None] * last_in
    return out
