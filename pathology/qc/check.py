"""QC of one finished slide: metrics and flags, overlays and QuPath exports in ``qc/``.

Two steps, with the features step between them: :func:`measure_slide_qc` finds the artefacts
and saves their mask (``qc/artefact_mask.png`` + ``qc/artefacts.json``), which the features
step subtracts from every region's area and count; :func:`run_slide_qc` then draws the
overlays (with the cells' phenotypes and regions) and writes ``qc.json``. Both take the slide
folder; the runner calls them after each slide (:mod:`pathology.run.finish`) and for a whole
run folder (``hccbio slides qc OUT``, :func:`pathology.run.tables.run_qc`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hcccore.atomic import write_text
from pathology.config import PathologyConfig
from pathology.io import folder as slide_folder
from pathology.io.slide import Slide, SlideError
from pathology.qc import geojson, overlays
from pathology.qc.artefacts import ARTEFACT_MASK_FILE, ARTEFACTS, save_artefact_mask
from pathology.qc.flags import Flag
from pathology.qc.markers import marker_qc
from pathology.qc.metrics import SlideQc, slide_qc
from pathology.qc.shapes import REGION_CODES, mask_polygons, region_raster
from pathology.tissue.detect import TissueMaskError, read_tissue_mask

log = logging.getLogger("hccbio.pathology")

QC_DIR = slide_folder.QC_DIR
QC_FILE = slide_folder.QC_JSON
DETECTIONS_FILE = "detections.geojson"
REGIONS_FILE = "regions.geojson"
ARTEFACT_FILE = ARTEFACT_MASK_FILE
CELLS_FILE = slide_folder.CELLS
CLASSES_FILE = slide_folder.CLASSES
FEATURES_FILE = slide_folder.FEATURES
KINDS = {"he": "brightfield", "ihc": "brightfield", "mif": "fluorescence"}
QUPATH_NAMES = {"tumour": "Tumor", "margin": "Margin", "stroma": "Stroma"}
VIEWER_LAYERS = {"tissue": "layer_tissue.png", "detections": "layer_detections.png",
                 "regions": "layer_regions.png"}


class QcError(ValueError):
    """A slide cannot be checked; the message names the file and the problem."""


def qc_digest(config: PathologyConfig) -> str:
    """SHA-256 of the ``qc`` section (recorded in ``qc.json``)."""
    text = json.dumps(config.qc.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _finished_slide(folder: Path) -> tuple[Path, np.ndarray, float, dict]:
    """A finished slide's folder, tissue mask (with its um/px) and features.json record."""
    folder = Path(folder)
    try:
        mask, mask_mpp = read_tissue_mask(folder)
    except TissueMaskError as error:
        raise QcError(str(error)) from error
    features_path = folder / FEATURES_FILE
    record = json.loads(features_path.read_text()) if features_path.is_file() else {}
    return folder, mask, mask_mpp, record


def _read_cells(folder: Path) -> pd.DataFrame | None:
    path = folder / CELLS_FILE
    if not path.is_file():
        return None
    names = pq.read_schema(path).names
    wanted = [c for c in names if c in ("cell_id", "x_um", "y_um", "area_um2",
                                        "ring_hematoxylin_od")
              or (c.startswith("nucleus_") and (c.endswith("_od") or c.endswith("_mean")))]
    wanted += ["phenotype", "region"]
    batches = list(geojson.iter_cell_batches(path, classes_path=folder / CLASSES_FILE,
                                             columns=wanted))
    if not batches:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("x_um", "y_um", "area_um2")})
    return pa.Table.from_batches(batches).to_pandas()


def _kind(modality: str | None, slide: Slide) -> str:
    if modality in KINDS:
        return KINDS[modality]
    info = slide.info
    return "brightfield" if info.dtype == "uint8" and len(info.channels) == 3 else "fluorescence"


def _region_features(qc: SlideQc, codes: np.ndarray):
    mpp = qc.mpp
    pixel_mm2 = mpp**2 / 1e6
    yield "Tissue", mask_polygons(qc.tissue, mpp=mpp), {
        "area_mm2": float(qc.tissue.sum() * pixel_mm2)}
    for name, code in REGION_CODES.items():
        mask = codes == code
        if mask.any():
            yield QUPATH_NAMES[name], mask_polygons(mask, mpp=mpp), {
                "area_mm2": float(mask.sum() * pixel_mm2)}
    for name in ARTEFACTS:
        mask = qc.artefacts[name]
        if mask.any():
            yield f"Artefact: {name}", mask_polygons(mask, mpp=mpp), {
                "area_mm2": float((mask & qc.tissue).sum() * pixel_mm2)}


def _composite_colors(slide: Slide, kind: str, stain: str | None, config: PathologyConfig
                      ) -> tuple[list | None, list[tuple[str, tuple]]]:
    """A multiplex slide's false colours from its panel (nuclear channel blue, each marker in
    its colour, other channels hidden) and the legend; (None, []) otherwise."""
    from pathology.cells.panels import PanelError, resolve_panel
    from pathology.io.slide import nuclear_channel_index

    channels = slide.info.channels
    if kind != "fluorescence" or not stain:
        return None, []
    try:
        panel = resolve_panel("mif", stain, directory=config.phenotypes.panels_dir)
        nuclear = nuclear_channel_index(channels, config.slide.nuclear_channels)
    except (PanelError, SlideError):
        return None, []
    tints = overlays.channel_tints(channels, nuclear=nuclear,
                                   markers=[(m.channel, m.color) for m in panel.markers])
    legend = [(name, tint) for name, tint in zip(channels, tints, strict=True) if tint]
    return tints, legend


def _open_slide(slide_path: Path, manifest_mpp: float | None, config: PathologyConfig,
                record: dict | None = None) -> Slide:
    """Open the slide; channel names the file lacks are those the run used (features.json)."""
    channels = ((record or {}).get("slide") or {}).get("channels")
    return Slide(slide_path, manifest_mpp=manifest_mpp, backend=config.slide.backend,
                 mpp_range=config.slide.mpp_range, mpp_tolerance=config.slide.mpp_tolerance,
                 channel_names=channels, channel_names_source="features.json")


def _measure(slide: Slide, folder: Path, mask: np.ndarray, mask_mpp: float, *, kind: str,
             cells: pd.DataFrame | None, config: PathologyConfig,
             modality: str | None = None) -> SlideQc:
    nuclear = None
    if kind == "fluorescence":
        from pathology.io.slide import nuclear_channel_index

        nuclear = nuclear_channel_index(slide.info.channels, config.slide.nuclear_channels)
    qc = slide_qc(slide, mask, tissue_mpp=mask_mpp, kind=kind, cells=cells, config=config.qc,
                  nuclear=nuclear, background=config.cells.background_intensity,
                  modality=modality)
    save_artefact_mask(folder, qc.artefact_codes(), mpp=qc.mpp,
                       qc_config_sha256=qc_digest(config))
    return qc


def measure_slide_qc(folder: Path, *, slide_path: Path, manifest_mpp: float | None,
                     config: PathologyConfig, modality: str | None = None) -> SlideQc:
    """Find a finished slide's artefacts and save their mask for the features step.

    Writes ``qc/artefact_mask.png`` (bit 1 focus, 2 pen, 4 dark, 8 bright, on the QC overview
    grid) and ``qc/artefacts.json`` (its pixel size and the QC settings' hash). Parameters as
    :func:`run_slide_qc`; pass the result to it as ``measured`` to draw the overlays without
    measuring twice.

    Returns
    -------
    pathology.qc.metrics.SlideQc
    """
    folder, mask, mask_mpp, record = _finished_slide(folder)
    cells = _read_cells(folder)
    with _open_slide(slide_path, manifest_mpp, config, record) as slide:
        modality = modality or record.get("modality")
        kind = _kind(modality, slide)
        return _measure(slide, folder, mask, mask_mpp, kind=kind, cells=cells, config=config,
                        modality=modality)


def run_slide_qc(folder: Path, *, slide_path: Path, manifest_mpp: float | None,
                 config: PathologyConfig, modality: str | None = None,
                 measured: SlideQc | None = None, checks: Sequence[Flag] = ()) -> dict:
    """Check one finished slide and write its slide folder's ``qc/`` folder.

    Writes ``qc.json`` (metrics, every check with its reason, artefact areas), the artefact
    mask (``artefact_mask.png``: bit 1 focus, 2 pen, 4 dark, 8 bright, on the overview grid),
    the overlays (:mod:`pathology.qc.overlays`), ``detections.geojson`` (when the cells have
    outlines) and ``regions.geojson`` (tissue, regions and artefacts as QuPath annotations).

    Parameters
    ----------
    folder
        The slide folder (holding ``store.zarr``; its name is the sample id).
    slide_path
        The slide file.
    manifest_mpp
        The manifest's ``mpp`` for this slide, if any.
    config
        Resolved configuration (``slide`` to open the file, ``cells`` for the optical
        density background, ``qc`` for thresholds and overlays).
    modality
        ``he``, ``ihc`` or ``mif``; default: ``features.json``'s, else inferred from the
        pixel type (8-bit RGB is brightfield).
    measured
        The result of :func:`measure_slide_qc` for this slide and config (default: measure
        here).
    checks
        Checks of other steps to report with QC's own (a serial section's registration,
        :func:`pathology.registration.serial.registration_checks`); a fired one flags the
        slide.

    Returns
    -------
    dict
        The content of ``qc.json``.

    Raises
    ------
    QcError
        No tissue mask (the slide was not run).
    pathology.io.slide.SlideError
        The slide cannot be opened or read.
    """
    folder, mask, mask_mpp, record = _finished_slide(folder)
    sample_id = folder.name
    modality = modality or record.get("modality")
    qcc = config.qc
    cells = _read_cells(folder)
    target = folder / QC_DIR
    target.mkdir(parents=True, exist_ok=True)
    with _open_slide(slide_path, manifest_mpp, config, record) as slide:
        kind = _kind(modality, slide)
        qc = measured if measured is not None else _measure(
            slide, folder, mask, mask_mpp, kind=kind, cells=cells, config=config,
            modality=modality)
        if "counterstain" in qc.metrics and record.get("counterstain"):
            # what the network was shown (segmentation.ihc_counterstain_reference): the
            # contrast above is of the slide's own pixels
            qc.metrics["counterstain"]["network_gain"] = record["counterstain"].get("gain")
        rgb = tuple(c.upper() for c in slide.info.channels[:3]) == ("R", "G", "B")
        tints, legend = _composite_colors(slide, kind, record.get("stain"), config)
        display = overlays.display_rgb(qc.overview, rgb=rgb, tints=tints)
        overlays.write_thumbnail(display, target / "thumbnail.png")
        overlays.write_tissue_artefacts(display, qc.tissue, qc.artefacts,
                                        target / "tissue_artefacts.png",
                                        target / VIEWER_LAYERS["tissue"], mpp=qc.mpp)
        has_cells = cells is not None and len(cells) > 0
        classes = (cells["phenotype"].astype(str).to_numpy()
                   if has_cells and "phenotype" in cells else
                   np.full(len(cells) if cells is not None else 0, geojson.NUCLEUS_CLASS))
        colors = overlays.class_colors(np.unique(classes))
        x_um = cells["x_um"].to_numpy() if has_cells else np.zeros(0)
        y_um = cells["y_um"].to_numpy() if has_cells else np.zeros(0)
        overlays.write_detections(display, x_um, y_um, classes,
                                  target / "detections.png", target / VIEWER_LAYERS["detections"],
                                  mpp=qc.mpp, max_points=qcc.overlay_max_points)
        codes = (region_raster(x_um, y_um, cells["region"].to_numpy(), qc.tissue, mpp=qc.mpp)
                 if has_cells and "region" in cells else np.zeros(qc.tissue.shape, np.uint8))
        overlays.write_regions(display, codes, target / "regions.png",
                               target / VIEWER_LAYERS["regions"], mpp=qc.mpp)
        overlays.write_density(x_um, y_um, classes, qc.clean, target / "density.png",
                               mpp=qc.mpp, bin_um=qcc.density_bin_um)
        centres = overlays.crop_centres(qc.clean if qc.clean.any() else qc.tissue,
                                        n=qcc.crops, mpp=qc.mpp)
        cells_path = folder / CELLS_FILE
        has_polygons = cells_path.is_file() and "poly_x_um" in pq.read_schema(cells_path).names
        cell_outlines = (["cell_poly_x_um", "cell_poly_y_um"] if has_polygons and
                         "cell_poly_x_um" in pq.read_schema(cells_path).names else [])
        batches = (geojson.iter_cell_batches(
            cells_path, classes_path=folder / CLASSES_FILE,
            columns=["x_um", "y_um", "poly_x_um", "poly_y_um", "phenotype", *cell_outlines])
            if has_polygons else None)
        crops = overlays.write_crops(slide, centres, batches, target, crop_um=qcc.crop_um,
                                     colors=colors, rgb=rgb,
                                     scales=None if rgb else overlays.channel_scales(qc.overview),
                                     tints=tints, channel_legend=legend)
        info = slide.info
    n_detections = None
    if has_polygons:
        n_detections = geojson.write_detections(
            cells_path, target / DETECTIONS_FILE, mpp_x=info.pixel_size.mpp_x,
            mpp_y=info.pixel_size.mpp_y, classes_path=folder / CLASSES_FILE, colors=colors,
            decimals=qcc.geojson_decimals)
    region_colors = {**{QUPATH_NAMES[k]: overlays.FIXED_COLORS[k] for k in QUPATH_NAMES},
                     "Tissue": overlays.FIXED_COLORS["tissue"],
                     **{f"Artefact: {k}": overlays.FIXED_COLORS[k] for k in ARTEFACTS}}
    n_regions = geojson.write_annotations(
        _region_features(qc, codes), target / REGIONS_FILE, mpp_x=info.pixel_size.mpp_x,
        mpp_y=info.pixel_size.mpp_y, colors=region_colors, decimals=qcc.geojson_decimals)
    registration = list(checks)  # serial sections: the fit onto the reference
    lineage, marker_files = {}, {}
    if modality == "mif":  # multiplex marker calls: histograms and lineage consistency
        lineage, lineage_check, marker_files = marker_qc(
            folder / CELLS_FILE, folder / CLASSES_FILE, record, target, config=qcc)
        if lineage_check is not None:
            registration.append(lineage_check)
    fired = [*qc.fired, *(f for f in registration if f.fired)]
    result = {
        "sample_id": sample_id, "modality": modality, "kind": kind,
        "status": "flagged" if fired else "pass",
        "flags": [f.name for f in fired],
        "reasons": [f.reason for f in fired],
        "checks": [f.to_json() for f in (*qc.flags, *registration)],
        "metrics": {**qc.metrics, **({"lineage": lineage} if lineage else {})},
        "slide": {"path": str(info.path), "backend": info.backend,
                  "dimensions": list(info.dimensions), "mpp_x": info.pixel_size.mpp_x,
                  "mpp_y": info.pixel_size.mpp_y, "channels": list(info.channels)},
        "overview_shape": list(qc.tissue.shape),
        "files": {"thumbnail": "thumbnail.png", "tissue_artefacts": "tissue_artefacts.png",
                  "detections": "detections.png", "regions": "regions.png",
                  "density": "density.png", "artefact_mask": ARTEFACT_FILE,
                  "registration": "registration.png" if registration and (
                      target / "registration.png").is_file() else None,
                  "layers": VIEWER_LAYERS, "crops": crops,
                  "detections_geojson": DETECTIONS_FILE if has_polygons else None,
                  "regions_geojson": REGIONS_FILE,
                  **({"marker_histograms": marker_files} if marker_files else {})},
        # the composite's channel colours (panel colours; None = hidden), which the review
        # app's channel controls start from
        "display": ({"colors": [overlays.hex_color(t) if t else None for t in tints]}
                    if tints else None),
        "n_detections": n_detections, "n_region_annotations": n_regions,
        "classes": {name: [int(255 * c) for c in colors[name]] for name in colors},
        "qc_config": config.qc.model_dump(mode="json"),
        "qc_config_sha256": qc_digest(config),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text(target / QC_FILE, json.dumps(result, indent=2) + "\n")
    log.info("slide=%s qc=%s flags=%s", sample_id, result["status"],
             ",".join(result["flags"]) or "-")
    return result
