"""Configuration of the slide pipeline: one pydantic section per step, every field documented.

The YAML file ``configs/pathology.yaml`` mirrors these models one-to-one. Unknown keys are
errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlideSection(_Section):
    """How slides are opened and at which resolution they are analysed."""

    working_mpp: float = Field(0.5, gt=0, description="Analysis resolution in um/px; nuclei "
                               "models are trained at this resolution.")
    mpp_range: tuple[float, float] = Field((0.1, 2.0), description="Plausible level-0 pixel "
                                           "sizes (um/px); a value outside is an error.")
    mpp_tolerance: float = Field(0.02, ge=0, lt=0.5, description="Largest relative disagreement "
                                 "allowed between pixel-size sources (readers, manifest).")
    backend: Literal["auto", "openslide", "tiffslide"] = Field(
        "auto", description="Slide reader; auto = OpenSlide, tiffslide for what it cannot open.")
    nuclear_channels: tuple[str, ...] = Field(("DAPI", "dsDNA", "H3", "Hoechst", "Histone"),
                                              description="Fluorescence: channel names tried in "
                                              "order (case-insensitive prefix) for nuclei.")


class TissueSection(_Section):
    """Tissue detection on a low-resolution image of the whole slide."""

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

    brightfield_model: str = Field("models/he_nuclei", description="Model for H&E / IHC: a "
                                   "folder (relative to the project root or absolute) or a "
                                   "registered pretrained name such as 2D_versatile_he.")
    fluorescence_model: str = Field("models/fluo_nuclei", description="Model for the nuclear "
                                    "channel of fluorescence slides (folder or 2D_versatile_fluo).")
    prob_thresh: float | None = Field(None, gt=0, lt=1, description="Override of the model's "
                                      "tuned probability threshold (thresholds.json).")
    nms_thresh: float | None = Field(None, gt=0, lt=1, description="Override of the model's "
                                     "tuned NMS overlap threshold.")
    min_area_um2: float = Field(8.0, ge=0, description="Detections smaller than this are "
                                "dropped as debris.")


class CellsSection(_Section):
    """Per-cell measurements."""

    stain_matrix: Literal["skimage_hed"] = Field("skimage_hed", description="Colour "
                                                 "deconvolution vectors (Ruifrok & Johnston, as "
                                                 "in scikit-image's rgb2hed).")
    background_intensity: float = Field(255.0, gt=0, description="Brightfield: transmitted "
                                        "light I0 for optical density -log10(I/I0).")


class SlurmSection(_Section):
    """A SLURM cluster started through dask-jobqueue (``--scheduler slurm``)."""

    queue: str | None = Field(None, description="Partition to submit to.")
    account: str | None = Field(None, description="Account to charge.")
    cores: int = Field(4, ge=1, description="Cores per job; one single-threaded worker each.")
    memory: str = Field("16GB", description="Memory per job (dask-jobqueue syntax).")
    walltime: str = Field("04:00:00", description="Wall time per job.")
    jobs: int = Field(4, ge=1, description="Number of jobs to start.")
    job_extra_directives: tuple[str, ...] = Field((), description="Extra #SBATCH lines, e.g. "
                                                  "'--gres=gpu:1'.")


class BatchSection(_Section):
    """How a batch of slides is spread over workers."""

    scheduler: str = Field("local", description="sync (in this process), local[:N] (a Dask "
                           "LocalCluster with N single-threaded workers; N = cores if omitted), "
                           "tcp://HOST:PORT (an existing Dask scheduler) or slurm.")
    tiles_per_task: int = Field(16, ge=1, description="Tiles per Dask task: a large slide is "
                                "split into tasks so that several workers share it.")
    retries: int = Field(1, ge=0, description="Retries of a failed task (a worker that died "
                         "or ran out of memory) before the slide is marked failed.")
    slurm: SlurmSection = SlurmSection()


class PathologyConfig(_Section):
    """All settings of the slide pipeline."""

    slide: SlideSection = SlideSection()
    tissue: TissueSection = TissueSection()
    tiling: TilingSection = TilingSection()
    segmentation: SegmentationSection = SegmentationSection()
    cells: CellsSection = CellsSection()
    batch: BatchSection = BatchSection()

    def digest(self) -> str:
        """SHA-256 of the settings that change results (stable key order).

        The ``batch`` section (where and how work runs) is left out: results do not depend on it.
        """
        text = json.dumps(self.model_dump(mode="json", exclude={"batch"}), sort_keys=True)
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
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return PathologyConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from error
