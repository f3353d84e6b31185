"""Masks to polygons, and the region of every tissue pixel, for overlays and QuPath export."""

from __future__ import annotations

from functools import reduce

import numpy as np
from scipy.spatial import cKDTree
from skimage.measure import find_contours

REGION_CODES = {"tumour": 1, "margin": 2, "stroma": 3}


def mask_polygons(mask: np.ndarray, *, mpp: float, simplify_px: float = 0.5):
    """The outline of a boolean mask as a shapely (Multi)Polygon in um, holes included.

    Pixel ``(r, c)`` covers ``[c*mpp, (c+1)*mpp] x [r*mpp, (r+1)*mpp]`` um; the outline
    follows the 0.5 iso-line between pixel centres.

    Examples
    --------
    >>> m = np.zeros((6, 6), bool); m[1:5, 1:5] = True; m[2:4, 2:4] = False
    >>> poly = mask_polygons(m, mpp=1.0, simplify_px=0)
    >>> len(poly.geoms[0].interiors) if hasattr(poly, "geoms") else len(poly.interiors)
    1
    """
    from shapely.geometry import Polygon
    from shapely.geometry.base import BaseGeometry
    from shapely.validation import make_valid

    if not mask.any():
        return Polygon()
    padded = np.pad(mask.astype(np.float32), 1)
    rings: list[BaseGeometry] = []
    for contour in find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        xy = (contour[:, ::-1] - 1 + 0.5) * mpp
        polygon = make_valid(Polygon(xy))
        if not polygon.is_empty:
            rings.append(polygon)
    if not rings:
        return Polygon()
    # Outer rings and holes alternate in nesting: XOR of all rings rebuilds the holes.
    shape = reduce(lambda a, b: a.symmetric_difference(b), rings)
    return shape.simplify(simplify_px * mpp) if simplify_px > 0 else shape


def region_raster(x_um: np.ndarray, y_um: np.ndarray, regions: np.ndarray,
                  tissue: np.ndarray, *, mpp: float) -> np.ndarray:
    """Region code of every tissue pixel: the region of the nearest cell.

    Parameters
    ----------
    x_um, y_um
        Cell centroids (um).
    regions
        Region name per cell (``tumour``, ``margin``, ``stroma``; other names are ignored).
    tissue
        Tissue mask on the target grid.
    mpp
        Pixel size of ``tissue``.

    Returns
    -------
    numpy.ndarray
        ``uint8`` codes (:data:`REGION_CODES`, 0 outside tissue or with no known region).
    """
    codes = np.zeros(tissue.shape, dtype=np.uint8)
    regions = np.asarray(regions).astype(str)
    known = np.isin(regions, list(REGION_CODES))
    if not known.any() or not tissue.any():
        return codes
    tree = cKDTree(np.column_stack([x_um[known], y_um[known]]))
    cell_codes = np.array([REGION_CODES[r] for r in regions[known]], dtype=np.uint8)
    rows, cols = np.nonzero(tissue)
    _, nearest = tree.query(np.column_stack([(cols + 0.5) * mpp, (rows + 0.5) * mpp]))
    codes[rows, cols] = cell_codes[nearest]
    return codes
