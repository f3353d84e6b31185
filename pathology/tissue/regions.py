"""Tumour, stroma and invasive margin on the tissue-mask grid, and the region of every cell.

Regions are exclusive: the **margin** is the band of ``margin_width_um`` centred on the tumour
border (half inside, half outside the tumour, within tissue); **tumour** is the tumour inside
that band (the tumour centre); **stroma** is the rest of the tissue (or, when the annotations
draw Stroma, the drawn stroma; the remaining tissue is then **other**, counted in ``tissue``
only). The tumour comes from pathologist annotations (QuPath GeoJSON, level-0 pixels or um)
when a file exists, else from the smoothed fraction of tumour cells of a tumour marker (or,
when switched on, of the nuclear-size proxy). Without a source, only ``tissue`` is defined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon
from skimage.morphology import remove_small_objects

from pathology.config import RegionsSection
from pathology.io.folder import SlideFolder

REGIONS = ("tumour", "margin", "stroma")
OUTSIDE = "outside"
CODES = {"outside": 0, "tumour": 1, "margin": 2, "stroma": 3, "other": 4}
TUMOUR_CLASSES = ("tumor", "tumour", "tumor region", "tumour region")
STROMA_CLASSES = ("stroma", "tumor stroma", "tumour stroma")
# QuPath classes whose area is not analysable tissue: removed from the tissue mask
EXCLUDED_CLASSES = ("necrosis", "ignore", "ignore*", "artefact", "artifact", "background",
                    "exclude", "excluded")


class RegionError(ValueError):
    """An annotation file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class RegionMap:
    """Exclusive regions on a grid aligned with the tissue mask.

    Attributes
    ----------
    codes
        ``uint8`` grid: 0 outside tissue, 1 tumour, 2 margin, 3 stroma (all tissue is 3 when
        ``source == "none"``).
    mpp
        Grid pixel size (um).
    source
        ``annotation``, ``registered:<sample_id>``, ``marker:<phenotype>``,
        ``proxy:nuclear_size`` or ``none`` (no tumour known: only tissue totals).
    reason
        Why no tumour is known (``source == "none"``), or notes on the source.
    """

    codes: np.ndarray
    mpp: float
    source: str
    reason: str = ""

    @property
    def has_tumour(self) -> bool:
        """Whether tumour / margin / stroma are defined."""
        return self.source != "none"

    def areas_mm2(self) -> dict[str, float]:
        """Tissue area (mm^2) of each region and of the whole tissue."""
        counts = np.bincount(self.codes.ravel(), minlength=len(CODES))
        pixel_mm2 = self.mpp**2 / 1e6
        areas = {"tissue": float(counts[1:].sum() * pixel_mm2)}
        for name in REGIONS:
            areas[name] = float(counts[CODES[name]] * pixel_mm2) if self.has_tumour else np.nan
        return areas

    def code_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Region code of points (0 for points outside the grid or the tissue)."""
        rows = np.floor(np.asarray(y_um) / self.mpp).astype(np.int64)
        cols = np.floor(np.asarray(x_um) / self.mpp).astype(np.int64)
        inside = (rows >= 0) & (cols >= 0) & (rows < self.codes.shape[0]) & (
            cols < self.codes.shape[1])
        out = np.zeros(len(rows), dtype=np.uint8)
        out[inside] = self.codes[rows[inside], cols[inside]]
        return out


def region_names(codes: np.ndarray, *, has_tumour: bool) -> np.ndarray:
    """Region name per cell from codes (``tissue`` for tissue cells when no tumour is known)."""
    names = np.array(["outside", "tumour", "margin", "stroma", "other"], dtype=object)
    if not has_tumour:
        names = np.array(["outside", "tissue", "tissue", "tissue", "tissue"], dtype=object)
    return names[codes]


def regions_from_tumour(tumour: np.ndarray, tissue: np.ndarray, *, mpp: float,
                        margin_width_um: float, source: str,
                        stroma: np.ndarray | None = None) -> RegionMap:
    """Split tissue into tumour centre, margin band and stroma around a tumour mask.

    With a ``stroma`` mask (annotated Stroma), only that part of the tissue outside the tumour
    and the band is stroma; the rest is ``other`` (counted in ``tissue`` only).

    Examples
    --------
    >>> tissue = np.ones((10, 10), bool); tumour = np.zeros_like(tissue); tumour[:, :5] = True
    >>> r = regions_from_tumour(tumour, tissue, mpp=1.0, margin_width_um=2, source="test")
    >>> r.codes[0].tolist()
    [1, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    """
    tissue = tissue.astype(bool)
    tumour = tumour.astype(bool) & tissue
    codes = np.zeros(tissue.shape, dtype=np.uint8)
    codes[tissue] = CODES["stroma"]
    if stroma is not None:
        codes[tissue & ~stroma.astype(bool)] = CODES["other"]
    if not tumour.any():
        return RegionMap(codes, mpp, source)
    half = margin_width_um / 2 / mpp
    inside = ndi.distance_transform_edt(tumour)  # distance to the nearest non-tumour pixel
    outside = ndi.distance_transform_edt(~tumour)
    # pixel centres: a pixel at distance d (in pixels) from the border lies d - 0.5 from it
    band = np.where(tumour, inside - 0.5, outside - 0.5) < half
    codes[tissue & tumour] = CODES["tumour"]
    codes[tissue & band] = CODES["margin"]
    return RegionMap(codes, mpp, source)


def automatic_tumour(x_um: np.ndarray, y_um: np.ndarray, is_tumour: np.ndarray,
                     tissue: np.ndarray, *, mpp: float, config: RegionsSection) -> np.ndarray:
    """Tumour mask from the smoothed local fraction of tumour cells among all cells.

    Returns
    -------
    numpy.ndarray
        Boolean grid like ``tissue``.
    """
    shape = tissue.shape
    rows = np.clip(np.floor(np.asarray(y_um) / mpp).astype(np.int64), 0, shape[0] - 1)
    cols = np.clip(np.floor(np.asarray(x_um) / mpp).astype(np.int64), 0, shape[1] - 1)
    flat = rows * shape[1] + cols
    size = shape[0] * shape[1]
    all_cells = np.bincount(flat, minlength=size).reshape(shape).astype(np.float64)
    tumour_cells = np.bincount(flat, weights=np.asarray(is_tumour, dtype=np.float64),
                               minlength=size).reshape(shape)
    sigma = config.tumour_smooth_um / mpp
    if sigma > 0:
        all_cells = ndi.gaussian_filter(all_cells, sigma)
        tumour_cells = ndi.gaussian_filter(tumour_cells, sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(all_cells > 1e-3 * all_cells.max(initial=0) + 1e-12,
                            tumour_cells / all_cells, 0.0)
    tumour = (fraction >= config.tumour_min_fraction) & tissue.astype(bool)
    min_px = int(config.tumour_min_area_um2 / mpp**2)
    if min_px > 1:
        tumour = remove_small_objects(tumour, max_size=min_px - 1)
    return tumour


def read_annotation_classes(path: Path, shape: tuple[int, int], *, mpp: float,
                            coordinate_um: float) -> dict[str, np.ndarray]:
    """Rasterise every classified polygon of a QuPath GeoJSON file onto the grid, per class.

    Parameters
    ----------
    path
        GeoJSON: a FeatureCollection, a Feature list or one Feature; a feature's class is its
        ``classification.name`` (or ``name``), lower-cased. Holes are honoured.
    shape
        Grid shape.
    mpp
        Grid pixel size (um).
    coordinate_um
        um per coordinate unit (level-0 mpp for pixel coordinates, 1 for um).

    Returns
    -------
    dict
        Class name (lower case) -> boolean grid.

    Raises
    ------
    RegionError
        Unreadable file.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RegionError(f"{path}: cannot read GeoJSON ({error})") from error
    features = data.get("features", []) if isinstance(data, dict) else data
    if isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    masks: dict[str, np.ndarray] = {}
    scale = coordinate_um / mpp
    for feature in features:
        props = feature.get("properties") or {}
        cls = props.get("classification") or {}
        name = str((cls.get("name") if isinstance(cls, dict) else cls) or props.get("name")
                   or "").strip().lower()
        if not name:
            continue
        geometry = feature.get("geometry") or {}
        kind = geometry.get("type")
        polygons = ([geometry.get("coordinates", [])] if kind == "Polygon" else
                    geometry.get("coordinates", []) if kind == "MultiPolygon" else [])
        for rings in polygons:
            piece = np.zeros(shape, dtype=bool)
            for index, ring in enumerate(rings):
                xy = np.asarray(ring, dtype=np.float64).reshape(-1, 2) * scale
                rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=shape)
                piece[rr, cc] = index == 0  # exterior ring fills, holes clear
            masks[name] = masks.get(name, np.zeros(shape, dtype=bool)) | piece
    return masks


def annotation_masks(masks: dict[str, np.ndarray], shape: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Tumour, stroma (None when no Stroma was drawn) and excluded areas from annotation classes.

    Examples
    --------
    >>> grid = np.ones((2, 2), bool)
    >>> tumour, stroma, excluded = annotation_masks({"tumor": grid, "necrosis": ~grid}, (2, 2))
    >>> bool(tumour.all()), stroma, bool(excluded.any())
    (True, None, False)
    """
    def union(names: tuple[str, ...]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        for name in names:
            if name in masks:
                out |= masks[name]
        return out

    stroma = union(STROMA_CLASSES) if any(n in masks for n in STROMA_CLASSES) else None
    return union(TUMOUR_CLASSES), stroma, union(EXCLUDED_CLASSES)


def read_annotation_tumour(path: Path, shape: tuple[int, int], *, mpp: float,
                           coordinate_um: float) -> np.ndarray:
    """Rasterise the tumour polygons (Tumor / Tumour) of a QuPath GeoJSON file onto the grid.

    Parameters as :func:`read_annotation_classes`.

    Raises
    ------
    RegionError
        Unreadable file, or no tumour polygon in it.
    """
    masks = read_annotation_classes(path, shape, mpp=mpp, coordinate_um=coordinate_um)
    if not any(name in masks for name in TUMOUR_CLASSES):
        raise RegionError(f"{path}: no Tumor/Tumour polygon (QuPath classification name)")
    return annotation_masks(masks, shape)[0]


# -- region maps in the slide folder's store.zarr ---------------------------------------------

REGION_ARRAY = "regions"  # the slide's own regions (its reference's, for serial sections)

def _group(folder: Path, mode: str):
    import zarr

    return zarr.open_group(str(SlideFolder(Path(folder)).store), mode=mode)


def save_region_map(folder: Path, regions: RegionMap, *, name: str = REGION_ARRAY,
                    **attrs) -> None:
    """Store a slide's region codes (its grid pixel size and source as attributes)."""
    group = _group(folder, "a")
    array = group.create_array(name, shape=regions.codes.shape, dtype="uint8",
                               chunks=(min(1024, regions.codes.shape[0]),
                                       min(1024, regions.codes.shape[1])), overwrite=True)
    array[...] = regions.codes
    array.attrs.update({"mpp": regions.mpp, "source": regions.source,
                        "reason": regions.reason, **attrs})


def load_region_map(folder: Path, *, name: str = REGION_ARRAY) -> RegionMap | None:
    """A stored region map, or ``None``."""
    path = SlideFolder(Path(folder)).store
    if not path.exists():
        return None
    try:
        array = _group(folder, "r")[name]
    except KeyError:
        return None
    return RegionMap(np.asarray(array[...]), float(array.attrs["mpp"]),
                     str(array.attrs["source"]), str(array.attrs.get("reason", "")))


def drop_region_map(folder: Path, name: str) -> None:
    """Remove a stored region map, if any."""
    path = SlideFolder(Path(folder)).store
    if path.exists():
        group = _group(folder, "a")
        if name in group:
            del group[name]
