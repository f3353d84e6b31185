"""One slide through the segmentation steps: open -> tissue -> tiles -> nuclei -> cells.parquet,
resumable; the runner's part that decides the order, what is cached and where it is written.

Each finished tile is recorded in the slide's ``store.zarr`` with its cells as a Parquet part;
a killed run resumes at the first unfinished tile and yields exactly the cells of an
uninterrupted run (tiles are independent and deterministic; cell ids are given at
consolidation, in tile order).
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hcccore.atomic import write_text
from pathology.cells.measure import measure_tile
from pathology.cells.nucleus_classes import PatchClassifier, is_patch_model, load_patch_classifier
from pathology.config import PathologyConfig, WholeCellSection
from pathology.io import folder as slide_folder
from pathology.io.metadata import file_signature
from pathology.io.slide import Slide, SlideError, nuclear_channel_index
from pathology.run.auto_backend import auto_backend
from pathology.run.layout import RunFolder
from pathology.run.store import SlideStore
from pathology.segmentation.nuclei import (
    NucleusModel,
    Prediction,
    TileNuclei,
    gpu_available,
    instances_from_prediction,
    load_model,
    network_box,
    normalization_range,
    nuclei_to_working,
    predict_tiles,
)
from pathology.segmentation.tiles import Tile, tile_grid
from pathology.segmentation.wholecell import WholeCellPlan, plan_whole_cells
from pathology.tissue.detect import detect_tissue, explain_no_tissue

log = logging.getLogger("hccbio.pathology")

SLIDE_KINDS = {"he": "brightfield", "ihc": "brightfield", "mif": "fluorescence"}
CELLS_FILE = slide_folder.CELLS
FEATURES_FILE = slide_folder.FEATURES
NORM_SAMPLE_SPACING = 2048  # px at working resolution; fixed so normalisation ignores tiling
NORM_SAMPLE_SIZE = 256
# About 10.6 Mpx per forward pass on a GPU (8 read boxes of 1152 px): a few GB of U-Net
# activations; a batch that does not fit is halved (pathology.segmentation.nuclei).
GPU_PIXELS_PER_FORWARD = 8 * 1152**2


@dataclass(frozen=True)
class SlideJob:
    """One slide to process (from a manifest row)."""

    sample_id: str
    path: Path
    modality: Literal["he", "ihc", "mif"]
    stain: str = ""
    mpp: float | None = None


@dataclass(frozen=True)
class SlideResult:
    """What processing one slide produced."""

    sample_id: str
    n_cells: int
    n_tiles: int
    tiles_computed: int
    tissue_area_mm2: float
    note: str
    backend: str = ""  # what ran the network in the process that finalised the slide


class ModelCache:
    """Loads each segmentation model (and the H&E nucleus-class network) once per process."""

    def __init__(self, config: PathologyConfig) -> None:
        self.config = config
        self._models: dict[str, NucleusModel] = {}
        self._classifiers: dict[str, PatchClassifier] = {}

    def get(self, modality: str) -> NucleusModel:
        """The model for slides of ``modality`` (``he``, ``ihc``, ``mif``, or ``brightfield``
        / ``fluorescence``; see :meth:`SegmentationSection.model_for`)."""
        seg = self.config.segmentation
        spec = seg.model_for(modality)
        if spec not in self._models:
            self._models[spec] = load_model(spec, prob_thresh=seg.prob_thresh,
                                            nms_thresh=seg.nms_thresh,
                                            backend=self.backend_for(modality) or "auto",
                                            precision=seg.precision)
        return self._models[spec]

    def backend_for(self, modality: str, *, measure_missing: bool = True) -> str | None:
        """``segmentation.backend``, with ``auto`` on a CPU resolved by measurement (once per
        CPU model and networks, cached: :mod:`pathology.run.auto_backend`).
        ``auto`` stays ``auto`` when OpenVINO is chosen, so that a network OpenVINO cannot
        convert still falls back to TensorFlow. None: not measured yet and
        ``measure_missing`` is False."""
        seg = self.config.segmentation
        if seg.backend != "auto" or seg.precision != "float32":
            return seg.backend
        classes = self.config.phenotypes.lymphocyte_model
        box = self.config.tiling.tile_size + 2 * self.config.tiling.halo
        choice = auto_backend(seg.model_for(modality),
                              classes if modality == "he" and is_patch_model(classes) else None,
                              box_px=box, prob_thresh=seg.prob_thresh,
                              nms_thresh=seg.nms_thresh, measure_missing=measure_missing)
        if choice is None:
            return None
        return "tensorflow" if choice == "tensorflow" else "auto"

    def cell_classifier(self, modality: str) -> PatchClassifier | None:
        """The patch network that classifies H&E nuclei while their tile is in memory, when
        ``phenotypes.lymphocyte_model`` names one (None for other modalities and for the
        cells.parquet-only logistic model).

        Raises
        ------
        SlideError
            The network was trained at another pixel size than ``slide.working_mpp``.
        """
        spec = self.config.phenotypes.lymphocyte_model
        if modality != "he" or not is_patch_model(spec):
            return None
        if spec not in self._classifiers:
            # run by the segmentation network's backend (OpenVINO workers load no TensorFlow)
            classifier = load_patch_classifier(spec).on_backend(self.get(modality).backend)
            working = self.config.slide.working_mpp
            if abs(classifier.mpp - working) > 0.02 * working:
                raise SlideError(f"{classifier.folder}: the nucleus-class network was trained "
                                 f"at {classifier.mpp} um/px but slide.working_mpp is "
                                 f"{working}; use working_mpp {classifier.mpp} or another "
                                 "phenotypes.lymphocyte_model")
            self._classifiers[spec] = classifier
        return self._classifiers[spec]

    def describe(self) -> dict[str, dict]:
        """Provenance of every model loaded so far, keyed by its configured name."""
        return {**{spec: model.describe() for spec, model in self._models.items()},
                **{spec: c.describe() for spec, c in self._classifiers.items()}}


def _segmentation_input(image: np.ndarray, kind: str, nuclear: int | None) -> np.ndarray:
    if kind == "brightfield":
        return image[..., :3]
    if nuclear is None:
        return image.max(axis=2, keepdims=True)
    return image[..., nuclear:nuclear + 1]


def _normalisation_sample(slide: Slide, mask: np.ndarray, mask_mpp: float, working_mpp: float,
                          kind: str, nuclear: int | None) -> np.ndarray:
    """Full-resolution pixels from a lattice of tissue windows (independent of tiling).

    The lattice spacing halves from 2048 px until at least 16 windows fall on tissue, so small
    slides are sampled as well as large ones.
    """
    windows = _sample_windows(slide, mask, mask_mpp, working_mpp)
    return np.concatenate([_segmentation_input(w, kind, nuclear).ravel() for w in windows])


def _sample_windows(slide: Slide, mask: np.ndarray, mask_mpp: float,
                    working_mpp: float) -> list[np.ndarray]:
    """The windows (all channels, working resolution) of :func:`_normalisation_sample`."""
    height, width = slide.working_shape(working_mpp)
    scale = working_mpp / mask_mpp
    spacing = NORM_SAMPLE_SPACING
    while True:
        origins = []
        for y in range(0, height, spacing):
            for x in range(0, width, spacing):
                h, w = min(NORM_SAMPLE_SIZE, height - y), min(NORM_SAMPLE_SIZE, width - x)
                my, mx = int(y * scale), int(x * scale)
                if mask[my:my + max(1, int(h * scale)) + 1,
                        mx:mx + max(1, int(w * scale)) + 1].any():
                    origins.append((x, y, w, h))
        if len(origins) >= 16 or spacing <= NORM_SAMPLE_SIZE:
            break
        spacing //= 2
    if not origins:
        raise SlideError(f"{slide.path}: no tissue found to compute intensity normalisation")
    return [slide.read_region_at(x, y, w, h, mpp=working_mpp) for x, y, w, h in origins]


@dataclass(frozen=True)
class SlidePlan:
    """Everything tile workers need about a prepared slide (small and picklable)."""

    job: SlideJob
    kind: str
    nuclear: int | None
    tiles: tuple[Tile, ...]
    norm_range: tuple[float, float]
    tissue_area_mm2: float
    identity: dict
    info: dict
    stains: dict | None = None  # cells.stain_matrix: method, matrix rows, note
    whole_cell: WholeCellPlan | None = None  # fluorescence: cells.whole_cell, per-slide values
    nuclei_mpp: float | None = None  # fluorescence: the panel's network pixel size (um/px)
    counterstain: dict | None = None  # IHC: what the network is shown (slide_counterstain)


def slide_counterstain(pixels: np.ndarray, config: PathologyConfig) -> dict:
    """How the IHC network is shown a slide's counterstain
    (``segmentation.ihc_counterstain_reference``).

    The slide's own counterstain vector and hematoxylin level
    (:func:`pathology.segmentation.stains.counterstain_matrix`,
    :func:`pathology.segmentation.stains.hematoxylin_level`) are measured on its tissue
    windows; a level under the reference gives a gain above 1, by which each tile's
    hematoxylin is scaled (:func:`network_view`) before the network sees it. Measurements
    and DAB calls use the slide's own pixels.

    Returns
    -------
    dict
        ``reference``, ``level``, ``gain`` (1: shown as it is), ``matrix`` (stain rows, or
        None) and ``note``.
    """
    from pathology.segmentation.stains import (
        StainError,
        counterstain_gain,
        counterstain_matrix,
        hematoxylin_level,
    )

    seg = config.segmentation
    reference = seg.ihc_counterstain_reference
    none = {"reference": reference, "level": None, "gain": 1.0, "matrix": None}
    if reference is None:
        return {**none, "note": "segmentation.ihc_counterstain_reference is null: the network "
                "sees the slide as it is"}
    background = config.cells.background_intensity
    rgb = pixels.reshape(-1, 1, 3)
    try:
        matrix = counterstain_matrix(rgb, background=background)
        level = hematoxylin_level(rgb, matrix, background=background)
    except StainError as error:
        return {**none, "note": f"counterstain not measured ({error}); the network sees the "
                "slide as it is"}
    gain = counterstain_gain(level, reference, seg.ihc_counterstain_max_gain)
    note = (f"hematoxylin level {level:.3f} >= {reference:g}: shown as it is" if gain == 1.0
            else f"hematoxylin level {level:.3f} < {reference:g}: the network sees the "
                 f"hematoxylin x {gain:.2f}")
    return {"reference": reference, "level": level, "gain": gain, "matrix": matrix.tolist(),
            "note": note}


def network_view(image: np.ndarray, counterstain: dict | None) -> np.ndarray:
    """The RGB tile the IHC network is shown: its hematoxylin scaled by the slide's gain in
    the slide's counterstain vector (the tile itself when the gain is 1)."""
    if not counterstain or counterstain["gain"] == 1.0:  # no matrix measured: gain 1
        return image
    from pathology.segmentation.stains import rescale_stains

    return rescale_stains(image[..., :3], hematoxylin=counterstain["gain"],
                          matrix=np.asarray(counterstain["matrix"]))


def slide_stain_matrix(slide: Slide, mask: np.ndarray, mask_mpp: float, working_mpp: float, *,
                       modality: str, config: PathologyConfig,
                       pixels: np.ndarray | None = None) -> dict:
    """The colour deconvolution of a brightfield slide (``cells.stain_matrix``).

    ``skimage_hed``: Ruifrok-Johnston vectors. ``auto``: on IHC slides, hematoxylin and DAB
    vectors estimated from this slide's tissue
    (:func:`pathology.segmentation.stains.estimate_hdab_matrix`
    on the normalisation windows; the third row is a residual), falling back to the default
    with the reason when too few pixels are stained; H&E slides keep the default (no DAB).

    Returns
    -------
    dict
        ``method`` (``skimage_hed`` or ``auto``), ``matrix`` (3 x 3 rows: hematoxylin,
        eosin or residual, DAB), ``unmixing`` (its inverse; None for the default), ``note``.
    """
    from pathology.segmentation.stains import (
        DEFAULT_MATRIX,
        StainError,
        angle_degrees,
        deconvolution_matrix,
        estimate_hdab_matrix,
    )

    default = {"method": "skimage_hed", "matrix": DEFAULT_MATRIX.tolist(), "unmixing": None,
               "note": "Ruifrok-Johnston vectors (scikit-image rgb2hed)"}
    if config.cells.stain_matrix != "auto":
        return default
    if modality != "ihc":
        return {**default, "note": "cells.stain_matrix auto applies to IHC (hematoxylin + "
                "DAB); this slide keeps the Ruifrok-Johnston vectors"}
    if pixels is None:
        pixels = _normalisation_sample(slide, mask, mask_mpp, working_mpp, "brightfield", None)
    try:
        matrix = estimate_hdab_matrix(pixels.reshape(-1, 3),
                                      background=config.cells.background_intensity)
    except StainError as error:
        return {**default, "note": f"auto estimate failed ({error}); default vectors used"}
    return {"method": "auto", "matrix": matrix.tolist(),
            "unmixing": deconvolution_matrix(matrix).tolist(),
            "note": "hematoxylin and DAB estimated from this slide (Macenko); angles to the "
                    f"default: hematoxylin {angle_degrees(matrix[0], DEFAULT_MATRIX[0]):.1f}, "
                    f"DAB {angle_degrees(matrix[2], DEFAULT_MATRIX[2]):.1f} degrees"}


def _panel(job: SlideJob, config: PathologyConfig):
    """The multiplex panel of a fluorescence slide, or None (no panel, or an invalid one: the
    features step reports that)."""
    if job.modality != "mif":
        return None
    from pathology.cells.panels import PanelError, resolve_panel

    try:
        return resolve_panel("mif", job.stain, directory=config.phenotypes.panels_dir)
    except PanelError:
        return None


def _open(job: SlideJob, config: PathologyConfig) -> Slide:
    panel = _panel(job, config)
    return Slide(job.path, manifest_mpp=job.mpp, backend=config.slide.backend,
                 mpp_range=config.slide.mpp_range, mpp_tolerance=config.slide.mpp_tolerance,
                 channel_names=panel.channels if panel is not None else None,
                 channel_names_source=f"panel:{panel.name}" if panel is not None else "panel")


def check_panel_channels(job: SlideJob, channels: tuple[str, ...], source: str,
                         config: PathologyConfig) -> None:
    """Every marker of the slide's multiplex panel must name one of its channels.

    Raises
    ------
    SlideError
        Naming the file, the markers without a channel, and the channels found (with where
        their names came from), before any tile is segmented.
    """
    panel = _panel(job, config)
    if panel is None:
        return
    missing = [f"{m.name} (channel {m.channel!r})" for m in panel.markers
               if m.source == "intensity" and m.channel not in channels]
    if missing:
        hint = ("; the file names no channels: list them one per line in "
                f"{job.path.name}.channels.txt beside it, or under 'channels:' in the panel"
                if source == "none" else "; fix the panel's channel names or the file's")
        raise SlideError(f"{job.path}: panel {panel.name!r} marker(s) {', '.join(missing)} "
                         f"have no channel in this image; channels found ({source}): "
                         f"{', '.join(channels)}{hint}")


def whole_cell_section(job: SlideJob, config: PathologyConfig) -> WholeCellSection:
    """``cells.whole_cell`` for one slide: the config's, with the keys its multiplex panel
    sets (the panel's ``whole_cell:`` mapping) replaced."""
    panel = _panel(job, config)
    section = config.cells.whole_cell
    if panel is None or not panel.whole_cell:
        return section
    return WholeCellSection.model_validate({**section.model_dump(), **panel.whole_cell})


def panel_nuclei_mpp(job: SlideJob, config: PathologyConfig) -> float | None:
    """The pixel size at which the nucleus model sees a fluorescence slide's nuclear channel
    (its panel's ``nuclei_mpp``), or None for the working resolution."""
    panel = _panel(job, config)
    mpp = panel.nuclei_mpp if panel is not None else None
    if mpp is None or abs(mpp - config.slide.working_mpp) < 1e-9:
        return None
    return float(mpp)


def whole_cell_channels(channels: tuple[str, ...], nuclear: int | None, job: SlideJob,
                        config: PathologyConfig) -> tuple[int, ...]:
    """Indices of the channels summed into the cytoplasm / membrane signal
    (``cells.whole_cell.channels``, or the panel's; default the panel's markers read
    outside the nucleus, else every channel but the nuclear one).

    Raises
    ------
    SlideError
        A configured channel is not in the slide.
    """
    wanted = whole_cell_section(job, config).channels
    if wanted:
        missing = [c for c in wanted if c not in channels]
        if missing:
            raise SlideError(f"{job.path}: cells.whole_cell.channels names {', '.join(missing)}"
                             f", not among the channels found: {', '.join(channels)}")
        return tuple(channels.index(c) for c in wanted)
    panel = _panel(job, config)
    if panel is not None:
        from_panel = [channels.index(m.channel) for m in panel.markers
                      if m.compartment != "nucleus" and m.channel in channels]
        if from_panel:
            return tuple(sorted(set(from_panel)))
    return tuple(i for i in range(len(channels)) if i != nuclear)


def prepare_slide(job: SlideJob, out: Path, config: PathologyConfig,
                  models: ModelCache, *, fresh: bool = False) -> SlidePlan:
    """Open the slide, find (or reuse) its tissue mask, and lay out its tiles.

    Parameters
    ----------
    fresh
        Clear the slide's store first (``--force``): nothing of an earlier run is reused, the
        tissue and every tile are computed again from the pixels.

    Raises
    ------
    SlideError
        The slide cannot be opened or read, is of the wrong kind, or has no tissue.
    """
    if job.modality not in SLIDE_KINDS:
        raise SlideError(f"{job.path}: modality {job.modality!r} is not a slide modality "
                         f"({', '.join(SLIDE_KINDS)})")
    kind = SLIDE_KINDS[job.modality]
    cfg = config
    with _open(job, cfg) as slide:
        info = slide.info
        if kind == "brightfield" and (len(info.channels) < 3 or info.dtype != "uint8"):
            raise SlideError(f"{job.path}: modality {job.modality} needs an 8-bit RGB slide, "
                             f"found {len(info.channels)} channel(s) of {info.dtype}")
        if kind == "fluorescence":
            check_panel_channels(job, info.channels, info.channels_source, cfg)
        try:
            nuclear = (nuclear_channel_index(info.channels, cfg.slide.nuclear_channels)
                       if kind == "fluorescence" else None)
        except SlideError as error:
            raise SlideError(f"{job.path}: {error} (channels from {info.channels_source})"
                             ) from error
        model = models.get(job.modality)
        identity = {"input": file_signature(job.path), "config": cfg.digest(),
                    "model": model.sha256, "modality": job.modality,
                    "manifest_mpp": job.mpp}
        panel = _panel(job, cfg) if kind == "fluorescence" else None
        nuclei_mpp = panel_nuclei_mpp(job, cfg) if kind == "fluorescence" else None
        if panel is not None and (panel.nuclei_mpp is not None or panel.whole_cell):
            # the panel's segmentation keys change the cells: a stored slide is redone
            identity["panel_segmentation"] = {"nuclei_mpp": panel.nuclei_mpp,
                                              "whole_cell": dict(panel.whole_cell)}
        classifier = models.cell_classifier(job.modality)
        if classifier is not None:  # its probabilities are per-tile columns
            identity["cell_classes"] = classifier.sha256
        store = SlideStore(RunFolder(out).slide(job.sample_id).root, identity, fresh=fresh)
        stored = store.tissue_mask()
        if stored is None:
            mask_mpp = cfg.tissue.mask_mpp
            if cfg.tissue.mode == "whole_image":  # an ROI or a TMA core: all of it is tissue
                mask = np.ones(slide.working_shape(mask_mpp), dtype=bool)
            else:
                overview = slide.read_overview(mask_mpp)
                if kind == "fluorescence" and nuclear is None:
                    overview = overview.max(axis=2, keepdims=True)
                options = {"kind": kind, "mpp": mask_mpp, "config": cfg.tissue,
                           "nuclear_channel": nuclear or 0,
                           "background": cfg.cells.background_intensity}
                mask = detect_tissue(overview, **options)
                if not mask.any():
                    raise SlideError(f"{job.path}: {explain_no_tissue(overview, **options)}")
            store.save_tissue_mask(mask, mask_mpp)
        else:
            mask, mask_mpp = stored
        if not mask.any():
            raise SlideError(f"{job.path}: no tissue detected (check the tissue settings or "
                             "the slide)")
        working_mpp = cfg.slide.working_mpp
        shape = slide.working_shape(working_mpp)
        tiles = tile_grid(shape, tile_size=cfg.tiling.tile_size, halo=cfg.tiling.halo,
                          tissue_mask=mask)
        n_grid = math.ceil(shape[0] / cfg.tiling.tile_size) * math.ceil(
            shape[1] / cfg.tiling.tile_size)
        store.init_tiles(n_grid, {"shape": list(shape), "tile_size": cfg.tiling.tile_size,
                                  "halo": cfg.tiling.halo})
        # IHC: one sample of tissue windows for the stain vectors and the counterstain level
        ihc_pixels = (_normalisation_sample(slide, mask, mask_mpp, working_mpp, kind, None)
                      if job.modality == "ihc" else None)
        counterstain = (slide_counterstain(ihc_pixels, cfg) if ihc_pixels is not None
                        else None)
        if model.normalization["method"] == "fixed":
            norm_range = normalization_range(model, np.zeros(1))
        else:  # percentiles of what the network is shown
            sample = (ihc_pixels if ihc_pixels is not None else _normalisation_sample(
                slide, mask, mask_mpp, working_mpp, kind, nuclear))
            if counterstain is not None:
                sample = network_view(sample.reshape(-1, 1, 3), counterstain).ravel()
            norm_range = normalization_range(model, sample)
        stains = (slide_stain_matrix(slide, mask, mask_mpp, working_mpp, modality=job.modality,
                                     config=cfg, pixels=ihc_pixels)
                  if kind == "brightfield" else None)
        if counterstain is not None:
            store.set_attr("counterstain", counterstain)
        whole_cell = None
        if kind == "fluorescence":
            wc = whole_cell_section(job, cfg)
            whole_cell = plan_whole_cells(
                _sample_windows(slide, mask, mask_mpp, working_mpp) if wc.method != "ring"
                else [], method=wc.method,
                channels=whole_cell_channels(info.channels, nuclear, job, cfg),
                max_distance_px=wc.max_distance_um / working_mpp,
                smooth_px=wc.smooth_um / working_mpp,
                ring_px=cfg.cells.ring_width_um / working_mpp)
            store.set_attr("whole_cell", whole_cell.to_json(info.channels, working_mpp))
        store.set_attr("slide", info.to_json())
        store.set_attr("normalization_range", list(norm_range))
        if store.reset_reason:
            store.set_attr("reset_reason", store.reset_reason)
    return SlidePlan(job, kind, nuclear, tuple(tiles), norm_range,
                     float(mask.sum()) * mask_mpp**2 / 1e6, identity, info.to_json(), stains,
                     whole_cell, nuclei_mpp, counterstain)


def process_tiles(plan: SlidePlan, out: Path, config: PathologyConfig, models: ModelCache,
                  tile_indices: list[int] | None = None, *, max_tiles: int | None = None) -> int:
    """Segment and measure the plan's unfinished tiles (or the given subset).

    Several processes may work on disjoint subsets of one slide at once: each tile has its
    own Parquet part and its own progress chunk. Within the process, reading and the network
    forward pass of the next batch of tiles run in a second thread while the current tiles'
    nuclei are separated (non-maximum suppression), measured and written
    (``batch.read_ahead``); results are the same either way.

    Returns
    -------
    int
        Number of tiles computed (tiles already done are skipped).
    """
    store = SlideStore(RunFolder(out).slide(plan.job.sample_id).root, plan.identity)
    wanted = None if tile_indices is None else set(tile_indices)
    todo = [tile for tile in plan.tiles
            if (wanted is None or tile.index in wanted) and not store.tile_done(tile.index)]
    if max_tiles is not None:
        todo = todo[:max_tiles]
    if not todo:
        return 0
    model = models.get(plan.job.modality)
    classifier = models.cell_classifier(plan.job.modality)
    per_forward = tiles_per_forward(config)
    batches = [todo[i:i + per_forward] for i in range(0, len(todo), per_forward)]
    with _open(plan.job, config) as slide, ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hccbio-read-ahead") as ahead:
        level0_mpp, channels = slide.info.pixel_size.mpp, slide.info.channels

        def read_and_predict(batch: list[Tile]) -> list[tuple[Tile, np.ndarray, Prediction]]:
            images = [_read_tile(slide, tile, config) for tile in batch]
            if plan.nuclei_mpp is None:
                inputs = [network_view(_segmentation_input(image, plan.kind, plan.nuclear),
                                       plan.counterstain) for image in images]
            else:
                inputs = [_read_nuclear_box(slide, tile, plan, config) for tile in batch]
            predictions = predict_tiles(model, inputs, plan.norm_range, batch_size=per_forward)
            return list(zip(batch, images, predictions, strict=True))

        run = ahead.submit if config.batch.read_ahead else _run_now
        pending = run(read_and_predict, batches[0])
        for number in range(len(batches)):
            results = pending.result()
            if number + 1 < len(batches):
                pending = run(read_and_predict, batches[number + 1])
            for tile, image, prediction in results:
                nuclei = instances_from_prediction(model, prediction)
                if plan.nuclei_mpp is not None:
                    nuclei = _nuclei_at_working(nuclei, tile, plan, config)
                table = measure_tile(
                    tile, nuclei, image, kind=plan.kind, working_mpp=config.slide.working_mpp,
                    level0_mpp=level0_mpp, channels=channels,
                    min_area_um2=config.segmentation.min_area_um2,
                    background=config.cells.background_intensity,
                    ring_width_um=config.cells.ring_width_um, unmixing=_unmixing(plan),
                    whole_cell=plan.whole_cell)
                if classifier is not None:
                    table = classify_tile(classifier, table, tile, image,
                                          working_mpp=config.slide.working_mpp)
                store.save_tile(tile.index, table)
    return len(todo)


def classify_tile(classifier: PatchClassifier, table: pa.Table, tile: Tile, image: np.ndarray,
                  *, working_mpp: float) -> pa.Table:
    """Add the class-probability columns (``p_<class>``) of the tile's nuclei, from patches of
    the read box centred on each nucleus (the read box's halo gives border nuclei context)."""
    rows = table.column("y_um").to_numpy() / working_mpp - tile.read_y - 0.5
    cols = table.column("x_um").to_numpy() / working_mpp - tile.read_x - 0.5
    for name, values in classifier.classify(image, rows, cols).items():
        table = table.append_column(name, pa.array(values, type=pa.float32()))
    return table


def _unmixing(plan: SlidePlan) -> np.ndarray | None:
    """The slide's optical-density-to-stain matrix (None: scikit-image's default)."""
    matrix = (plan.stains or {}).get("unmixing")
    return None if matrix is None else np.asarray(matrix, dtype=np.float32)


def tiles_per_forward(config: PathologyConfig) -> int:
    """Tiles per network forward pass: the configured value, else 1 on a CPU (and with
    ``segmentation.backend: openvino``, which runs on the CPU) and, when TensorFlow sees a
    GPU, as many read boxes as make ``GPU_PIXELS_PER_FORWARD`` pixels (8 tiles of 1024 px,
    2 of 2048 px with the default halo)."""
    if config.batch.tiles_per_forward is not None:
        return config.batch.tiles_per_forward
    if config.segmentation.backend == "openvino" or not gpu_available():
        return 1
    side = config.tiling.tile_size + 2 * config.tiling.halo
    return max(1, GPU_PIXELS_PER_FORWARD // side**2)


def _run_now(function, *args) -> Future:
    """Run ``function`` here and now, as a finished future (no read-ahead)."""
    future: Future = Future()
    future.set_result(function(*args))
    return future


def _nuclei_scale(plan: SlidePlan, config: PathologyConfig) -> float:
    return config.slide.working_mpp / plan.nuclei_mpp  # type: ignore[operator]


def _read_nuclear_box(slide: Slide, tile: Tile, plan: SlidePlan,
                      config: PathologyConfig) -> np.ndarray:
    """The nuclear channel of a tile's read box, read from the slide at the panel's
    ``nuclei_mpp`` (one interpolation from the source pixels, not a second one of the
    working-resolution tile: that blurs small nuclei together)."""
    y0, x0, height, width = network_box(tile.read_y, tile.read_x, tile.read_height,
                                        tile.read_width, scale=_nuclei_scale(plan, config))
    channel = 0 if plan.nuclear is None else plan.nuclear
    image = slide.read_region_at(x0, y0, width, height, mpp=plan.nuclei_mpp,  # type: ignore
                                 channels=None if plan.nuclear is None else (channel,))
    return _segmentation_input(image, plan.kind, None if plan.nuclear is None else 0)


def _nuclei_at_working(nuclei: TileNuclei, tile: Tile, plan: SlidePlan,
                       config: PathologyConfig) -> TileNuclei:
    scale = _nuclei_scale(plan, config)
    y0, x0, _, _ = network_box(tile.read_y, tile.read_x, tile.read_height, tile.read_width,
                               scale=scale)
    return nuclei_to_working(nuclei, scale=scale, read_origin=(tile.read_y, tile.read_x),
                             network_origin=(y0, x0),
                             shape=(tile.read_height, tile.read_width))


def _read_tile(slide: Slide, tile: Tile, config: PathologyConfig) -> np.ndarray:
    return slide.read_region_at(tile.read_x, tile.read_y, tile.read_width, tile.read_height,
                                mpp=config.slide.working_mpp)


def finalize_slide(plan: SlidePlan, out: Path, config: PathologyConfig, models: ModelCache, *,
                   seconds: float = 0.0, tiles_computed: int = 0) -> SlideResult:
    """Consolidate the tile parts into ``cells.parquet`` and write ``features.json``."""
    folder = RunFolder(out).slide(plan.job.sample_id).root
    store = SlideStore(folder, plan.identity)
    missing = [t.index for t in plan.tiles if not store.tile_done(t.index)]
    if missing:
        raise SlideError(f"{plan.job.path}: {len(missing)} tile(s) unfinished, e.g. "
                         f"{missing[:5]}; run again to resume")
    # What was computed from the previous cells no longer matches them (classes per cell
    # row, the AnnData export): removed before the new cells replace the old ones, and made
    # again from the new cells by the steps that follow.
    for derived in (slide_folder.CLASSES, slide_folder.ANNDATA):
        (folder / derived).unlink(missing_ok=True)
    n_cells = consolidate_cells(store, list(plan.tiles), folder / CELLS_FILE)
    area = plan.tissue_area_mm2
    model = models.get(plan.job.modality)
    job = plan.job
    features = {
        "sample_id": job.sample_id, "modality": job.modality, "stain": job.stain,
        "n_nuclei": n_cells,
        "tissue_area_mm2": {"value": area, "unit": "mm^2"},
        "nuclei_density": {"value": n_cells / area if area else None,
                           "unit": "nuclei/mm^2 of tissue"},
        "slide": plan.info, "model": model.describe(),
        "normalization_range": list(plan.norm_range), "config_sha256": config.digest(),
        "stain_matrix": ({k: v for k, v in plan.stains.items() if k != "unmixing"}
                         if plan.stains else None),
        "counterstain": plan.counterstain,
        "whole_cell": (plan.whole_cell.to_json(tuple(plan.info["channels"]),
                                               config.slide.working_mpp)
                       if plan.whole_cell else None),
        "identity": plan.identity, "n_tiles": len(plan.tiles), "seconds": round(seconds, 2),
    }
    if plan.kind == "fluorescence":  # where the nucleus model saw the nuclear channel
        features["nuclei_mpp"] = plan.nuclei_mpp or config.slide.working_mpp
    write_text(folder / FEATURES_FILE, json.dumps(features, indent=2) + "\n")
    note = str(store.group.attrs.get("reset_reason", "") or "")
    log.info("slide=%s step=segmentation cells=%d tiles=%d computed=%d seconds=%.1f",
             job.sample_id, n_cells, len(plan.tiles), tiles_computed, seconds)
    return SlideResult(job.sample_id, n_cells, len(plan.tiles), tiles_computed, area, note,
                       model.backend)


def process_slide(job: SlideJob, out: Path, config: PathologyConfig, models: ModelCache, *,
                  max_tiles: int | None = None) -> SlideResult:
    """Segment and measure every nucleus of one slide into ``OUT/slides/<id>/cells.parquet``.

    Parameters
    ----------
    job
        The slide.
    out
        The run folder.
    config
        Resolved pipeline configuration.
    models
        Model cache (one model load per process).
    max_tiles
        Stop after computing this many new tiles (tests use it to simulate an interruption);
        the slide is then left unfinished and resumable.

    Returns
    -------
    SlideResult
        ``n_cells`` is -1 when the slide was left unfinished (``max_tiles``).

    Raises
    ------
    SlideError
        The slide cannot be opened or read, or has no tissue.
    """
    started = time.perf_counter()
    plan = prepare_slide(job, out, config, models)
    computed = process_tiles(plan, out, config, models, max_tiles=max_tiles)
    store = SlideStore(RunFolder(out).slide(job.sample_id).root, plan.identity)
    if any(not store.tile_done(t.index) for t in plan.tiles):
        return SlideResult(job.sample_id, -1, len(plan.tiles), computed, plan.tissue_area_mm2,
                           "interrupted (max_tiles)")
    return finalize_slide(plan, out, config, models, seconds=time.perf_counter() - started,
                          tiles_computed=computed)


def consolidate_cells(store: SlideStore, tiles: list[Tile], target: Path) -> int:
    """Stream the tile parts, in tile order, into one Parquet file with sequential cell ids.

    Memory holds one part at a time, never the whole slide.
    """
    tmp = target.with_name(f".{target.name}.tmp")
    writer = None
    next_id = 0
    try:
        for tile in tiles:
            part = _read_part(store, tile.index,
                              None if writer is None else writer.schema.remove(0))
            ids = pa.array(np.arange(next_id, next_id + part.num_rows, dtype=np.int64))
            part = part.add_column(0, "cell_id", ids)
            next_id += part.num_rows
            if writer is None:
                writer = pq.ParquetWriter(tmp, part.schema)
            writer.write_table(part)
        if writer is None:
            raise SlideError(f"{target.parent}: no tiles to consolidate")
        writer.close()
        writer = None
        tmp.replace(target)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return next_id


def _read_part(store: SlideStore, tile_index: int, schema: pa.Schema | None) -> pa.Table:
    """A tile's saved cells; a part that cannot be read, or whose columns differ from the
    other parts', is forgotten (computed again on the next run) and named in the error.

    Raises
    ------
    SlideError
        The part is damaged: one short line, not the Parquet reader's schema dump.
    """
    path = store.part_path(tile_index)
    try:
        part = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        problem = f"not a readable Parquet file ({type(error).__name__})"
    else:
        if schema is None or part.schema.equals(schema):
            return part
        problem = "its columns differ from the other tiles'"
    store.forget_tile(tile_index)
    raise SlideError(f"{path}: the saved cells of tile {tile_index} are damaged ({problem}); "
                     "the part was removed: run again to compute the tile again")


def read_cells(folder: Path) -> pa.Table:
    """Read a slide's consolidated cells."""
    return pq.read_table(Path(folder) / CELLS_FILE)


__all__ = ["SlideJob", "SlidePlan", "SlideResult", "ModelCache", "prepare_slide",
           "process_tiles", "finalize_slide", "process_slide", "consolidate_cells", "read_cells",
           ]
