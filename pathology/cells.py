"""Per-nucleus measurements of one tile: position, shape, polygon and stain intensities.

Only the nuclei that the tile owns (star-convex centre inside the tile core) are measured, so
the parts of all tiles together hold each nucleus once.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
from skimage.color import hed_from_rgb
from skimage.measure import regionprops_table

from pathology.nuclei import TileNuclei
from pathology.tiles import Tile

SHAPE_PROPERTIES = ("label", "area", "centroid", "perimeter", "eccentricity", "solidity",
                    "axis_major_length", "axis_minor_length", "intensity_mean")
STAIN_NAMES = ("hematoxylin", "eosin", "dab")


def optical_density(rgb: np.ndarray, *, background: float = 255.0) -> np.ndarray:
    """Optical density ``-log10(I / I0)`` per RGB channel (``I`` clipped to [1, I0]).

    Examples
    --------
    >>> float(optical_density(np.array([[[255, 25.5, 2.55]]]))[0, 0, 1].round(6))
    1.0
    """
    rgb = np.clip(np.asarray(rgb, dtype=np.float32), 1.0, background)
    return -np.log10(rgb / background)


def stain_densities(rgb: np.ndarray, *, background: float = 255.0) -> np.ndarray:
    """Hematoxylin, eosin and DAB optical densities by colour deconvolution.

    Uses the Ruifrok & Johnston stain vectors of scikit-image (``hed_from_rgb``) on true
    optical densities, so the values are in OD units (absorbance), comparable across slides.

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` float32: hematoxylin, eosin, DAB.
    """
    od = optical_density(rgb[..., :3], background=background)
    return (od @ hed_from_rgb.astype(np.float32)).astype(np.float32)


def safe_channel_name(name: str) -> str:
    """Lowercase ASCII column fragment for a channel name.

    Examples
    --------
    >>> safe_channel_name("CD8 (Opal 520)")
    'cd8_opal_520'
    """
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "channel"


def measure_tile(tile: Tile, nuclei: TileNuclei, image: np.ndarray, *, kind: str,
                 working_mpp: float, level0_mpp: float, channels: tuple[str, ...],
                 min_area_um2: float = 0.0, background: float = 255.0) -> pa.Table:
    """Measure the nuclei that ``tile`` owns.

    Parameters
    ----------
    tile
        The tile; its read box is where ``image`` and ``nuclei`` come from.
    nuclei
        StarDist output on the read box.
    image
        ``(H, W, C)`` read-box pixels at the working resolution (all channels).
    kind
        ``"brightfield"``: hematoxylin/eosin/DAB optical densities; ``"fluorescence"``: mean
        intensity per channel.
    working_mpp, level0_mpp
        Pixel sizes of the working resolution and of level 0 (for level-0 coordinates).
    channels
        Channel names (fluorescence column names).
    min_area_um2
        Smaller nuclei are dropped.

    Returns
    -------
    pyarrow.Table
        One row per owned nucleus, ordered by star-convex centre (row, then column).
    """
    n = len(nuclei.prob)
    if n:
        global_rows = nuclei.points[:, 0] + tile.read_y
        global_cols = nuclei.points[:, 1] + tile.read_x
        owned = np.flatnonzero(tile.core_contains(global_cols, global_rows))
    else:
        owned = np.zeros(0, dtype=np.int64)
    if kind == "brightfield":
        intensity = stain_densities(image, background=background)
        intensity_names = [f"nucleus_{s}_od" for s in STAIN_NAMES]
    else:
        intensity = image.astype(np.float32)
        intensity_names = [f"nucleus_{safe_channel_name(c)}_mean" for c in channels]
    keep = np.isin(nuclei.labels, owned + 1)
    labels = np.where(keep, nuclei.labels, 0)
    props = regionprops_table(labels, intensity_image=intensity, properties=SHAPE_PROPERTIES)
    label_ids = np.asarray(props["label"], dtype=np.int64)
    index = label_ids - 1
    area_um2 = np.asarray(props["area"], dtype=np.float64) * working_mpp**2
    valid = area_um2 >= min_area_um2
    index, label_ids = index[valid], label_ids[valid]

    def col(name: str) -> np.ndarray:
        return np.asarray(props[name], dtype=np.float64)[valid]

    cy = col("centroid-0") + tile.read_y + 0.5
    cx = col("centroid-1") + tile.read_x + 0.5
    order = np.lexsort((nuclei.points[index, 1], nuclei.points[index, 0]))
    coord = nuclei.coord[index]
    poly_y = ((coord[:, 0, :] + tile.read_y + 0.5) * working_mpp).astype(np.float32)
    poly_x = ((coord[:, 1, :] + tile.read_x + 0.5) * working_mpp).astype(np.float32)
    columns: dict[str, np.ndarray | pa.Array] = {
        "tile_index": np.full(len(index), tile.index, dtype=np.int32),
        "x_um": cx * working_mpp,
        "y_um": cy * working_mpp,
        "x_px": cx * working_mpp / level0_mpp,
        "y_px": cy * working_mpp / level0_mpp,
        "area_um2": area_um2[valid],
        "perimeter_um": col("perimeter") * working_mpp,
        "eccentricity": col("eccentricity"),
        "solidity": col("solidity"),
        "major_axis_um": col("axis_major_length") * working_mpp,
        "minor_axis_um": col("axis_minor_length") * working_mpp,
        "prob": nuclei.prob[index].astype(np.float32),
    }
    for channel, name in enumerate(intensity_names):
        columns[name] = col(f"intensity_mean-{channel}").astype(np.float32)
    n_rays = coord.shape[2] if coord.ndim == 3 else 0
    columns = {k: np.asarray(v)[order] for k, v in columns.items()}
    columns["poly_x_um"] = _fixed_list(poly_x[order], n_rays)
    columns["poly_y_um"] = _fixed_list(poly_y[order], n_rays)
    return pa.table(columns)


def _fixed_list(values: np.ndarray, width: int) -> pa.Array:
    flat = pa.array(values.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width) if width else pa.array(
        [[] for _ in range(len(values))], type=pa.list_(pa.float32()))
