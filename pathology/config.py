"""Configuration of the slide pipeline: one pydantic section per step, every field documented.

The YAML file ``configs/pathology.yaml`` mirrors these models one-to-one. Unknown keys are
errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hcccore.yamlfile import read_yaml

# The checkout: relative model and panel paths of a config are found here (or from the
# working directory).
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SlideSection(_Section):
    """How slides are opened and at which resolution they are analysed."""

    working_mpp: float = Field(0.5, gt=0, description="Analysis resolution in um/px; nuclei "
                               "models are trained at this resolution.")
    mpp_range: tuple[float, float] = Field((0.1, 2.0), description="Plausible level-0 pixel "
                                           "sizes (um/px); a value outside is an error.")
    mpp_tolerance: float = Field(0.02, ge=0, lt=0.5, description="Largest relative disagreement "
                                 "allowed between pixel-size sources (readers, manifest).")
    backend: Literal["auto", "openslide", "tiffslide"] = Field(
        "auto", description="Slide reader; auto = OpenSlide, tiffslide for what it cannot open, "
        "tifffile for channel stacks (IYX, QYX, one series per channel) and folders of TIFFs, "
        "pylibCZIrw for Zeiss CZI.")
    nuclear_channels: tuple[str, ...] = Field(("DAPI", "dsDNA", "H3", "Hoechst", "Histone",
                                               "Nuc"),
                                              description="Fluorescence: channel names tried in "
                                              "order (case-insensitive prefix) for nuclei.")

    @field_validator("mpp_range")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low < high:
            raise ValueError(f"[{low}, {high}] is not a range of pixel sizes: give [low, high] "
                             "with 0 < low < high, e.g. [0.1, 2.0]")
        return value


class TissueSection(_Section):
    """Tissue detection on a low-resolution image of the whole slide."""

    mode: Literal["detect", "whole_image"] = Field("detect", description="detect: find the "
                                                   "tissue (the settings below); whole_image: "
                                                   "all of the image is tissue (ROI exports, "
                                                   "TMA cores smaller than "
                                                   "min_tissue_area_um2).")
    mask_mpp: float = Field(8.0, gt=0, description="Resolution of the tissue mask in um/px.")
    od_threshold_range: tuple[float, float] = Field((0.05, 0.3), description="Brightfield: the "
                                                    "Otsu threshold on optical density is "
                                                    "clipped to this range.")
    saturation_threshold_range: tuple[float, float] = Field((0.04, 0.15), description="Bright"
                                                            "field: Otsu threshold on HSV "
                                                            "saturation, clipped to this range.")
    fluorescence_smooth_um: float = Field(8.0, ge=0, description="Fluorescence: Gaussian sigma "
                                          "(um) on the nuclear channel before Otsu.")
    closing_radius_um: float = Field(24.0, ge=0, description="Morphological closing (um) that "
                                     "joins tissue fragments and gaps between nuclei.")
    opening_radius_um: float = Field(16.0, ge=0, description="Morphological opening (um) that "
                                     "removes dust and thin debris.")
    min_tissue_area_um2: float = Field(20000.0, ge=0, description="Tissue pieces smaller than "
                                       "this are dropped.")
    max_hole_area_um2: float = Field(50000.0, ge=0, description="Holes smaller than this are "
                                     "filled (vessels, fat cells stay tissue).")


class TilingSection(_Section):
    """The grid of tiles at the working resolution."""

    tile_size: int = Field(1024, ge=64, description="Core size of a tile in working-resolution "
                           "pixels (multiple of 16). Results do not depend on it.")
    halo: int = Field(64, ge=16, description="Context added on each side of the core (px, "
                      "multiple of 16); must exceed a nucleus diameter.")

    @field_validator("tile_size", "halo")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"{value} is not a multiple of 16 (StarDist's U-Net needs it)")
        return value


class SegmentationSection(_Section):
    """StarDist nucleus segmentation."""

    brightfield_model: str = Field("models/he_nuclei", description="Model for H&E slides: a "
                                   "folder (relative to the project root or absolute) or a "
                                   "registered pretrained name such as 2D_versatile_he.")
    ihc_model: str = Field("models/bf_nuclei", description="Model for IHC slides (hematoxylin "
                           "counterstain with DAB), folder or pretrained name.")
    fluorescence_model: str = Field("models/fluo_nuclei", description="Model for the nuclear "
                                    "channel of fluorescence slides (folder or 2D_versatile_fluo).")
    ihc_counterstain_reference: float | None = Field(
        0.3, gt=0, description="IHC: the hematoxylin level (95th percentile of the hematoxylin "
        "OD of DAB-poor pixels, in the slide's own counterstain vector) that the IHC model sees "
        "a pale counterstain at: a slide below it is shown to the network with its hematoxylin "
        "scaled up to it (never down; measurements and DAB calls use the slide's own pixels). "
        "Chosen on the IHC model's tuning images re-rendered at counterstain levels 0.06-0.36 "
        "(benchmarks/README.md); null: the network sees the slide as it is.")
    ihc_counterstain_max_gain: float = Field(
        5.0, ge=1, description="IHC: the largest factor on a pale counterstain "
        "(segmentation.ihc_counterstain_reference).")
    prob_thresh: float | None = Field(None, gt=0, lt=1, description="Override of the model's "
                                      "tuned probability threshold (thresholds.json).")
    nms_thresh: float | None = Field(None, gt=0, lt=1, description="Override of the model's "
                                     "tuned NMS overlap threshold.")
    min_area_um2: float = Field(8.0, ge=0, description="Detections smaller than this are "
                                "dropped as debris.")
    backend: Literal["auto", "tensorflow", "openvino"] = Field(
        "auto", description="What runs the network: tensorflow; openvino (on the CPU, the "
        "converted network cached beside the weights by their SHA-256); auto = TensorFlow "
        "with a GPU or without OpenVINO, else OpenVINO unless TensorFlow measured at least "
        "10 % faster on this CPU model (measured once, cached in "
        "$HCCBIO_CACHE/backend-choice.json). "
        "The same nuclei either way (tested); the backend used is recorded in features.json "
        "and run.json. Not part of the config hash (like batch).")
    precision: Literal["float32", "int8"] = Field(
        "float32", description="Arithmetic of the network: float32; or int8, the network "
        "quantised after training (OpenVINO NNCF, calibrated on training tiles) and shipped "
        "in the model folder's int8/ (python models/quantize.py makes it), run by OpenVINO; "
        "its accuracy beside float32's is in benchmarks/README.md. Part of the config hash "
        "when int8 (the nuclei can differ slightly).")

    @model_validator(mode="after")
    def _int8_needs_openvino(self) -> SegmentationSection:
        if self.precision == "int8" and self.backend == "tensorflow":
            raise ValueError("precision int8 runs on OpenVINO: set backend to auto or openvino")
        return self

    def model_for(self, modality: str) -> str:
        """The model that segments slides of ``modality`` (``he``, ``ihc``, ``mif``; or
        ``brightfield`` / ``fluorescence``, which mean H&E and the nuclear channel)."""
        if modality in ("mif", "fluorescence"):
            return self.fluorescence_model
        return self.ihc_model if modality == "ihc" else self.brightfield_model


class WholeCellSection(_Section):
    """Whole-cell outlines of fluorescence slides, grown from the nuclei
    (pathology/segmentation/wholecell.py).

    The cytoplasm / membrane signal is the sum of ``channels``, each divided by its slide-wide
    99th percentile, smoothed by ``smooth_um``; pixels above its per-slide Otsu threshold are
    cell. ``expand``: each nucleus grows (scikit-image ``expand_labels``, nearest nucleus wins)
    up to ``max_distance_um`` into that signal, keeping the part connected to it; ``watershed``:
    the same area split between nuclei by a watershed on the smoothed signal (borders on
    membrane ridges); ``membrane``: a seeded watershed flooding the signal upwards from the
    nuclei (neighbours meet on membrane ridges) within ``max_distance_um``, without the
    threshold; ``ring``: the nucleus plus a fixed ring of ``cells.ring_width_um``, no signal
    used. A multiplex panel's ``whole_cell:`` mapping overrides these keys for its slides.
    """

    method: Literal["expand", "watershed", "membrane", "ring"] = Field(
        "expand", description="expand | watershed (both limited by the cytoplasm / membrane "
        "signal and max_distance_um) | membrane (seeded watershed on the membrane composite, "
        "borders on its ridges, within max_distance_um, no signal threshold: IMC / MIBI "
        "panels) | ring (nucleus + cells.ring_width_um, no signal). A multiplex panel may "
        "override these keys for its slides (its whole_cell: mapping).")
    max_distance_um: float = Field(4.0, gt=0, description="Largest growth from the nucleus "
                                   "border (um).")
    channels: tuple[str, ...] = Field((), description="Channels whose sum is the cytoplasm / "
                                      "membrane signal; empty = the channels of the panel's "
                                      "markers read outside the nucleus (compartment ring, max "
                                      "or cell), else every channel but the nuclear one.")
    smooth_um: float = Field(1.0, ge=0, description="Gaussian sigma (um) of the signal.")


class CellsSection(_Section):
    """Per-cell measurements."""

    stain_matrix: Literal["skimage_hed", "auto"] = Field(
        "skimage_hed", description="Colour deconvolution vectors: skimage_hed (Ruifrok & "
        "Johnston, as in scikit-image's rgb2hed) or auto (IHC: hematoxylin and DAB estimated "
        "per slide by Macenko's method, recorded in features.json; H&E keeps skimage_hed).")
    background_intensity: float = Field(255.0, gt=0, description="Brightfield: transmitted "
                                        "light I0 for optical density -log10(I/I0).")
    ring_width_um: float = Field(2.0, ge=0, description="Width (um) of the cytoplasm / membrane "
                                 "ring grown around each nucleus (expand_labels) for the ring_* "
                                 "intensity columns; 0 = no ring columns.")
    whole_cell: WholeCellSection = Field(default_factory=lambda: WholeCellSection(),
                                         description="Fluorescence: whole-cell outlines grown "
                                         "from the nuclei (cell_* columns, the panels' 'cell' "
                                         "compartment).")


SLURM_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2})$")
SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SlurmSection(_Section):
    """A SLURM cluster started through dask-jobqueue (``--scheduler slurm``, docs/hpc.md)."""

    partition: str | None = Field(None, description="Partition the worker jobs are submitted "
                                  "to (sbatch -p; a comma-separated list is allowed); empty = "
                                  "the cluster's default partition.")
    account: str | None = Field(None, description="Account charged for the jobs (sbatch -A); "
                                "empty = your default account.")
    cores: int = Field(4, ge=1, description="Cores per job: one single-threaded Dask worker "
                       "per core.")
    memory: str = Field("16GB", description="Memory per job (e.g. 16GB), shared equally by its "
                        "workers; a worker that passes its share is restarted and its task "
                        "retried (batch.retries).")
    walltime: str = Field("04:00:00", description="Wall time per job: minutes, HH:MM:SS or "
                          "D-HH:MM:SS. A job that reaches it is ended by SLURM: its slides' "
                          "tasks are retried (batch.retries) and a new job replaces it.")
    jobs: int = Field(4, ge=1, description="Worker jobs kept running while slides remain.")
    resubmit: int = Field(10, ge=0, description="Jobs ended by SLURM while slides remain (wall "
                          "time, node failure, preemption, out of memory) are replaced, up to "
                          "this many times per run; jobs cancelled with scancel never are.")
    job_name: str = Field("hccbio", description="Job name (squeue, scancel --name) and the "
                          "start of its log files' names.")
    job_extra_directives: tuple[str, ...] = Field((), description="Extra sbatch options, one "
                                                  "per #SBATCH line, e.g. '--gres=gpu:1', "
                                                  "'--qos=long', '--constraint=avx2'.")
    prologue: tuple[str, ...] = Field((), description="Shell lines each job runs before its "
                                      "workers start, e.g. 'module load python/3.11', "
                                      "'source /path/to/venv/bin/activate'.")
    python: str | None = Field(None, description="Python on the compute nodes, with hccbio "
                               "installed; empty = the submitting Python, which the nodes "
                               "must see at the same path.")
    log_dir: str | None = Field(None, description="Folder of the jobs' logs "
                                "(<job_name>-<job id>.out / .err); empty = OUT/logs/slurm. "
                                "Must be on a filesystem the compute nodes share.")
    interface: str | None = Field(None, description="Network interface of the Dask scheduler "
                                  "and workers (e.g. ib0, eth0) when the host name does not "
                                  "resolve to an address the nodes reach.")
    local_directory: str | None = Field(None, description="Scratch folder of each worker on "
                                        "its node (e.g. $TMPDIR); empty = Dask's default.")

    @field_validator("walltime")
    @classmethod
    def _slurm_time(cls, value: str) -> str:
        value = value.strip()
        if not SLURM_TIME.match(value):
            raise ValueError(f"{value!r} is not a SLURM time: write minutes (90), HH:MM:SS "
                             "(04:00:00) or D-HH:MM:SS (1-00:00:00)")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        from dask.utils import parse_bytes

        try:
            size = parse_bytes(value)
        except (ValueError, TypeError):
            size = 0
        if size <= 0:
            raise ValueError(f"{value!r} is not an amount of memory: write e.g. 16GB or "
                             "4000MB") from None
        return value

    @field_validator("job_name")
    @classmethod
    def _job_name(cls, value: str) -> str:
        if not SLURM_NAME.match(value):
            raise ValueError(f"{value!r}: a job name is letters, digits and '_.-' "
                             "(it names the log files)")
        return value

    @field_validator("partition", "account")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [name.strip() for name in value.split(",")]  # partitions: a list is allowed
        if not all(SLURM_NAME.match(name) for name in names):
            raise ValueError(f"{value!r} is not a SLURM name (letters, digits, '_.-'; "
                             "partitions may be a comma-separated list)")
        return ",".join(names)

    @field_validator("job_extra_directives")
    @classmethod
    def _directives(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for line in value:
            if line.strip().upper().startswith("#SBATCH"):
                raise ValueError(f"{line!r}: write the option alone, without '#SBATCH' (it "
                                 "is added), e.g. '--gres=gpu:1'")
            if not line.strip().startswith("-"):
                raise ValueError(f"{line!r} is not an sbatch option: each starts with '-', "
                                 "e.g. '--qos=long'")
        return tuple(line.strip() for line in value)


class BatchSection(_Section):
    """How a batch of slides is spread over workers."""

    scheduler: str = Field("local", description="sync (in this process), local[:N] (a Dask "
                           "LocalCluster with N workers sharing the cores; N = cores / 2 if "
                           "omitted, cores with a GPU), tcp://HOST:PORT (an existing Dask "
                           "scheduler) or slurm.")
    tiles_per_task: int = Field(16, ge=1, description="Tiles per Dask task: a large slide is "
                                "split into tasks so that several workers share it.")
    retries: int = Field(1, ge=0, description="Retries of a failed task (a worker that died "
                         "or ran out of memory) before the slide is marked failed.")
    tiles_per_forward: int | None = Field(None, ge=1, description="Tiles of equal size "
                                          "stacked into one network forward pass; empty = 1 "
                                          "on a CPU and, when TensorFlow sees a GPU, about "
                                          "10 Mpx of read boxes (8 tiles of 1024 px, 2 of "
                                          "2048 px); halved when GPU memory runs out.")
    read_ahead: bool = Field(True, description="Read the next tiles and run the network on "
                             "them in a second thread while this tile's nuclei are measured "
                             "and written (one batch ahead; memory: one more batch).")
    slurm: SlurmSection = SlurmSection()


class PhenotypesSection(_Section):
    """Marker positivity and phenotypes (panels in ``configs/panels``)."""

    panels_dir: str = Field("configs/panels", description="Folder of panel YAML files "
                            "(relative to the project root or absolute): ihc.yaml, he.yaml "
                            "and one file per multiplex panel named by the manifest's stain.")
    lymphocyte_model: str = Field("models/he_cell_classes", description="H&E nucleus "
                                  "classifier folder behind the lymphocyte call: a patch "
                                  "network (model.json kind patch_cnn + model.keras, run on "
                                  "each tile; p_<class> columns) or the logistic model on "
                                  "shape and stain columns (models/lymphocyte_classifier).")
    pigment_exclusion: bool = Field(True, description="IHC: DAB-like pigment (bile, "
                                    "hemosiderin, lipofuscin) is never counted positive.")
    pigment_min_hue_ratio: float = Field(-0.08, description="Pigment rule: a DAB-positive "
                                         "cell whose hematoxylin/DAB OD ratio in the stained "
                                         "compartment is below this is yellow-brown pigment.")
    pigment_min_eosin_ratio: float = Field(-0.6, description="Pigment rule: eosin-residual/DAB "
                                           "OD ratio below this is green-brown pigment (bile).")
    pigment_nuclear_ring_ratio: float = Field(1.5, gt=0, description="Pigment rule for "
                                              "nuclear markers: ring DAB above this times the "
                                              "nuclear DAB is cytoplasmic pigment.")


class RegionsSection(_Section):
    """Tumour, stroma and invasive margin."""

    annotations_dir: str | None = Field(None, description="Folder of QuPath GeoJSON files "
                                        "named <sample_id>.geojson (classes Tumor/Tumour, "
                                        "Stroma); when a file exists it wins over automatic.")
    annotation_units: Literal["um", "px"] = Field("px", description="Units of the GeoJSON "
                                                  "coordinates: level-0 pixels (QuPath) or um.")
    margin_width_um: float = Field(500.0, gt=0, description="Width of the invasive margin "
                                   "band, centred on the tumour border (um).")
    tumour_smooth_um: float = Field(50.0, ge=0, description="Gaussian sigma (um) of the "
                                    "tumour-cell density map.")
    tumour_min_fraction: float = Field(0.5, gt=0, lt=1, description="Automatic tumour: "
                                       "pixels where tumour cells make at least this fraction "
                                       "of all (smoothed) cells.")
    tumour_min_area_um2: float = Field(40000.0, ge=0, description="Automatic tumour pieces "
                                       "smaller than this are stroma.")
    tumour_proxy: bool = Field(False, description="Without annotations, a registered serial "
                               "section or a tumour marker, find the tumour from a proxy "
                               "phenotype (panel 'proxy: true', e.g. nuclei >= 40 um^2, which "
                               "normal hepatocytes also reach); named 'proxy:nuclear_size' in "
                               "features.json, the dictionary and the report. Off: such slides "
                               "report tissue-level features only, and say why.")


class SpatialSection(_Section):
    """Spatial immune features."""

    tumour_phenotype: str = Field("tumour", description="Phenotype that marks tumour cells.")
    cd8_phenotype: str = Field("cd8_t", description="Phenotype used for proximity and "
                               "immune-phenotype rules (CD8+ T cells).")
    radii_um: tuple[float, ...] = Field((20.0, 50.0, 100.0), description="Radii (um) of "
                                        "Ripley's K/L and cross-L.")
    contact_radii_um: tuple[float, ...] = Field((20.0, 50.0), description="Fraction of tumour "
                                                "cells with a CD8+ cell within these radii.")
    quadrat_um: float = Field(100.0, gt=0, description="Square quadrat side (um) for "
                              "Morisita-Horn and Getis-Ord Gi*.")
    hotspot_radius_um: float = Field(200.0, gt=0, description="Gi* neighbourhood: quadrats "
                                     "whose centres lie within this distance (um).")
    hotspot_z: float = Field(1.96, gt=0, description="Gi* z-score above which a quadrat is a "
                             "hotspot.")
    max_focal_points: int = Field(100_000, ge=100, description="Ripley K/L: at most this many "
                                  "focal cells (a seeded random sample) count their neighbours "
                                  "among all cells; unbiased, and bounds time on large slides.")
    min_cells: int = Field(10, ge=2, description="Fewer cells of a phenotype give NaN spatial "
                           "statistics (reported, not guessed).")
    inflamed_min_tumour_density: float = Field(100.0, ge=0, description="Inflamed: CD8 "
                                               "density in tumour >= this (cells/mm^2).")
    excluded_min_stroma_density: float = Field(100.0, ge=0, description="Excluded (if not "
                                               "inflamed): CD8 density in stroma or margin "
                                               ">= this (cells/mm^2); else desert.")


class RegistrationSection(_Section):
    """Serial sections: each slide of a block registered onto its reference (docs/registration.md).

    Registration runs on low-resolution, stain-independent views (optical density, or the
    nuclear channel); a fit that fails a check below is flagged and never used.
    """

    reference_modality: Literal["he", "ihc", "mif"] = Field("he", description="Modality of "
                                                            "the reference slide of a block "
                                                            "(manifest block_id) and timepoint.")
    max_size_px: int = Field(1024, ge=128, le=8192, description="Longest side (px) of the "
                             "images registered; sets the resolution.")
    finest_shrink: int = Field(2, ge=1, le=8, description="The affine and B-spline stages "
                               "stop at this shrink factor of the registered images (1: full "
                               "max_size_px; 2 is 4x faster, within a pixel).")
    search_size_px: int = Field(256, ge=32, description="Longest side (px) of the coarse "
                                "images on which orientations are searched.")
    allow_flip: bool = Field(True, description="Also try the section flipped on the glass.")
    rigid_angle_step_deg: float = Field(10.0, gt=0, le=90, description="Angle step of the "
                                        "orientation search (every angle, both flips).")
    rigid_candidates: int = Field(3, ge=1, le=20, description="Best orientations refined by "
                                  "the rigid stage.")
    nonrigid: bool = Field(True, description="Try a B-spline refinement after the affine "
                           "stage (kept only if it improves the fit without folding).")
    nonrigid_grid: int = Field(6, ge=1, le=64, description="B-spline mesh cells along the "
                               "longer side.")
    nonrigid_min_gain: float = Field(0.002, ge=0, description="Smallest gain in Dice + "
                                     "correlation for which the B-spline is kept.")
    min_jacobian: float = Field(0.2, gt=0, lt=1, description="The B-spline is rejected where "
                                "its Jacobian determinant falls to this (a fold).")
    histogram_bins: int = Field(32, ge=8, le=256, description="Mattes mutual information bins.")
    sampling_fraction: float = Field(0.25, gt=0, le=1, description="Fraction of pixels sampled "
                                     "by the metric (seeded: results repeat).")
    iterations: int = Field(200, ge=10, description="Optimiser iterations per resolution "
                            "level.")
    min_dice: float = Field(0.8, ge=0, le=1, description="Flag when the tissue-mask Dice "
                            "after registration is below this.")
    min_nmi: float = Field(0.04, ge=0, le=1, description="Flag when the normalised mutual "
                           "information of the stain-independent signals after registration "
                           "is below this (different tissue scores about 0.01, serial "
                           "sections 0.07 and more).")
    scale_range: tuple[float, float] = Field((0.8, 1.25), description="Flag an affine scale "
                                             "outside this range (um units only; sections "
                                             "barely shrink or stretch).")
    max_anisotropy: float = Field(1.25, ge=1, description="Flag when one axis is stretched "
                                  "more than this relative to the other (a degenerate fit).")


class QcSection(_Section):
    """Slide QC: artefacts, stain and nuclei checks, overlays (``hccbio slides qc``).

    Fractions are of the slide's tissue area. Every flag in ``qc/qc.json`` names the metric,
    its value and the threshold below that made it fire (docs/qc_review.md).
    """

    overview_mpp: float = Field(4.0, gt=0, description="Resolution (um/px) of the overview on "
                                "which pen, dark and bright areas are found and overlays drawn.")
    focus_mpp: float = Field(0.5, gt=0, description="Resolution (um/px) at which focus is "
                             "measured (variance of the Laplacian of intensity in [0, 1]).")
    focus_tile_um: float = Field(128.0, gt=0, description="Side (um) of the square focus tiles.")
    focus_min_tissue_fraction: float = Field(0.5, gt=0, le=1, description="Tiles with less "
                                             "tissue than this are not scored for focus.")
    focus_max_tiles: int = Field(2000, ge=1, description="At most this many tiles are read for "
                                 "focus; a larger slide is scored on a regular sub-lattice, "
                                 "each scored tile standing for its block.")
    focus_min_laplacian_var: float = Field(0.0015, gt=0, description="A tile is out of focus "
                                           "when the variance of the Laplacian over its "
                                           "tissue pixels is below this (calibrated: sharp "
                                           "H&E >= 0.005, Gaussian blur sigma 1 um <= 0.001).")
    focus_max_fraction: float = Field(0.1, ge=0, le=1, description="Flag 'focus' when the "
                                      "out-of-focus fraction of scored tissue exceeds this.")
    pen_hue_range: tuple[float, float] = Field((0.10, 0.65), description="Brightfield: HSV "
                                               "hues of marker ink (yellow-green-cyan-blue); "
                                               "H&E tissue lies at 0.70-0.95.")
    pen_min_saturation: float = Field(0.3, ge=0, le=1, description="Ink is at least this "
                                      "saturated (HSV).")
    pen_min_area_um2: float = Field(5000.0, ge=0, description="Ink pieces smaller than this "
                                    "are ignored.")
    pen_max_fraction: float = Field(0.0, ge=0, le=1, description="Flag 'pen' when the ink "
                                    "fraction of tissue exceeds this (0: any ink).")
    dark_min_od: float = Field(0.7, gt=0, description="Brightfield: mean RGB optical density "
                               "above which an area is a fold or very dark (H&E tissue is "
                               "0.1-0.6 at the overview resolution; a fold doubles it).")
    dark_min_area_um2: float = Field(5000.0, ge=0, description="Dark pieces smaller than this "
                                     "are ignored.")
    dark_max_fraction: float = Field(0.02, ge=0, le=1, description="Flag 'dark' when folds "
                                     "and very dark areas exceed this fraction of tissue.")
    bright_max_od: float = Field(0.04, gt=0, description="Brightfield: inside the tissue mask, "
                                 "mean optical density below this is glass (bubble, tear).")
    bright_edge_um: float = Field(40.0, ge=0, description="Bright areas are sought this far "
                                  "(um) inside the tissue border, so the glass that the tissue "
                                  "mask's closing takes in is not counted.")
    bright_min_area_um2: float = Field(5000.0, ge=0, description="Bright pieces smaller than "
                                       "this (vessels, fat vacuoles) are ignored.")
    bright_max_fraction: float = Field(0.05, ge=0, le=1, description="Flag 'bright' when "
                                       "bright areas exceed this fraction of tissue.")
    hematoxylin_median_od_range: tuple[float, float] = Field(
        (0.05, 0.8), description="Brightfield: flag 'stain' when the median hematoxylin OD "
        "of clean tissue (overview pixels) is outside this range (under- or over-stained).")
    saturated_max_fraction: float = Field(0.01, ge=0, le=1, description="Fluorescence: flag "
                                          "'stain' when more than this fraction of tissue "
                                          "pixels is saturated in a channel.")
    nuclei_density_range: tuple[float, float] = Field(
        (500.0, 20000.0), description="Flag 'nuclei_density' when nuclei per mm^2 of clean "
        "tissue fall outside this range.")
    nuclear_area_range_um2: tuple[float, float] = Field(
        (10.0, 150.0), description="Flag 'nuclear_area' when the median nuclear area (um^2) "
        "falls outside this range (wrong pixel size or failed segmentation).")
    counterstain_min_contrast: float = Field(
        0.017, ge=0, description="IHC: flag 'counterstain' (too pale for reliable negative "
        "counts) when the median hematoxylin OD of DAB-negative nuclei exceeds that of their "
        "ring by less than this, or when nuclei were found but none DAB-negative; the largest "
        "contrast at which the IHC pipeline found fewer than 85 % of a tile's DAB-negative "
        "nuclei (benchmarks/README.md, python -m benchmarks.ihc_counterstain).")
    lineage_cd3_markers: tuple[str, ...] = Field(("CD3",), description="Multiplex: panel "
                                                 "marker names of the T-cell lineage (CD3) "
                                                 "for the lineage check (case-insensitive).")
    lineage_cd8_markers: tuple[str, ...] = Field(("CD8", "CD8a"), description="Multiplex: "
                                                 "marker names of CD8.")
    lineage_cd45_markers: tuple[str, ...] = Field(("CD45",), description="Multiplex: marker "
                                                  "names of CD45 (leukocytes).")
    lineage_keratin_markers: tuple[str, ...] = Field(
        ("PanKRT", "panCK", "PanCK", "CK", "Keratin", "KRT"), description="Multiplex: marker "
        "names of (pan)keratin (epithelial / tumour cells).")
    lineage_min_cd3_of_cd8: float = Field(
        0.8, ge=0, le=1, description="Multiplex: flag 'lineage' when fewer than this share of "
        "the CD8+ cells are CD3+ (CD8+ cells outside CD3+ are marker-call errors: spill-over, "
        "a threshold too low on a sparse channel).")
    lineage_min_cd45neg_of_keratin: float = Field(
        0.9, ge=0, le=1, description="Multiplex: flag 'lineage' when fewer than this share "
        "of the keratin+ cells are CD45- (epithelium and leukocytes are exclusive).")
    lineage_min_cells: int = Field(5, ge=1, description="Multiplex: a lineage share is "
                                   "checked only when at least this many cells are in its "
                                   "denominator (CD8+, keratin+).")
    overlay_max_points: int = Field(200_000, ge=1000, description="Detections overlay: at most "
                                    "this many cells are drawn (a seeded random sample).")
    density_bin_um: float = Field(100.0, gt=0, description="Bin side (um) of the density "
                                  "heatmaps.")
    crops: int = Field(3, ge=0, le=12, description="Number of full-resolution crops, spread "
                       "over the tissue by farthest-point sampling.")
    crop_um: float = Field(200.0, gt=0, description="Side (um) of each crop (at most 1024 "
                           "level-0 pixels are read).")
    geojson_decimals: int = Field(2, ge=0, le=6, description="Decimals of the level-0 pixel "
                                  "coordinates in the GeoJSON exports.")


class PathologyConfig(_Section):
    """All settings of the slide pipeline."""

    slide: SlideSection = SlideSection()
    tissue: TissueSection = TissueSection()
    tiling: TilingSection = TilingSection()
    segmentation: SegmentationSection = SegmentationSection()
    cells: CellsSection = CellsSection()
    phenotypes: PhenotypesSection = PhenotypesSection()
    regions: RegionsSection = RegionsSection()
    spatial: SpatialSection = SpatialSection()
    batch: BatchSection = BatchSection()
    qc: QcSection = QcSection()
    registration: RegistrationSection = RegistrationSection()

    DOWNSTREAM: ClassVar[tuple[str, ...]] = ("batch", "phenotypes", "regions", "spatial",
                                             "qc", "registration")

    def digest(self) -> str:
        """SHA-256 of the settings that change results (stable key order).

        Left out: ``batch`` and ``segmentation.backend`` (where and how work runs: results do
        not depend on them beyond floating-point rounding in the network) and the
        steps computed from ``cells.parquet`` afterwards (``phenotypes``, ``regions``,
        ``spatial``, ``qc``), which record their own hash, so changing them never re-segments.
        """
        exclude: dict = dict.fromkeys(self.DOWNSTREAM, True)
        # what runs the network, not what it computes; float32 (the default) is left out too
        # so that hashes of runs made before the precision setting existed stay the same
        exclude["segmentation"] = ({"backend", "precision"}
                                   if self.segmentation.precision == "float32" else {"backend"})
        text = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message names the key."""


def load_config(path: str | Path | None = None) -> PathologyConfig:
    """Load and validate a pathology configuration.

    Parameters
    ----------
    path
        A YAML file; ``None`` gives the defaults.

    Returns
    -------
    PathologyConfig

    Raises
    ------
    ConfigError
        The file is missing, is not YAML, or has an unknown key or invalid value; the message
        names the file and the dotted key.
    """
    if path is None:
        return PathologyConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    data = read_yaml(path, error=ConfigError) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return PathologyConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from error
