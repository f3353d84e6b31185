"""QC metrics of one slide: tissue and artefact areas, focus, stain distributions, nuclei.

:func:`slide_qc` works on an open :class:`~pathology.io.slide.Slide`, its tissue mask and
(optionally) its cells table; it reads nothing else and writes nothing. Artefact areas are
removed from the tissue before nuclei densities are computed, and the removed area is
reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pathology.config import QcSection
from pathology.io.slide import Slide
from pathology.qc.artefacts import (
    ARTEFACT_CODES,
    ARTEFACTS,
    FocusResult,
    bright_mask,
    dark_mask,
    focus_scores,
    optical_density,
    pen_mask,
    resize_mask,
)
from pathology.qc.flags import Flag, evaluate_flags
from pathology.segmentation.stains import stain_densities

PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class SlideQc:
    """Everything QC found on one slide.

    Attributes
    ----------
    overview
        The slide at ``mpp`` um/px (``(H, W, C)``, the slide's dtype).
    mpp
        Pixel size of the overview and of every mask.
    tissue
        Tissue mask as detected by the pipeline, resampled to the overview grid.
    artefacts
        One boolean mask per name in :data:`~pathology.qc.artefacts.ARTEFACTS`.
    metrics
        JSON-serialisable measurements (the ``metrics`` key of ``qc.json``).
    flags
        Every check, fired or not.
    focus
        Per-tile focus scores.
    """

    overview: np.ndarray
    mpp: float
    tissue: np.ndarray
    artefacts: dict[str, np.ndarray]
    metrics: dict
    flags: list[Flag]
    focus: FocusResult

    @property
    def clean(self) -> np.ndarray:
        """Tissue minus every artefact."""
        return self.tissue & ~self.artefact_union

    @property
    def artefact_union(self) -> np.ndarray:
        """Pixels of any artefact."""
        union = np.zeros_like(self.tissue)
        for mask in self.artefacts.values():
            union |= mask
        return union

    def artefact_codes(self) -> np.ndarray:
        """``uint8`` bit mask per pixel (focus 1, pen 2, dark 4, bright 8)."""
        codes = np.zeros(self.tissue.shape, dtype=np.uint8)
        for name, mask in self.artefacts.items():
            codes[mask] |= ARTEFACT_CODES[name]
        return codes

    @property
    def fired(self) -> list[Flag]:
        """The flags that fired."""
        return [f for f in self.flags if f.fired]


def _percentiles(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {f"p{p}": None for p in PERCENTILES}
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES),
                                               strict=True)}


def stain_metrics(overview: np.ndarray, clean: np.ndarray, *, kind: str,
                  channels: tuple[str, ...], cells: pd.DataFrame | None,
                  saturated_fraction: dict[str, float],
                  background: float = 255.0) -> dict:
    """Stain intensity distributions on clean tissue (and per nucleus when cells are given).

    Brightfield: hematoxylin, eosin and DAB optical densities (colour deconvolution) of the
    overview's clean tissue pixels. Fluorescence: each channel's raw intensity. Percentiles
    5, 25, 50, 75 and 95; ``nuclei`` holds the same for every ``nucleus_*`` intensity column.
    """
    out: dict = {}
    if kind == "brightfield":
        densities = stain_densities(overview[..., :3], background=background)
        for index, name in enumerate(("hematoxylin", "eosin", "dab")):
            out[name] = _percentiles(densities[..., index][clean])
    else:
        for index, name in enumerate(channels):
            out[name] = _percentiles(overview[..., index][clean].astype(np.float64))
        out["saturated_fraction"] = dict(saturated_fraction)
    if cells is not None:
        out["nuclei"] = {c: _percentiles(cells[c].to_numpy(dtype=np.float64))
                         for c in cells.columns
                         if c.startswith("nucleus_") and (c.endswith("_od") or
                                                          c.endswith("_mean"))}
    return out


COUNTERSTAIN_DAB_NEGATIVE_OD = 0.15  # nuclear DAB OD below which a nucleus shows its hematoxylin


def counterstain_metrics(cells: pd.DataFrame | None) -> dict:
    """How strongly the hematoxylin counterstain marks the nuclei of a brightfield IHC slide.

    DAB hides hematoxylin, so only DAB-negative nuclei (nuclear DAB OD below
    :data:`COUNTERSTAIN_DAB_NEGATIVE_OD`) count: the median hematoxylin OD of those nuclei, of
    the ring around them (the background they must stand out from) and the difference
    (``contrast``). A pale counterstain lowers the contrast, and the nuclei that the model then
    misses are DAB-negative ones, so IHC indices (Ki67, CD8 per nucleus) drift upwards.

    Returns
    -------
    dict
        ``n_dab_negative`` (None when it cannot be measured: no cells, or no hematoxylin, ring
        or DAB columns), ``nuclear_od``, ``ring_od``, ``contrast`` (None also when no nucleus
        is DAB-negative).

    Examples
    --------
    >>> cells = pd.DataFrame({"nucleus_hematoxylin_od": [0.30, 0.40, 0.90],
    ...                       "ring_hematoxylin_od": [0.10, 0.12, 0.20],
    ...                       "nucleus_dab_od": [0.02, 0.05, 0.60]})
    >>> round(counterstain_metrics(cells)["contrast"], 3)
    0.24
    """
    empty = {"n_dab_negative": None, "nuclear_od": None, "ring_od": None, "contrast": None}
    needed = ("nucleus_hematoxylin_od", "ring_hematoxylin_od", "nucleus_dab_od")
    if cells is None or not len(cells) or any(c not in cells for c in needed):
        return empty
    empty["n_dab_negative"] = 0
    negative = cells["nucleus_dab_od"].to_numpy(dtype=np.float64) < COUNTERSTAIN_DAB_NEGATIVE_OD
    if not negative.any():
        return empty
    nuclear = cells["nucleus_hematoxylin_od"].to_numpy(dtype=np.float64)[negative]
    ring = cells["ring_hematoxylin_od"].to_numpy(dtype=np.float64)[negative]
    finite = np.isfinite(nuclear) & np.isfinite(ring)
    if not finite.any():
        return empty
    return {"n_dab_negative": int(finite.sum()), "nuclear_od": float(np.median(nuclear[finite])),
            "ring_od": float(np.median(ring[finite])),
            "contrast": float(np.median(nuclear[finite] - ring[finite]))}


def nuclei_metrics(cells: pd.DataFrame | None, clean: np.ndarray, *, mpp: float) -> dict:
    """Nuclei on clean tissue: count, density per mm^2 and median area."""
    if cells is None:
        return {"n": None, "n_clean": None, "density_per_mm2": None, "median_area_um2": None}
    area_mm2 = float(clean.sum()) * mpp**2 / 1e6
    rows = np.floor(cells["y_um"].to_numpy() / mpp).astype(np.int64)
    cols = np.floor(cells["x_um"].to_numpy() / mpp).astype(np.int64)
    inside = (rows >= 0) & (cols >= 0) & (rows < clean.shape[0]) & (cols < clean.shape[1])
    on_clean = np.zeros(len(cells), dtype=bool)
    on_clean[inside] = clean[rows[inside], cols[inside]]
    areas = cells["area_um2"].to_numpy(dtype=np.float64)[on_clean] if "area_um2" in cells \
        else np.array([])
    return {
        "n": int(len(cells)), "n_clean": int(on_clean.sum()),
        "density_per_mm2": float(on_clean.sum() / area_mm2) if area_mm2 > 0 else None,
        "median_area_um2": float(np.median(areas)) if areas.size else None,
    }


def slide_qc(slide: Slide, tissue_mask: np.ndarray, *, tissue_mpp: float, kind: str,
             cells: pd.DataFrame | None, config: QcSection, nuclear: int | None = None,
             background: float = 255.0, modality: str | None = None) -> SlideQc:
    """Measure artefacts, focus, stain and nuclei of a slide and evaluate every flag.

    Parameters
    ----------
    slide
        The open slide.
    tissue_mask
        The pipeline's tissue mask (``store.zarr`` ``tissue_mask``) at ``tissue_mpp``.
    tissue_mpp
        Pixel size (um) of ``tissue_mask``.
    kind
        ``"brightfield"`` or ``"fluorescence"``.
    cells
        The slide's cells (at least ``x_um``, ``y_um``, ``area_um2``), or None before
        segmentation (nuclei checks then do not apply).
    config
        The ``qc`` section.
    nuclear
        Fluorescence: nuclear channel index (None: brightest channel).
    background
        Brightfield: transmitted light I0.
    modality
        ``he``, ``ihc`` or ``mif``; ``ihc`` adds the counterstain metrics and check.

    Returns
    -------
    SlideQc

    Raises
    ------
    ValueError
        ``kind`` is neither brightfield nor fluorescence.
    """
    if kind not in ("brightfield", "fluorescence"):
        raise ValueError(f"{slide.path}: unknown slide kind {kind!r}; expected brightfield "
                         "or fluorescence")
    mpp = config.overview_mpp
    overview = slide.read_overview(mpp)
    tissue = resize_mask(tissue_mask, overview.shape[:2], mask_mpp=tissue_mpp, target_mpp=mpp)
    if kind == "brightfield":
        od = optical_density(overview, background=background)
        scale = 1.0
    else:
        intensity = (overview.max(axis=2) if nuclear is None else overview[..., nuclear])
        on = intensity[tissue]
        scale = float(np.percentile(on, 99)) if on.size else 1.0
        scale = scale if scale > 0 else 1.0
    focus = focus_scores(slide, tissue, overview_mpp=mpp, kind=kind, nuclear=nuclear,
                         intensity_scale=scale, config=config)
    empty = np.zeros_like(tissue)
    if kind == "brightfield":
        pen = pen_mask(overview, mpp=mpp, config=config)
        # ink darkens the tissue under it: those pixels are pen, not folds
        dark = dark_mask(od, tissue & ~pen, mpp=mpp, config=config)
        bright = bright_mask(od, tissue, mpp=mpp, config=config)
    else:
        pen = dark = bright = empty
    artefacts = {"focus": focus.blurred, "pen": pen, "dark": dark, "bright": bright}
    pixel_mm2 = mpp**2 / 1e6
    tissue_px = int(tissue.sum())
    union = np.zeros_like(tissue)
    for name in ARTEFACTS:
        union |= artefacts[name] & tissue
    clean = tissue & ~union
    n_scored = int(focus.scores.size)
    n_blurred = int((focus.scores < config.focus_min_laplacian_var).sum())
    metrics = {
        "overview_mpp": mpp,
        "tissue_area_mm2": tissue_px * pixel_mm2,
        "excluded_area_mm2": float(union.sum()) * pixel_mm2,
        "clean_tissue_area_mm2": float(clean.sum()) * pixel_mm2,
        "focus": {
            "out_of_focus_fraction": (n_blurred / n_scored) if n_scored else None,
            "tiles_scored": n_scored, "tiles_blurred": n_blurred,
            "tiles_total": focus.tiles_total, "lattice_stride": focus.stride,
            "tile_um": config.focus_tile_um, "mpp": config.focus_mpp,
            "laplacian_var": _percentiles(focus.scores),
        },
        "artefacts": {
            name: {
                "area_mm2": float((artefacts[name] & tissue).sum()) * pixel_mm2,
                "fraction": (float((artefacts[name] & tissue).sum()) / tissue_px
                             if tissue_px else 0.0),
                "area_off_tissue_mm2": float((artefacts[name] & ~tissue).sum()) * pixel_mm2,
            } for name in ARTEFACTS
        },
        "stain": stain_metrics(overview, clean, kind=kind, channels=slide.info.channels,
                               cells=cells, saturated_fraction=focus.saturated_fraction,
                               background=background),
        "nuclei": nuclei_metrics(cells, clean, mpp=mpp),
    }
    if modality == "ihc":
        metrics["counterstain"] = counterstain_metrics(cells)
    flags = evaluate_flags(metrics, kind=kind, config=config, modality=modality)
    return SlideQc(overview, mpp, tissue, artefacts, metrics, flags, focus)
