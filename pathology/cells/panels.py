"""Stain panels: which channel measures which marker, in which compartment, and how positivity
and phenotypes are decided. One YAML file per panel in ``configs/panels`` (docs/phenotypes.md).

``ihc.yaml`` lists every IHC marker (one marker per slide, DAB); ``he.yaml`` is the H&E panel
(lymphocytes from the shipped classifier); every other file is a multiplex panel named by the
manifest's ``stain`` column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pathology.config import PROJECT_ROOT, WholeCellSection
from pathology.io.metadata import safe_channel_name

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
LONGEST_SUFFIX = "_stroma_density"  # longest per-phenotype feature suffix (pathology.features)


class PanelError(ValueError):
    """A panel file is missing or invalid, or names a marker / channel the slide lacks."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Model):
    """How a marker's positivity threshold is chosen."""

    method: Literal["fixed", "otsu", "gmm"] = Field("fixed", description="fixed value, or a "
                                                    "per-slide Otsu / 2-component Gaussian "
                                                    "mixture threshold on the cells' values.")
    value: float | None = Field(None, description="The threshold for method fixed.")
    log: bool = Field(False, description="Automatic methods work on log1p(value) (counts); "
                      "the same as transform: log1p.")
    transform: Literal["none", "log1p", "asinh"] = Field(
        "none", description="Scale on which automatic thresholds are fitted: none; log1p; "
        "asinh = arcsinh(value / cofactor), the usual transform of ion counts (IMC, MIBI): "
        "linear below the cofactor, logarithmic above.")
    cofactor: float = Field(1.0, gt=0, description="transform asinh: the cofactor, in the "
                            "units of the cells' values (mean counts per pixel).")
    zeros: Literal["include", "exclude"] = Field(
        "include", description="exclude: automatic thresholds are fitted on the cells with a "
        "non-zero value only (zero-inflated count channels, where most cells have no count "
        "and a fit on all cells would only separate zero from non-zero).")
    floor: float | None = Field(None, description="Automatic thresholds are raised to this.")
    ceiling: float | None = Field(None, description="Automatic thresholds are lowered to this.")

    @model_validator(mode="after")
    def _fixed_needs_value(self) -> Threshold:
        if self.method == "fixed" and self.value is None:
            raise ValueError("threshold method 'fixed' needs a value")
        if self.log and self.transform not in ("none", "log1p"):
            raise ValueError(f"log: true and transform: {self.transform} contradict each other "
                             "(log is transform: log1p): keep one")
        return self

    @property
    def scale(self) -> str:
        """The transform in effect (``log: true`` is ``log1p``)."""
        return "log1p" if self.log else self.transform

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Values on the fitting scale (negative values count as 0 for log1p / asinh)."""
        if self.scale == "log1p":
            return np.log1p(np.maximum(values, 0.0))
        if self.scale == "asinh":
            return np.arcsinh(np.maximum(values, 0.0) / self.cofactor)
        return values

    def inverse(self, values: float) -> float:
        """A cut on the fitting scale back on the values' scale."""
        if self.scale == "log1p":
            return float(np.expm1(values))
        if self.scale == "asinh":
            return float(np.sinh(values) * self.cofactor)
        return float(values)


class Background(_Model):
    """Per-channel background subtracted from the cells' values before thresholding."""

    method: Literal["none", "fixed", "percentile"] = "none"
    value: float = Field(0.0, ge=0, description="fixed: the value subtracted; percentile: the "
                         "percentile (0-100) of the cells' values subtracted.")


class Marker(_Model):
    """One marker of a panel."""

    name: str = Field(..., description="Marker name used in phenotype rules (e.g. CD8).")
    channel: str = Field("dab", description="Fluorescence channel name as stored in the slide "
                         "(e.g. 'CD8 (Opal 520)'), or 'dab' for IHC.")
    compartment: Literal["nucleus", "ring", "max", "cell"] = Field(
        "nucleus", description="nucleus; ring (cytoplasm / membrane, width cells.ring_width_um);"
        " max = the larger of the two; cell = the whole cell grown from the nucleus "
        "(fluorescence, cells.whole_cell) for membrane and cytoplasm markers.")
    threshold: Threshold = Threshold(method="otsu")
    background: Background = Background()
    bins: tuple[float, float] | None = Field(None, description="IHC: DAB OD lower bounds of 2+ "
                                             "and 3+ (1+ starts at the positivity threshold).")
    source: Literal["intensity", "lymphocyte_classifier"] = Field(
        "intensity", description="H&E: 'lymphocyte_classifier' makes the marker the shipped "
        "classifier's call.")
    short: str | None = Field(None, description="Column-name fragment (default: the name, "
                              "lowercased).")
    color: str | None = Field(None, description="Fluorescence: display colour of the channel "
                              "in QC composites ('#rrggbb'); default a colour-blind-safe cycle.")

    @model_validator(mode="after")
    def _valid_color(self) -> Marker:
        if self.color is not None and not re.fullmatch(r"#[0-9a-fA-F]{6}", self.color):
            raise ValueError(f"marker {self.name!r}: color {self.color!r} must be '#rrggbb'")
        return self

    @property
    def key(self) -> str:
        """Lowercase ASCII fragment for column names."""
        return self.short or safe_channel_name(self.name)


class Phenotype(_Model):
    """A cell type defined by marker states and optional morphology limits."""

    name: str = Field(..., description="Lowercase column fragment, e.g. cd8_t.")
    label: str = Field("", description="Long label for the data dictionary.")
    markers: dict[str, bool] = Field(default_factory=dict, description="Marker -> required "
                                     "state (true = positive, false = negative).")
    min: dict[str, float] = Field(default_factory=dict, description="cells.parquet column -> "
                                  "lower bound (e.g. area_um2: 40).")
    max: dict[str, float] = Field(default_factory=dict, description="column -> upper bound.")
    immune: bool = Field(False, description="An immune phenotype (spatial features vs tumour).")
    stains: tuple[str, ...] = Field((), description="IHC: only for slides of these markers.")
    proxy: bool = Field(False, description="Defined by morphology only, standing in for a "
                        "marker (e.g. tumour cells by nuclear size): as the tumour phenotype "
                        "it finds regions only with regions.tumour_proxy, and is named a "
                        "proxy wherever it is used.")

    @model_validator(mode="after")
    def _valid_name(self) -> Phenotype:
        if not NAME_PATTERN.match(self.name) or len(self.name) > 12:
            raise ValueError(f"phenotype name {self.name!r} must be lowercase [a-z0-9_], "
                             "start with a letter and have at most 12 characters")
        return self


class Panel(_Model):
    """A stain panel."""

    name: str
    modality: Literal["he", "ihc", "mif"]
    prefix: str = Field(..., description="Feature-name prefix, e.g. mif_io (at most 9 chars).")
    markers: tuple[Marker, ...]
    phenotypes: tuple[Phenotype, ...] = ()
    channels: tuple[str, ...] = Field((), description="Multiplex: the image's channel names in "
                                      "file order, for stacks that carry none (no OME / QPTIFF "
                                      "/ ImageJ names and no <file>.channels.txt sidecar).")
    nuclei_mpp: float | None = Field(None, gt=0, description="Multiplex: pixel size (um/px) "
                                     "at which the fluorescence nucleus model sees the nuclear "
                                     "channel, read from the slide at that size and the nuclei "
                                     "mapped back to the working resolution; finer than "
                                     "slide.working_mpp for instruments with small nuclei in "
                                     "pixels (IMC, MIBI: 0.33 shows their 5-10 um nuclei at "
                                     "the model's training size of about 20 px). Empty = the "
                                     "working resolution.")
    whole_cell: dict[str, Any] = Field(default_factory=dict, description="Multiplex: keys of "
                                       "cells.whole_cell (method, max_distance_um, smooth_um, "
                                       "channels) that apply to this panel's slides.")

    @model_validator(mode="after")
    def _consistent(self) -> Panel:
        if not NAME_PATTERN.match(self.prefix) or len(self.prefix) > 9:
            raise ValueError(f"prefix {self.prefix!r} must be lowercase [a-z0-9_], at most 9 "
                             "characters")
        longest = max((len(p.name) for p in self.phenotypes), default=0)
        if len(self.prefix) + 1 + longest + len(LONGEST_SUFFIX) > 32:
            raise ValueError(f"prefix {self.prefix!r} + phenotype names up to {longest} "
                             f"characters + {LONGEST_SUFFIX!r} exceed the 32-character column "
                             "limit: shorten the prefix or the phenotype names")
        unknown_keys = set(self.whole_cell) - set(WholeCellSection.model_fields)
        if unknown_keys:
            raise ValueError(f"whole_cell: unknown key(s) {', '.join(sorted(unknown_keys))} "
                             f"(keys of cells.whole_cell: "
                             f"{', '.join(WholeCellSection.model_fields)})")
        WholeCellSection.model_validate(self.whole_cell)
        names = [m.name for m in self.markers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate marker names in {names}")
        for phenotype in self.phenotypes:
            unknown = set(phenotype.markers) - set(names)
            if unknown:
                raise ValueError(f"phenotype {phenotype.name!r} uses marker(s) "
                                 f"{', '.join(sorted(unknown))} that the panel does not define")
        return self

    def marker(self, name: str) -> Marker:
        """The marker called ``name`` (case-insensitive)."""
        for marker in self.markers:
            if marker.name.lower() == name.lower():
                return marker
        raise PanelError(f"panel {self.name!r} has no marker {name!r} (markers: "
                         f"{', '.join(m.name for m in self.markers)})")

    def phenotype(self, name: str) -> Phenotype | None:
        """The phenotype called ``name``, if defined."""
        return next((p for p in self.phenotypes if p.name == name), None)


def panels_dir(spec: str | Path) -> Path:
    """Resolve the panels folder (relative paths are taken from the project root)."""
    path = Path(spec)
    return path if path.is_absolute() else PROJECT_ROOT / path


def load_panel(path: str | Path) -> Panel:
    """Read and validate a panel YAML file.

    Raises
    ------
    PanelError
        Missing file, invalid YAML or invalid content; the message names the file and key.
    """
    path = Path(path)
    if not path.is_file():
        raise PanelError(f"{path}: panel file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return Panel.model_validate(data)
    except yaml.YAMLError as error:
        raise PanelError(f"{path}: not valid YAML ({error})") from error
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in error.errors())
        raise PanelError(f"{path}: {problems}") from error


def resolve_panel(modality: str, stain: str, *, directory: str | Path) -> Panel:
    """The panel that applies to one slide.

    Parameters
    ----------
    modality
        ``he``, ``ihc`` or ``mif`` (manifest).
    stain
        IHC: the marker (``CD8``, ``PD-L1``...); mIF: the panel file name (without ``.yaml``).
    directory
        Folder of panel files.

    Returns
    -------
    Panel
        For IHC, a one-marker panel: the slide's marker and the phenotypes that use only it
        (or only morphology), its prefix ``ihc_<marker>``.

    Raises
    ------
    PanelError
        No panel for this stain, or the IHC marker is not in ``ihc.yaml``.
    """
    folder = panels_dir(directory)
    if modality == "he":
        return load_panel(folder / "he.yaml")
    if modality == "ihc":
        panel = load_panel(folder / "ihc.yaml")
        marker = panel.marker(stain) if stain else None
        if marker is None:
            raise PanelError(f"{folder / 'ihc.yaml'}: an IHC slide needs its marker in the "
                             "manifest's stain column")
        seen: set[str] = set()
        phenotypes = []
        for phenotype in panel.phenotypes:
            if set(phenotype.markers) - {marker.name} or phenotype.name in seen:
                continue
            if phenotype.stains and marker.name not in phenotype.stains:
                continue
            seen.add(phenotype.name)
            phenotypes.append(phenotype)
        return Panel(name=f"ihc_{marker.key}", modality="ihc", prefix=f"ihc_{marker.key}"[:9],
                     markers=(marker,), phenotypes=tuple(phenotypes))
    if modality == "mif":
        name = safe_channel_name(stain) if stain else ""
        path = folder / f"{stain}.yaml"
        if not path.is_file():
            path = folder / f"{name}.yaml"
        if not stain or not path.is_file():
            available = sorted(p.stem for p in folder.glob("*.yaml")
                               if p.stem not in ("ihc", "he"))
            raise PanelError(f"no multiplex panel {stain!r} in {folder} (available: "
                             f"{', '.join(available)}); the manifest's stain names the panel")
        return load_panel(path)
    raise PanelError(f"modality {modality!r} has no stain panel (he, ihc, mif)")
