"""Slide-level features from cells.parquet (+ the stored tissue mask) alone.

Phenotypes -> regions -> counts, densities, positivity, H-score, proximity, Ripley K/L,
Morisita-Horn, Getis-Ord Gi* hotspots and the immune phenotype (inflamed / excluded /
desert). :func:`compute_slide_features` does one slide folder (``features.json`` keys and
``cell_classes.parquet``); the runner gathers the slides of a run folder into
``pathology_features.csv`` and its data dictionary (:mod:`pathology.run.tables`). Every feature
is listed with its unit in docs/phenotypes.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy.spatial import cKDTree

from hcccore.atomic import write_parquet, write_text
from pathology.cells.lymphocytes import BASE_COLUMNS as LYMPHOCYTE_COLUMNS
from pathology.cells.nucleus_classes import CELL_CLASSES, probability_column
from pathology.cells.panels import Panel, Phenotype, Threshold, resolve_panel
from pathology.cells.phenotypes import (
    OTHER,
    Phenotyping,
    _background,
    auto_threshold,
    classify_cells,
    marker_column,
    marker_values,
)
from pathology.cells.scores import hscore, pdl1_cps, pdl1_tps
from pathology.config import PathologyConfig
from pathology.io import folder as slide_folder
from pathology.qc.artefacts import ArtefactMask, load_artefact_mask
from pathology.spatial import (
    Window,
    fraction_within,
    getis_ord_gi_star,
    l_function,
    make_quadrats,
    morisita_horn,
    nearest_distances,
    ripley_k,
)
from pathology.tissue.detect import TissueMaskError, read_tissue_mask
from pathology.tissue.regions import (
    CODES,
    REGIONS,
    RegionMap,
    annotation_masks,
    automatic_tumour,
    read_annotation_classes,
    region_names,
    regions_from_tumour,
    save_region_map,
)

CELLS_FILE = slide_folder.CELLS
FEATURES_FILE = slide_folder.FEATURES
CLASSES_FILE = slide_folder.CLASSES
KINDS = {"he": "brightfield", "ihc": "brightfield", "mif": "fluorescence"}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
ALL_REGIONS = ("tissue", *REGIONS)
PROXY_SOURCE = "proxy:nuclear_size"


class FeatureError(ValueError):
    """Features cannot be computed for a slide; the message names the file and the cause."""


@dataclass(frozen=True)
class Feature:
    """One slide-level number (or category) with its data-dictionary entry."""

    name: str
    value: float | str | None
    label: str
    unit: str
    method: str
    config_keys: str


# Features kept for provenance (areas before QC and under artefacts, excluded cells, automatic
# thresholds beside the fixed ones): bookkeeping, not candidate biomarkers.
# IHC indices count DAB-negative nuclei, the ones a pale counterstain hides (QC flag
# 'counterstain', pathology.qc.flags): the dictionary says so beside every index feature.
COUNTERSTAIN_NOTE = ("; unreliable on slides whose QC flag 'counterstain' fired (pale "
                     "hematoxylin: negative nuclei missed, index biased upwards; qc_summary.csv)")
BOOKKEEPING_SUFFIXES = ("_raw_mm2", "_excl_mm2", "_n_cells_excl", "_pct_auto")
PROXY_TOKENS = {"tumour", "margin", "stroma", "tps", "cps", "immune", "mh"}
PROXY_NOTE = " [tumour from the nuclear-size PROXY]"


class _Features:
    def __init__(self, prefix: str, panel: str, *, proxy: bool = False) -> None:
        self.prefix = prefix
        self.panel = panel
        self.proxy = proxy
        self.items: list[Feature] = []

    def add(self, parts: Iterable[str], value, label: str, unit: str, method: str,
            keys: str = "") -> None:
        parts = list(parts)
        name = "_".join(p for p in (self.prefix, *parts) if p)
        if not NAME_RE.match(name):
            raise FeatureError(f"feature name {name!r} ({len(name)} characters) is not "
                               "lowercase [a-z0-9_] of at most 32 characters: shorten the "
                               f"prefix or phenotype names of panel {self.panel!r}")
        if isinstance(value, (float, np.floating)):
            value = float(value) if math.isfinite(value) else None
        elif isinstance(value, (int, np.integer)):
            value = int(value)
        tokens = set(parts)
        if self.proxy and (tokens & PROXY_TOKENS or any(
                t.startswith(("xl", "tum", "nn")) for t in tokens)):
            label += PROXY_NOTE  # features that depend on the tumour say it is a proxy
        self.items.append(Feature(name, value, label, unit, method, keys))


def _region_source_label(regions: RegionMap) -> str:
    """How the regions were found, as the data dictionary says it."""
    return regions.source


def _part(panel: Panel, phenotype: Phenotype) -> str:
    """Name fragment of a phenotype; empty for an IHC marker's plain positive cells."""
    if (panel.modality == "ihc" and not phenotype.min and not phenotype.max
            and phenotype.markers == {panel.markers[0].name: True}):
        return ""
    return phenotype.name


def _r(radius: float) -> str:
    """Radius as a name fragment: 20 -> '20', 12.5 -> '12p5'."""
    return f"{radius:g}".replace(".", "p")


def _label(phenotype: Phenotype) -> str:
    return phenotype.label or phenotype.name.replace("_", " ")


@dataclass(frozen=True)
class CleanTissue:
    """Regions less QC's artefacts: what every count and density is computed on.

    Attributes
    ----------
    on_artefact
        Per cell: whether it lies on an artefact (left out of every count).
    raw_mm2, excluded_mm2, clean_mm2
        Per region (``tissue`` and each of :data:`~pathology.tissue.regions.REGIONS`): the region's
        tissue area, the part of it under artefacts, and the rest (the density denominator).
        NaN for tumour / margin / stroma when no tumour is known.
    window
        The tissue window less artefacts (spatial statistics).
    checked
        Whether QC's artefact mask was available (else nothing is removed).
    """

    on_artefact: np.ndarray
    raw_mm2: dict[str, float]
    excluded_mm2: dict[str, float]
    clean_mm2: dict[str, float]
    window: Window
    checked: bool


def clean_tissue(x_um: np.ndarray, y_um: np.ndarray, regions: RegionMap, window: Window,
                 artefacts: ArtefactMask | None) -> CleanTissue:
    """Remove QC's artefact areas from every region's area and their cells from the counts.

    Each artefact pixel (QC overview grid) counts in the region at its centre, so the
    excluded area is measured at QC's resolution, not the coarser region grid's.

    Examples
    --------
    >>> from pathology.tissue.regions import regions_from_tumour
    >>> tissue = np.ones((4, 4), bool); tumour = np.zeros_like(tissue); tumour[:, :2] = True
    >>> regions = regions_from_tumour(tumour, tissue, mpp=10.0, margin_width_um=1.0,
    ...                               source="test")
    >>> codes = np.zeros((8, 8), np.uint8); codes[:, 6:] = 2  # pen over the right quarter
    >>> clean = clean_tissue(np.array([5.0, 35.0]), np.array([5.0, 5.0]), regions,
    ...                      Window(tissue, 10.0), ArtefactMask(codes, 5.0, ""))
    >>> round(clean.raw_mm2["stroma"] * 1e6), round(clean.excluded_mm2["stroma"] * 1e6)
    (800, 400)
    >>> clean.on_artefact.tolist()
    [False, True]
    """
    raw = regions.areas_mm2()
    if artefacts is None:
        excluded = {name: 0.0 if np.isfinite(area) else np.nan for name, area in raw.items()}
        return CleanTissue(np.zeros(len(x_um), dtype=bool), raw, excluded, dict(raw), window,
                           False)
    ax, ay = artefacts.pixel_centres_um()
    counts = np.bincount(regions.code_at(ax, ay), minlength=len(CODES)).astype(np.float64)
    pixel_mm2 = artefacts.mpp**2 / 1e6
    excluded = {"tissue": float(counts[1:].sum() * pixel_mm2)}
    for name in REGIONS:
        excluded[name] = (float(counts[CODES[name]] * pixel_mm2) if regions.has_tumour
                          else np.nan)
    clean = {name: max(0.0, raw[name] - excluded[name]) if np.isfinite(raw[name]) else np.nan
             for name in raw}
    rows, cols = np.indices(window.mask.shape)
    on_grid = artefacts.at((cols.ravel() + 0.5) * window.mpp,
                           (rows.ravel() + 0.5) * window.mpp).reshape(window.mask.shape)
    return CleanTissue(artefacts.at(x_um, y_um), raw, excluded, clean,
                       Window(window.mask & ~on_grid, window.mpp), True)


def slide_features(cells: pd.DataFrame, result: Phenotyping, regions: RegionMap,
                   window: Window, *, panel: Panel, config: PathologyConfig,
                   artefacts: ArtefactMask | None = None) -> list[Feature]:
    """Every slide-level feature of one slide (pure computation, no files).

    Cells on QC's artefacts are left out of every count, and the artefact areas out of every
    region's area (:func:`clean_tissue`): densities are per mm^2 of clean tissue.

    Parameters
    ----------
    cells
        ``x_um``, ``y_um`` per cell (other columns unused here).
    result
        Marker positivity and phenotypes (:func:`pathology.cells.phenotypes.classify_cells`).
    regions
        Region map (its grid aligned with ``window``).
    window
        Tissue mask as the observation window.
    panel
        The slide's panel (prefix, phenotypes).
    config
        ``spatial`` and ``regions`` settings.
    artefacts
        QC's artefact mask (None: not checked, nothing removed).

    Returns
    -------
    list of Feature
    """
    out = _Features(panel.prefix, panel.name, proxy=regions.source == PROXY_SOURCE)
    xy = np.column_stack([cells["x_um"].to_numpy(np.float64), cells["y_um"].to_numpy(np.float64)])
    codes = regions.code_at(xy[:, 0], xy[:, 1])
    clean = clean_tissue(xy[:, 0], xy[:, 1], regions, window, artefacts)
    on_tissue = (codes > 0) & ~clean.on_artefact
    areas = clean.clean_mm2
    window = clean.window
    region_keys = "regions.margin_width_um, regions.annotations_dir, spatial.tumour_phenotype"
    masks = {"tissue": on_tissue, **{r: (codes == CODES[r]) & ~clean.on_artefact
                                     for r in REGIONS}}
    source = _region_source_label(regions)

    out.add(["regions", "src"], source.split(":")[0] if source != PROXY_SOURCE else "proxy",
            "Source of the tumour region: annotation, registered (serial H&E), marker, proxy "
            "(nuclear size, regions.tumour_proxy) or none (tissue-level features only)",
            "category", "features.json regions.source and regions.reason", region_keys)
    out.add(["n", "cells"], int(on_tissue.sum()), "Cells (nuclei) on clean tissue", "cells",
            "count of cells.parquet rows on the tissue mask, off QC artefacts")
    out.add(["n", "cells", "excl"], int(np.count_nonzero((codes > 0) & clean.on_artefact)),
            "Cells (nuclei) on QC artefacts, left out of every count", "cells",
            "cells on the artefact mask (focus, pen, dark, bright)", "qc.*")
    for region in ALL_REGIONS:
        out.add([region, "mm2"], areas[region],
                f"Clean tissue area of the {region} region (density denominator)", "mm^2",
                f"tissue mask pixels in the region ({source}) minus QC artefact areas",
                region_keys)
        out.add([region, "raw", "mm2"], clean.raw_mm2[region],
                f"Tissue area of the {region} region before artefacts were removed", "mm^2",
                f"tissue mask pixels in the region ({source})", region_keys)
        out.add([region, "excl", "mm2"], clean.excluded_mm2[region],
                f"Area of the {region} region under QC artefacts (excluded)", "mm^2",
                "QC artefact mask pixels (focus, pen, dark, bright) in the region",
                "qc.*")

    def density(mask: np.ndarray, region: str) -> float:
        area = areas[region]
        if not area or not np.isfinite(area):
            return float("nan")
        return float(np.count_nonzero(mask & masks[region])) / area

    for phenotype in panel.phenotypes:
        part, label = _part(panel, phenotype), _label(phenotype)
        cells_p = result.phenotypes[phenotype.name]
        for region in ALL_REGIONS:
            out.add([part, region, "n"], int(np.count_nonzero(cells_p & masks[region]))
                    if region == "tissue" or regions.has_tumour else None,
                    f"{label} cells in {region}", "cells", "phenotype rule, count", region_keys)
            out.add([part, region, "density"], density(cells_p, region),
                    f"{label} density in {region}", "cells/mm^2",
                    "count / clean tissue area of the region (QC artefacts removed)",
                    region_keys)

    for marker in panel.markers:
        call = result.calls[marker.name]
        part = "" if panel.modality == "ihc" else marker.key
        keys = f"panels/{panel.name}: markers.{marker.name}"
        positive = result.positive[marker.name]
        n_tissue = int(on_tissue.sum())
        out.add([part, "pct"], 100.0 * np.count_nonzero(positive & on_tissue) / n_tissue
                if n_tissue else None, f"{marker.name}+ cells (% of cells)", "%",
                f"{call.method} threshold {call.threshold:.4g} on {call.column}"
                + (COUNTERSTAIN_NOTE if panel.modality == "ihc" else ""), keys)
        if marker.key in ("pdl1", "pd_l1"):
            tumour, immune, immune_rule = pdl1_cell_classes(cells, result, masks, panel=panel,
                                                            config=config)
            out.add(["tps"], pdl1_tps(positive, tumour), "PD-L1 tumour proportion score", "%",
                    "PD-L1+ viable tumour cells / all viable tumour cells x 100 (tumour "
                    "cells: features.json regions.tumour_cells)", keys)
            out.add(["cps"], pdl1_cps(positive, tumour, immune),
                    "PD-L1 combined positive score", "0-100",
                    "PD-L1+ tumour cells, lymphocytes and macrophages / viable tumour cells "
                    f"x 100, capped at 100; immune cells: {immune_rule}", keys)
        if panel.modality != "ihc":
            continue
        for region in REGIONS:
            n_region = int(np.count_nonzero(masks[region]))
            out.add([region, "pct"], 100.0 * np.count_nonzero(positive & masks[region])
                    / n_region if n_region else None,
                    f"{marker.name}+ cells in {region} (% of its cells)", "%",
                    "positive / all cells of the region" + COUNTERSTAIN_NOTE, keys)
        bins = result.intensity_bin.get(marker.name)
        if bins is not None and n_tissue:
            out.add(["hscore"], hscore(bins, on_tissue), f"{marker.name} H-score of all cells "
                    "on clean tissue", "0-300", "1 x %1+ + 2 x %2+ + 3 x %3+ (% of all cells "
                    "on clean tissue; bins from the marker's OD bins)" + COUNTERSTAIN_NOTE, keys)
        pigment = result.pigment.get(marker.name)
        if pigment is not None:
            out.add(["pigment", "n"], call.n_pigment_excluded,
                    f"{marker.name}: brown cells excluded as pigment", "cells",
                    "pigment rule (colour / compartment)", "phenotypes.pigment_*")
    _spatial_features(out, xy, on_tissue, masks, areas, result, regions, window,
                      panel=panel, config=config)
    return out.items


def automatic_thresholds(cells: pd.DataFrame, result: Phenotyping, *, panel: Panel, kind: str,
                         counted: np.ndarray) -> dict[str, dict]:
    """A per-slide automatic threshold (Otsu) for every marker with a fixed one, recorded
    beside it: the threshold, and the positive cells it gives (% of ``counted`` cells,
    pigment still excluded). The configured threshold is the one used for phenotypes.
    """
    out: dict[str, dict] = {}
    for marker in panel.markers:
        if marker.source != "intensity" or marker.threshold.method != "fixed":
            continue
        values, column = marker_values(cells, marker, kind=kind)
        background = _background(values, marker)
        values = np.maximum(values - background, 0.0) if background else values
        threshold = auto_threshold(values, Threshold(method="otsu"))
        pigment = result.pigment.get(marker.name, np.zeros(len(values), dtype=bool))
        with np.errstate(invalid="ignore"):
            positive = (values >= threshold) & ~pigment & counted
        n = int(np.count_nonzero(counted))
        out[marker.name] = {"method": "otsu", "threshold": float(threshold), "column": column,
                            "percent_positive": 100.0 * np.count_nonzero(positive) / n
                            if n else None,
                            "configured": {"method": "fixed",
                                           "threshold": marker.threshold.value}}
    return out


def pdl1_cell_classes(cells: pd.DataFrame, result: Phenotyping, masks: dict[str, np.ndarray],
                      *, panel: Panel, config: PathologyConfig
                      ) -> tuple[np.ndarray, np.ndarray, str]:
    """Viable tumour cells and immune cells (lymphocytes, macrophages) for TPS and CPS.

    Tumour cells: the (resolved) tumour phenotype on clean tissue. Immune cells: the panel's
    ``immune: true`` phenotypes on clean tissue; on a slide with no immune marker (PD-L1 IHC
    alone), the mononuclear cells where CPS counts them: non-tumour cells in the tumour centre
    and the margin whose nucleus is smaller than the tumour rule's minimum area.

    Returns
    -------
    tumour, immune, rule
        Boolean per cell, and the immune rule in words.
    """
    tissue = masks["tissue"]
    tumour_p = panel.phenotype(config.spatial.tumour_phenotype)
    tumour = (result.phenotypes[tumour_p.name] & tissue if tumour_p is not None
              else np.zeros(len(tissue), dtype=bool))
    immune_ps = [p for p in panel.phenotypes if p.immune]
    if immune_ps:
        immune = np.zeros(len(tissue), dtype=bool)
        for phenotype in immune_ps:
            immune |= result.phenotypes[phenotype.name]
        return tumour, immune & tissue & ~tumour, "phenotypes " + ", ".join(
            p.name for p in immune_ps)
    near = (masks["tumour"] | masks["margin"]) & ~tumour
    limit = (tumour_p.min.get("area_um2") if tumour_p is not None else None) or 40.0
    if "area_um2" in cells:
        near &= cells["area_um2"].to_numpy(dtype=np.float64) < limit
    return tumour, near, (f"non-tumour cells with nuclei < {limit:g} um^2 in the tumour "
                          "centre and margin (no immune marker on this slide)")


def _spatial_features(out: _Features, xy: np.ndarray, on_tissue: np.ndarray,
                      masks: dict[str, np.ndarray], areas: dict[str, float],
                      result: Phenotyping, regions: RegionMap, window: Window, *,
                      panel: Panel, config: PathologyConfig) -> None:
    sp = config.spatial
    tumour_p = panel.phenotype(sp.tumour_phenotype)
    immune = [p for p in panel.phenotypes if p.immune]
    quadrats = make_quadrats(window, sp.quadrat_um)
    tumour_xy = (xy[result.phenotypes[tumour_p.name] & on_tissue] if tumour_p is not None
                 else np.zeros((0, 2)))
    tumour_tree = cKDTree(tumour_xy) if len(tumour_xy) else None
    tumour_counts = quadrats.counts(tumour_xy)[quadrats.valid]
    radius_keys = "spatial.radii_um, spatial.max_focal_points"
    fractions = {r: window.disk_fraction(r) for r in sp.radii_um}
    subjects = list(immune) + ([tumour_p] if tumour_p is not None else [])
    for phenotype in subjects:
        part, label = _part(panel, phenotype), _label(phenotype)
        points = xy[result.phenotypes[phenotype.name] & on_tissue]
        enough = len(points) >= sp.min_cells
        tree = cKDTree(points) if enough else None
        k = (ripley_k(points, None, window=window, radii=sp.radii_um, tree=tree,
                      max_focal=sp.max_focal_points, fractions=fractions) if enough
             else np.full(len(sp.radii_um), np.nan))
        for radius, value in zip(sp.radii_um, l_function(k) - np.asarray(sp.radii_um),
                                 strict=True):
            out.add([part, f"l{_r(radius)}"], value, f"{label}: Ripley L({radius:g} um) - r",
                    "um", "edge-corrected K in the tissue window; 0 = random, >0 clustered",
                    radius_keys)
        if phenotype is tumour_p:
            continue
        tumour_enough = len(tumour_xy) >= sp.min_cells
        cross = (ripley_k(points, tumour_xy, window=window, radii=sp.radii_um, tree=tumour_tree,
                          max_focal=sp.max_focal_points, fractions=fractions)
                 if enough and tumour_enough
                 else np.full(len(sp.radii_um), np.nan))
        for radius, value in zip(sp.radii_um, l_function(cross) - np.asarray(sp.radii_um),
                                 strict=True):
            out.add([part, f"xl{_r(radius)}"], value,
                    f"{label} around tumour cells: cross-L({radius:g} um) - r", "um",
                    "edge-corrected cross-K in the tissue window; >0 = attraction", radius_keys)
        distance = (float(np.median(nearest_distances(points, tumour_xy, tree=tumour_tree)))
                    if len(points) and tumour_enough else None)
        out.add([part, "nn_um"], distance, f"{label}: median distance to nearest tumour cell",
                "um", "cKDTree nearest neighbour", "spatial.tumour_phenotype")
        within = (fraction_within(tumour_xy, points, sp.contact_radii_um, tree=tree)
                  if len(points) and tumour_enough else np.full(len(sp.contact_radii_um), np.nan))
        for radius, value in zip(sp.contact_radii_um, 100.0 * within, strict=True):
            out.add([f"tum{_r(radius)}", part, "pct"], value,
                    f"Tumour cells with a {label} within {radius:g} um", "%",
                    "cKDTree nearest neighbour <= r", "spatial.contact_radii_um")
        counts = quadrats.counts(points)
        mh = morisita_horn(counts[quadrats.valid], tumour_counts) if enough and tumour_enough \
            else None
        out.add([part, "mh"], mh, f"Morisita-Horn colocalisation of {label} and tumour cells",
                "0-1", "quadrat counts", "spatial.quadrat_um")
        z = (getis_ord_gi_star(counts / np.maximum(quadrats.tissue_fraction, 1e-9),
                               quadrats.valid, radius_cells=sp.hotspot_radius_um / sp.quadrat_um)
             if enough else None)
        hot = (z > sp.hotspot_z) if z is not None else None
        n_valid = int(quadrats.valid.sum())
        out.add([part, "hot", "pct"], 100.0 * np.count_nonzero(hot) / n_valid
                if hot is not None and n_valid else None,
                f"{label}: Getis-Ord Gi* hotspot quadrats (% of tissue quadrats)", "%",
                "Gi* z > spatial.hotspot_z", "spatial.quadrat_um, spatial.hotspot_radius_um, "
                "spatial.hotspot_z")
        out.add([part, "hot", "mm2"], float(np.count_nonzero(hot)) * sp.quadrat_um**2 / 1e6
                if hot is not None else None, f"{label}: Getis-Ord Gi* hotspot area", "mm^2",
                "hotspot quadrats x quadrat area", "spatial.quadrat_um")

    cd8 = panel.phenotype(sp.cd8_phenotype) or (immune[0] if immune else None)
    if cd8 is not None:
        out.add(["immune", "class"], immune_class(result.phenotypes[cd8.name], masks, areas,
                                                  has_tumour=regions.has_tumour, config=config),
                f"Immune phenotype from {_label(cd8)} densities", "category",
                "inflamed / excluded / desert density rules",
                "spatial.inflamed_min_tumour_density, spatial.excluded_min_stroma_density")


def immune_class(cd8: np.ndarray, masks: dict[str, np.ndarray], areas: dict[str, float], *,
                 has_tumour: bool, config: PathologyConfig) -> str | None:
    """Inflamed / excluded / desert from CD8 densities in tumour, stroma and margin.

    Inflamed: CD8 density in the tumour centre >= ``inflamed_min_tumour_density``; else
    excluded: CD8 density in stroma or margin >= ``excluded_min_stroma_density``; else desert.
    None when no tumour region is known.
    """
    if not has_tumour or not areas.get("tumour"):
        return None
    sp = config.spatial

    def density(region: str) -> float:
        area = areas[region]
        return float(np.count_nonzero(cd8 & masks[region])) / area if area else 0.0

    if density("tumour") >= sp.inflamed_min_tumour_density:
        return "inflamed"
    if max(density("stroma"), density("margin")) >= sp.excluded_min_stroma_density:
        return "excluded"
    return "desert"


def _needed_columns(panel: Panel, kind: str, available: list[str]) -> list[str]:
    wanted = {"cell_id", "x_um", "y_um", "area_um2"}
    for marker in panel.markers:
        if marker.source == "lymphocyte_classifier":
            # the logistic model's columns, or the patch network's probabilities
            wanted |= set(LYMPHOCYTE_COLUMNS) | {probability_column(c) for c in CELL_CLASSES}
            continue
        for compartment in ("nucleus", "ring", "cell"):
            wanted.add(marker_column(marker, kind=kind, compartment=compartment))
    if kind == "brightfield":
        wanted |= {f"{c}_{s}_od" for c in ("nucleus", "ring")
                   for s in ("hematoxylin", "eosin", "dab")}
    for phenotype in panel.phenotypes:
        wanted |= set(phenotype.min) | set(phenotype.max)
    return [c for c in available if c in wanted]


def read_tissue_window(folder: Path) -> Window:
    """The stored tissue mask of a slide folder as a :class:`~pathology.spatial.Window`."""
    try:
        return Window(*read_tissue_mask(folder))
    except TissueMaskError as error:
        raise FeatureError(str(error)) from error


def _config_digest(config: PathologyConfig) -> str:
    sections = {k: v for k, v in config.model_dump(mode="json").items()
                if k in ("cells", "phenotypes", "regions", "spatial")}
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


def _panel_digest(panel: Panel) -> str:
    return hashlib.sha256(json.dumps(panel.model_dump(mode="json"),
                                     sort_keys=True).encode()).hexdigest()


def compute_slide_features(folder: Path, *, modality: str, stain: str,
                           config: PathologyConfig, carried: RegionMap | None = None) -> dict:
    """Phenotypes, regions and features of one finished slide.

    Reads the slide folder's ``cells.parquet`` and the tissue mask in ``store.zarr``; writes
    ``cell_classes.parquet`` (cell_id, phenotype, region, artefact, marker calls) and adds the
    keys ``features``, ``feature_dictionary``, ``phenotyping``, ``regions``, ``artefacts`` and
    ``features_config_sha256`` to ``features.json`` (existing keys are kept). QC's artefact
    mask (``qc/artefact_mask.png``, from :func:`pathology.qc.check.measure_slide_qc`) is
    subtracted when present. The regions are stored in ``store.zarr`` too
    (:func:`pathology.tissue.regions.save_region_map`), so that serial sections can carry them
    across.

    Parameters
    ----------
    folder
        The slide folder (:class:`pathology.io.folder.SlideFolder`; its name is the sample id,
        which names the slide's annotation file).
    modality
        ``he``, ``ihc`` or ``mif``.
    stain
        The manifest's stain (IHC marker or multiplex panel name).
    config
        Resolved configuration.
    carried
        Regions carried onto this slide from its block's reference by registration
        (:func:`pathology.registration.serial.registered_regions`); they replace the slide's
        own regions unless it has annotations of its own (ignored when drawn on another
        tissue grid).

    Returns
    -------
    dict
        The slide's row: ``sample_id``, ``modality``, ``stain`` and every feature value.

    Raises
    ------
    FeatureError, pathology.cells.panels.PanelError
        Missing inputs, a panel naming a channel the slide lacks, or an invalid name.
    """
    folder = Path(folder)
    sample_id = slide_folder.SlideFolder(folder).sample_id
    if modality not in KINDS:
        raise FeatureError(f"{sample_id}: modality {modality!r} is not a slide modality")
    kind = KINDS[modality]
    cells_path = folder / CELLS_FILE
    if not cells_path.is_file():
        raise FeatureError(f"{cells_path}: not found; run 'hccbio slides run' first")
    panel = resolve_panel(modality, stain, directory=config.phenotypes.panels_dir)
    schema = pq.read_schema(cells_path)
    cells = pq.read_table(cells_path, columns=_needed_columns(panel, kind, schema.names)
                          ).to_pandas()
    window = read_tissue_window(folder)
    result = classify_cells(cells, panel, kind=kind, config=config.phenotypes)
    features_path = folder / FEATURES_FILE
    record = json.loads(features_path.read_text()) if features_path.is_file() else {}
    regions = build_regions(cells, result, window, sample_id=sample_id, panel=panel,
                            config=config, slide_info=record.get("slide", {}))
    if (carried is not None and regions.source != "annotation"  # a serial section
            and carried.codes.shape == window.mask.shape):
        regions = carried
    save_region_map(folder, regions)  # so that serial sections can carry them across
    window = Window(regions.codes > 0, window.mpp)  # less annotated Necrosis / Ignore*
    tumour_cells = resolve_tumour_cells(cells, result, regions, panel=panel, config=config)
    result, panel = tumour_cells.result, tumour_cells.panel
    artefacts = load_artefact_mask(folder)
    clean = clean_tissue(cells["x_um"].to_numpy(np.float64), cells["y_um"].to_numpy(np.float64),
                         regions, window, artefacts)
    items = slide_features(cells, result, regions, window, panel=panel, config=config,
                           artefacts=artefacts)
    automatic = automatic_thresholds(cells, result, panel=panel, kind=kind,
                                     counted=~clean.on_artefact & (regions.code_at(
                                         cells["x_um"].to_numpy(), cells["y_um"].to_numpy()) > 0))
    items += [Feature(f"{panel.prefix}_{'' if panel.modality == 'ihc' else key + '_'}pct_auto",
                      entry["percent_positive"], f"{name}+ cells (% of cells) by a per-slide "
                      f"{entry['method']} threshold, beside the configured one", "%",
                      f"per-slide {entry['method']} threshold {entry['threshold']:.4g} on "
                      f"{entry['column']}", f"panels/{panel.name}: markers.{name}")
              for name, entry in automatic.items()
              for key in [next(m.key for m in panel.markers if m.name == name)]]

    classes = result.table()
    classes.insert(0, "cell_id", cells["cell_id"].to_numpy() if "cell_id" in cells
                   else np.arange(len(cells)))
    classes.insert(2, "region", region_names(regions.code_at(cells["x_um"].to_numpy(),
                                                              cells["y_um"].to_numpy()),
                                             has_tumour=regions.has_tumour).astype(str))
    classes.insert(3, "artefact", clean.on_artefact)
    write_parquet(_to_arrow(classes), folder / CLASSES_FILE)

    record.update({
        "sample_id": sample_id, "modality": modality, "stain": stain,
        "features": {f.name: {"value": f.value, "unit": f.unit} for f in items},
        "feature_dictionary": {f.name: {k: v for k, v in asdict(f).items()
                                        if k not in ("name", "value")} for f in items},
        "phenotyping": {"panel": panel.name, "panel_sha256": _panel_digest(panel),
                        "markers": {k: {**c.to_json(), "auto": automatic.get(k)}
                                    for k, c in result.calls.items()},
                        "phenotype_counts": {k: int(v.sum())
                                             for k, v in result.phenotypes.items()}},
        "regions": {"source": regions.source, "reason": regions.reason,
                    "tumour_cells": tumour_cells.rule, "proxy": regions.source == PROXY_SOURCE,
                    "areas_mm2": regions.areas_mm2(), "grid_mpp": regions.mpp},
        "artefacts": {
            "checked": clean.checked,
            "raw_area_mm2": clean.raw_mm2, "excluded_area_mm2": clean.excluded_mm2,
            "clean_area_mm2": clean.clean_mm2,
            "cells_excluded": int(np.count_nonzero(clean.on_artefact)),
            "qc_config_sha256": artefacts.qc_config_sha256 if artefacts is not None else None,
            "note": ("densities are per mm^2 of clean tissue: QC artefact areas (focus, pen, "
                     "dark, bright) removed from each region, their cells from the counts"
                     if clean.checked else "QC has not run on this slide: nothing removed, "
                     "densities are per mm^2 of the raw tissue mask")},
        "features_config_sha256": _config_digest(config),
    })
    write_text(features_path, json.dumps(_jsonable(record), indent=2) + "\n")
    return {"sample_id": sample_id, "modality": modality, "stain": stain,
            **{f.name: f.value for f in items}}


def build_regions(cells: pd.DataFrame, result: Phenotyping, window: Window, *, sample_id: str,
                  panel: Panel, config: PathologyConfig, slide_info: dict) -> RegionMap:
    """Regions of a slide, from the first tumour source that exists.

    1. annotations: ``regions.annotations_dir/<sample_id>.geojson`` (QuPath classes: Tumor /
       Tumour, Stroma; Necrosis, Ignore* and artefact classes are removed from the tissue);
    2. a tumour marker: the panel's tumour phenotype when it is defined by a marker (mIF
       HepPar-1 / GPC3 / panCK, IHC GPC3), from the smoothed fraction of its cells;
    3. the nuclear-size proxy (a ``proxy: true`` tumour phenotype), only when
       ``regions.tumour_proxy`` is on; source ``proxy:nuclear_size``;
    4. none: tissue-level features only, and :attr:`RegionMap.reason` says why.
    """
    rc = config.regions
    tumour_p = panel.phenotype(config.spatial.tumour_phenotype)
    looked = []
    if rc.annotations_dir:
        path = Path(rc.annotations_dir) / f"{sample_id}.geojson"
        if path.is_file():
            if rc.annotation_units == "px":
                mpp0 = slide_info.get("mpp_x"), slide_info.get("mpp_y")
                if None in mpp0:
                    raise FeatureError(f"{path}: pixel coordinates need the slide's level-0 "
                                       "pixel size (features.json 'slide'), which is missing")
                unit = (float(mpp0[0]) + float(mpp0[1])) / 2
            else:
                unit = 1.0
            classes = read_annotation_classes(path, window.mask.shape, mpp=window.mpp,
                                              coordinate_um=unit)
            tumour, stroma, excluded = annotation_masks(classes, window.mask.shape)
            if tumour.any():
                tissue = window.mask & ~excluded
                removed = float((window.mask & excluded).sum()) * window.mpp**2 / 1e6
                note = (f"{path.name}: classes {', '.join(sorted(classes))}"
                        + (f"; {removed:.4g} mm^2 removed from the tissue (excluded classes)"
                           if removed else ""))
                regions = regions_from_tumour(tumour, tissue, mpp=window.mpp,
                                              margin_width_um=rc.margin_width_um,
                                              source="annotation", stroma=stroma)
                return RegionMap(regions.codes, regions.mpp, regions.source, note)
            looked.append(f"{path.name} has no Tumor/Tumour polygon")
        else:
            looked.append(f"no annotation file {path}")
    else:
        looked.append("no annotations (regions.annotations_dir)")
    if tumour_p is not None and result.phenotypes[tumour_p.name].any() and (
            not tumour_p.proxy or rc.tumour_proxy):
        tumour = automatic_tumour(cells["x_um"].to_numpy(), cells["y_um"].to_numpy(),
                                  result.phenotypes[tumour_p.name], window.mask,
                                  mpp=window.mpp, config=rc)
        source = PROXY_SOURCE if tumour_p.proxy else f"marker:{tumour_p.name}"
        if tumour.any():
            regions = regions_from_tumour(tumour, window.mask, mpp=window.mpp,
                                          margin_width_um=rc.margin_width_um, source=source)
            note = (f"tumour where '{_label(tumour_p)}' cells make >= "
                    f"{rc.tumour_min_fraction:g} of all cells"
                    + ("; a PROXY: normal hepatocyte nuclei are as large" if tumour_p.proxy
                       else ""))
            return RegionMap(regions.codes, regions.mpp, regions.source, note)
        looked.append(f"too few '{_label(tumour_p)}' cells for a tumour region")
    elif tumour_p is None:
        looked.append("the panel has no tumour phenotype for this stain")
    elif tumour_p.proxy:
        looked.append(f"no tumour marker on this slide; the nuclear-size proxy "
                      f"('{_label(tumour_p)}') is off (regions.tumour_proxy)")
    else:
        looked.append(f"no '{_label(tumour_p)}' cells")
    codes = np.where(window.mask, CODES["stroma"], 0).astype(np.uint8)
    return RegionMap(codes, window.mpp, "none",
                     "no tumour source: " + "; ".join(looked)
                     + ". Tissue-level features only.")


@dataclass(frozen=True)
class TumourCells:
    """Which cells are tumour cells (TPS, CPS, proximity), and how that was decided."""

    result: Phenotyping
    panel: Panel
    rule: str


def resolve_tumour_cells(cells: pd.DataFrame, result: Phenotyping, regions: RegionMap, *,
                         panel: Panel, config: PathologyConfig) -> TumourCells:
    """Tumour cells from the best source: a tumour marker; else, for a proxy phenotype, its
    cells inside an annotated (or registered) tumour centre, or all its cells when the regions
    themselves come from the proxy; else none (the tumour phenotype is dropped).
    """
    name = config.spatial.tumour_phenotype
    tumour_p = panel.phenotype(name)
    if tumour_p is None:
        return TumourCells(result, panel, "none: the panel has no tumour phenotype")
    if not tumour_p.proxy:
        return TumourCells(result, panel, f"marker: {_label(tumour_p)}")
    if regions.source == PROXY_SOURCE:
        return TumourCells(result, panel, f"PROXY (nuclear size): {_label(tumour_p)}, "
                                          "regions.tumour_proxy on")
    phenotypes = dict(result.phenotypes)
    if regions.has_tumour:
        inside = regions.code_at(cells["x_um"].to_numpy(), cells["y_um"].to_numpy()) == CODES[
            "tumour"]
        phenotypes[name] = phenotypes[name] & inside
        rule = (f"{_label(tumour_p)} inside the tumour centre ({regions.source}); small "
                "(lymphocyte-sized) nuclei are not tumour cells")
        kept = panel
    else:
        del phenotypes[name]
        kept = panel.model_copy(update={"phenotypes": tuple(
            p for p in panel.phenotypes if p.name != name)})
        rule = "none: no tumour source (see regions.reason)"
    label = np.full(len(cells), OTHER, dtype=object)
    for phenotype in reversed(list(phenotypes)):
        label[phenotypes[phenotype]] = phenotype
    return TumourCells(replace(result, phenotypes=phenotypes, label=label), kept, rule)


def _to_arrow(frame: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
