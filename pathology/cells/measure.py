"""Per-nucleus measurements of one tile: position, shape, polygon and stain intensities.

Only the nuclei that the tile owns (star-convex centre inside the tile core) are measured, so
the parts of all tiles together hold each nucleus once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import grid_points_in_poly
from skimage.segmentation import expand_labels

from pathology.io.metadata import safe_channel_name
from pathology.segmentation.nuclei import TileNuclei
from pathology.segmentation.stains import stain_densities
from pathology.segmentation.tiles import Tile
from pathology.segmentation.wholecell import WholeCellPlan, grow_cells, star_polygons

STAIN_NAMES = ("hematoxylin", "eosin", "dab")


def intensity_image(image: np.ndarray, *, kind: str, channels: tuple[str, ...],
                    background: float = 255.0,
                    unmixing: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-pixel intensities to average per cell and the column-name stems.

    Brightfield: hematoxylin, eosin and DAB optical densities (stems ``hematoxylin_od``...);
    fluorescence: the raw channels (stems ``<channel>_mean``).
    """
    if kind == "brightfield":
        return (stain_densities(image, background=background, unmixing=unmixing),
                [f"{s}_od" for s in STAIN_NAMES])
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != len(channels):
        raise ValueError(f"image has {image.shape[-1]} channels but {len(channels)} channel "
                         f"names were given ({', '.join(channels)})")
    return image.astype(np.float32), [f"{safe_channel_name(c)}_mean" for c in channels]


def label_measurements(labels: np.ndarray, intensity: np.ndarray) -> dict[str, np.ndarray]:
    """Shape and mean intensity of every label, as scikit-image's regionprops defines them.

    Everything is computed for all labels at once, from the labelled pixels only: area,
    centroid, eccentricity and axis lengths from pixel moments (``np.bincount``), perimeter
    by scikit-image's 4-neighbourhood border weighting, solidity from the convex hull of the
    pixels' diamond corners (scikit-image's ``convex_hull_image``). Tested equal to
    ``regionprops_table`` on real nuclei.

    Returns
    -------
    dict
        ``label, area, centroid-0, centroid-1, perimeter, eccentricity, solidity,
        axis_major_length, axis_minor_length, intensity_mean-<c>`` (arrays ordered by label).

    Examples
    --------
    >>> lab = np.zeros((6, 6), int); lab[1:3, 1:5] = 1
    >>> m = label_measurements(lab, np.ones((6, 6, 1)))
    >>> m["area"].tolist(), m["centroid-1"].tolist(), m["perimeter"].tolist()
    ([8.0], [2.5], [8.0])
    """
    labels = np.asarray(labels, dtype=np.int64)
    size = int(labels.max()) + 1 if labels.size else 1
    foreground = labels > 0
    flat = labels[foreground]
    rows, cols = (index.astype(np.float64) for index in np.nonzero(foreground))
    area = np.bincount(flat, minlength=size).astype(np.float64)
    ids = np.flatnonzero(area[1:]) + 1
    safe_area = np.maximum(area, 1)
    mean_r = np.bincount(flat, rows, size) / safe_area
    mean_c = np.bincount(flat, cols, size) / safe_area
    dr, dc = rows - mean_r[flat], cols - mean_c[flat]
    var_r = np.bincount(flat, dr * dr, size) / safe_area
    var_c = np.bincount(flat, dc * dc, size) / safe_area
    cov = np.bincount(flat, dr * dc, size) / safe_area
    half_sum, root = (var_r + var_c) / 2, np.sqrt(((var_r - var_c) / 2) ** 2 + cov**2)
    major, minor = half_sum + root, np.clip(half_sum - root, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(major > 0, np.sqrt(np.clip(1 - minor / major, 0, 1)), 0.0)
    border, perimeter = _borders_and_perimeters(labels, size)
    out = {"label": ids, "area": area[ids], "centroid-0": mean_r[ids],
           "centroid-1": mean_c[ids], "perimeter": perimeter[ids],
           "eccentricity": eccentricity[ids],
           "solidity": area[ids] / _convex_areas(labels, border, ids),
           "axis_major_length": 4 * np.sqrt(major[ids]),
           "axis_minor_length": 4 * np.sqrt(minor[ids])}
    for c in range(intensity.shape[-1]):
        sums = np.bincount(flat, intensity[..., c][foreground].astype(np.float64), size)
        out[f"intensity_mean-{c}"] = sums[ids] / area[ids]
    return out


# scikit-image's perimeter (neighbourhood 4): border pixels coded 1 + 2 x (4-neighbours on the
# border) + 10 x (diagonal neighbours on the border), each code weighted by its edge length.
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
_FOUR = ((-1, 0), (1, 0), (0, -1), (0, 1))
_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))
_DIAMOND2 = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)  # half-pixels


def _borders_and_perimeters(labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Border pixels of every label (a 4-neighbour outside it) and its perimeter."""
    height, width = labels.shape
    padded = np.pad(labels, 1)

    def shifted(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
        return array[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    inside = labels > 0
    interior = inside.copy()
    for dy, dx in _FOUR:
        interior &= shifted(padded, dy, dx) == labels
    border = inside & ~interior
    padded_border = np.pad(border, 1)
    code = border.astype(np.int64)
    for weight, offsets in ((2, _FOUR), (10, _DIAGONAL)):
        for dy, dx in offsets:
            code += weight * (shifted(padded_border, dy, dx) & (shifted(padded, dy, dx) == labels))
    histogram = np.bincount(labels[border] * 50 + code[border], minlength=size * 50)
    return border, histogram.reshape(size, 50).astype(np.float64) @ _PERIMETER_WEIGHTS


def _convex_areas(labels: np.ndarray, border: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pixel count of each label's convex hull image, as scikit-image's ``area_convex``: the
    hull of the border pixels' diamond corners, pixel centres inside or on it."""
    slices = ndi.find_objects(labels)
    out = np.empty(len(ids), dtype=np.float64)
    for k, label in enumerate(ids):
        box = slices[label - 1]
        ys, xs = np.nonzero(border[box] & (labels[box] == label))
        # Diamond corners in half-pixel units shifted to be >= 0, deduplicated as
        # scikit-image does (one integer key per corner).
        keys = np.unique(((2 * ys[:, None] + 1 + _DIAMOND2[:, 0]) << 32)
                         + (2 * xs[:, None] + 1 + _DIAMOND2[:, 1]))
        corners = (np.stack([keys >> 32, keys & 0xFFFFFFFF], axis=1) - 1) / 2.0
        try:
            hull = ConvexHull(corners)
        except QhullError:  # cannot happen with diamond corners; keep regionprops' meaning
            out[k] = np.nan
            continue
        inside = grid_points_in_poly(labels[box].shape, hull.points[hull.vertices],
                                     binarize=False)
        out[k] = np.count_nonzero(inside >= 1)
    return out


def ring_means(labels: np.ndarray, intensity: np.ndarray, label_ids: np.ndarray, *,
               ring_px: float) -> np.ndarray:
    """Mean intensity in a ring of ``ring_px`` pixels grown around each labelled nucleus.

    The ring is ``expand_labels(labels, ring_px)`` minus every nucleus (rings stop halfway
    between touching cells and never cover a nucleus), so it stands for the cytoplasm and
    membrane of the cell.

    Parameters
    ----------
    labels
        ``(H, W)`` instance labels of all nuclei in the image (0 = background).
    intensity
        ``(H, W, C)`` per-pixel intensities.
    label_ids
        Labels whose rings are wanted, in the order of the output rows.
    ring_px
        Ring width in pixels.

    Returns
    -------
    numpy.ndarray
        ``(len(label_ids), C)`` float32; NaN where a nucleus has no ring pixel.

    Examples
    --------
    >>> lab = np.zeros((9, 9), int); lab[4, 4] = 1
    >>> img = np.ones((9, 9, 1)); img[4, 4] = 5
    >>> ring_means(lab, img, np.array([1]), ring_px=1).tolist()
    [[1.0]]
    """
    out = np.full((len(label_ids), intensity.shape[-1]), np.nan, dtype=np.float32)
    if not len(label_ids) or ring_px <= 0:
        return out
    ring = expand_labels(labels, distance=ring_px)
    ring[labels > 0] = 0
    ring[~_member_lookup(label_ids, int(ring.max()))[ring]] = 0
    flat = ring.ravel()
    size = int(labels.max()) + 1
    counts = np.bincount(flat, minlength=size)[label_ids].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        for c in range(intensity.shape[-1]):
            sums = np.bincount(flat, weights=intensity[..., c].ravel(), minlength=size)
            out[:, c] = np.where(counts > 0, sums[label_ids] / counts, np.nan)
    return out


def _member_lookup(members: np.ndarray, largest: int) -> np.ndarray:
    """Boolean table over labels 0..largest, True for ``members`` (``table[labels]`` is
    ``np.isin(labels, members)`` without sorting the image)."""
    table = np.zeros(max(largest, int(np.max(members, initial=0))) + 1, dtype=bool)
    table[np.asarray(members, dtype=np.int64)] = True
    return table


def measure_labels(labels: np.ndarray, image: np.ndarray, *, kind: str, mpp: float,
                   channels: tuple[str, ...] = (), ring_width_um: float = 2.0,
                   background: float = 255.0, cell_labels: np.ndarray | None = None) -> pa.Table:
    """Measure every nucleus of a labelled image (no tiling): the cells.parquet columns.

    For annotated images, external segmentations and tests; a slide goes through
    :func:`measure_tile`. Coordinates are in um from the image's top-left corner.

    Parameters
    ----------
    labels
        ``(H, W)`` instance labels (0 = background).
    image
        ``(H, W, C)`` pixels (RGB for brightfield, one plane per channel for fluorescence).
    kind
        ``"brightfield"`` or ``"fluorescence"``.
    mpp
        Pixel size (um/px).
    channels
        Fluorescence channel names, one per plane.
    ring_width_um
        Ring width for the ``ring_*`` columns (0 = none).
    cell_labels
        Fluorescence: whole-cell labels with the ids of ``labels`` (e.g. from
        :func:`pathology.segmentation.wholecell.grow_cells`); default the nucleus plus its ring.

    Returns
    -------
    pyarrow.Table
        ``cell_id, label, x_um, y_um, area_um2, perimeter_um, eccentricity, solidity,
        major_axis_um, minor_axis_um, nucleus_*, ring_*``; fluorescence also
        ``cell_area_um2, cell_*``.
    """
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in shape")
    intensity, stems = intensity_image(image, kind=kind, channels=channels,
                                       background=background)
    props = label_measurements(labels, intensity)
    ids = np.asarray(props["label"], dtype=np.int64)
    columns: dict[str, np.ndarray] = {
        "cell_id": np.arange(len(ids), dtype=np.int64), "label": ids,
        "x_um": (np.asarray(props["centroid-1"]) + 0.5) * mpp,
        "y_um": (np.asarray(props["centroid-0"]) + 0.5) * mpp,
        "area_um2": np.asarray(props["area"], dtype=np.float64) * mpp**2,
        "perimeter_um": np.asarray(props["perimeter"]) * mpp,
        "eccentricity": np.asarray(props["eccentricity"]),
        "solidity": np.asarray(props["solidity"]),
        "major_axis_um": np.asarray(props["axis_major_length"]) * mpp,
        "minor_axis_um": np.asarray(props["axis_minor_length"]) * mpp,
    }
    for c, stem in enumerate(stems):
        columns[f"nucleus_{stem}"] = np.asarray(props[f"intensity_mean-{c}"], dtype=np.float32)
    if ring_width_um > 0:
        rings = ring_means(labels, intensity, ids, ring_px=ring_width_um / mpp)
        for c, stem in enumerate(stems):
            columns[f"ring_{stem}"] = rings[:, c]
    if kind == "fluorescence":
        if cell_labels is None:
            cell_labels = (expand_labels(labels, distance=ring_width_um / mpp)
                           if ring_width_um > 0 else labels)
        area, means = cell_means(np.asarray(cell_labels), intensity, ids)
        columns["cell_area_um2"] = area * mpp**2
        for c, stem in enumerate(stems):
            columns[f"cell_{stem}"] = means[:, c]
    return pa.table(columns)


def cell_means(cells: np.ndarray, intensity: np.ndarray,
               label_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel count and mean intensity per channel of each whole cell.

    Returns
    -------
    area, means
        ``(n,)`` pixel counts and ``(n, C)`` float32 means (NaN for a cell without pixels).

    Examples
    --------
    >>> cells = np.array([[1, 1, 2]]); img = np.array([[[1.0], [3.0], [5.0]]])
    >>> area, means = cell_means(cells, img, np.array([2, 1]))
    >>> area.tolist(), means[:, 0].tolist()
    ([1.0, 2.0], [5.0, 2.0])
    """
    flat = np.asarray(cells, dtype=np.int64).ravel()
    size = max(int(flat.max(initial=0)), int(np.max(label_ids, initial=0))) + 1
    counts = np.bincount(flat, minlength=size)[label_ids].astype(np.float64)
    means = np.full((len(label_ids), intensity.shape[-1]), np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        for c in range(intensity.shape[-1]):
            sums = np.bincount(flat, weights=intensity[..., c].ravel(), minlength=size)
            means[:, c] = np.where(counts > 0, sums[label_ids] / counts, np.nan)
    return counts, means


def measure_tile(tile: Tile, nuclei: TileNuclei, image: np.ndarray, *, kind: str,
                 working_mpp: float, level0_mpp: float, channels: tuple[str, ...],
                 min_area_um2: float = 0.0, background: float = 255.0,
                 ring_width_um: float = 2.0, unmixing: np.ndarray | None = None,
                 whole_cell: WholeCellPlan | None = None) -> pa.Table:
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
    ring_width_um
        Width of the cytoplasm / membrane ring around each nucleus (``ring_*`` columns, mean
        intensity per channel); 0 = no ring columns. Rings are grown from all nuclei of the
        read box, so they stop between neighbours even across the tile border.
    unmixing
        Brightfield: optional per-slide optical-density-to-stain matrix
        (:mod:`pathology.segmentation.stains`); default the Ruifrok-Johnston vectors.
    whole_cell
        Fluorescence: how whole cells are grown from the nuclei of the read box
        (:mod:`pathology.segmentation.wholecell`); adds ``cell_area_um2``, ``cell_<channel>_mean``
        and the cell outline ``cell_poly_x_um`` / ``cell_poly_y_um``.

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
    intensity, stems = intensity_image(image, kind=kind, channels=channels,
                                       background=background, unmixing=unmixing)
    intensity_names = [f"nucleus_{stem}" for stem in stems]
    keep = _member_lookup(owned + 1, int(nuclei.labels.max(initial=0)))[nuclei.labels]
    labels = np.where(keep, nuclei.labels, 0)
    props = label_measurements(labels, intensity)
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
    if ring_width_um > 0:
        rings = ring_means(nuclei.labels, intensity, label_ids, ring_px=ring_width_um / working_mpp)
        for channel, stem in enumerate(stems):
            columns[f"ring_{stem}"] = rings[:, channel]
    n_rays = coord.shape[2] if coord.ndim == 3 else 0
    cell_poly = None
    if whole_cell is not None and kind == "fluorescence":
        cells = grow_cells(nuclei.labels, image, whole_cell)
        cell_area, means = cell_means(cells, intensity, label_ids)
        columns["cell_area_um2"] = cell_area * working_mpp**2
        for channel, stem in enumerate(stems):
            columns[f"cell_{stem}"] = means[:, channel]
        reach = max(whole_cell.max_distance_px, whole_cell.ring_px)
        cell_poly = star_polygons(cells, label_ids, nuclei.points[index].astype(np.float64),
                                  n_rays=max(n_rays, 1),
                                  max_radius_px=_largest_radius(coord, nuclei.points[index])
                                  + reach + 2)
    columns = {k: np.asarray(v)[order] for k, v in columns.items()}
    columns["poly_x_um"] = _fixed_list(poly_x[order], n_rays)
    columns["poly_y_um"] = _fixed_list(poly_y[order], n_rays)
    if cell_poly is not None:
        cell_y = ((cell_poly[:, 0, :] + tile.read_y + 0.5) * working_mpp).astype(np.float32)
        cell_x = ((cell_poly[:, 1, :] + tile.read_x + 0.5) * working_mpp).astype(np.float32)
        columns["cell_poly_x_um"] = _fixed_list(cell_x[order], cell_x.shape[1])
        columns["cell_poly_y_um"] = _fixed_list(cell_y[order], cell_y.shape[1])
    return pa.table(columns)


def _largest_radius(coord: np.ndarray, points: np.ndarray) -> float:
    """The longest ray of the nucleus polygons (px), 0 without nuclei."""
    if not len(points) or coord.ndim != 3:
        return 0.0
    dist = np.hypot(coord[:, 0, :] - points[:, 0, None], coord[:, 1, :] - points[:, 1, None])
    return float(dist.max())


def _fixed_list(values: np.ndarray, width: int) -> pa.Array:
    flat = pa.array(values.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width) if width else pa.array(
        [[] for _ in range(len(values))], type=pa.list_(pa.float32()))
