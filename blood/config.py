"""Configuration of the blood arm: one pydantic section per assay and step.

The YAML form is ``configs/blood.yaml``; relative paths in it are resolved against the YAML
file's own folder, so a config travels with its gates files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from blood.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "blood.yaml"
FEATURE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_feature_name(name: str) -> str:
    if not FEATURE_NAME.match(name):
        raise ValueError(f"feature name {name!r} must be lowercase [a-z0-9_], start with a "
                         "letter and have at most 32 characters")
    return name


# ---------------------------------------------------------------- flow cytometry
class BeadsConfig(_Section):
    """Counting beads for absolute counts (cells per microlitre)."""

    gate: str = Field(description="Population id of the bead gate in the gates file.")
    beads_per_test: float = Field(gt=0, description="Beads per tube (bead lot certificate).")
    sample_volume_ul: float = Field(gt=0, description="Blood volume stained per tube (uL).")


class FlowQcConfig(_Section):
    """Acquisition QC thresholds (flags only)."""

    min_events: int = Field(5000, ge=0, description="Flag files with fewer events.")
    time_bins: int = Field(20, ge=3, description="Equal-duration bins for the event rate.")
    max_rate_cv: float = Field(0.3, gt=0, description="Flag an event-rate CV above this.")
    max_rate_drift: float = Field(0.3, gt=0, description="Flag a relative change of event "
                                  "rate (last third vs first third) beyond +/- this.")
    max_margin_fraction: float = Field(0.05, ge=0, le=1, description="Flag when more events "
                                       "than this sit at the top of a channel's range.")


class FlowFeature(_Section):
    """One per-sample feature computed from the populations table."""

    name: str = Field(description="Column name, e.g. flow_cd8_pct_cd3 (<= 32, [a-z0-9_]).")
    population: str = Field(description="Population id (gate id) counted.")
    of: str | None = Field(None, description="measure 'pct': denominator population id.")
    measure: Literal["pct", "per_ul"] = Field("pct", description="'pct': 100 x population / "
                                              "of; 'per_ul': absolute count (needs beads).")
    label: str = Field("", description="Long label for the data dictionary.")

    _name = field_validator("name")(_check_feature_name)


class FlowConfig(_Section):
    """Flow cytometry: gates per panel, counting beads, QC and features."""

    panels: dict[str, Path] = Field(default_factory=dict, description="Manifest 'stain' "
                                    "(panel name) -> gates file (.xml Gating-ML, .wsp, .yaml).")
    default_gates: Path | None = Field(None, description="Gates file for panels not listed.")
    beads: BeadsConfig | None = Field(None, description="Counting beads; null = no absolute "
                                      "counts.")
    qc: FlowQcConfig = Field(default_factory=FlowQcConfig, description="Acquisition QC.")
    plots: bool = Field(True, description="Write gating plots (PNG) per sample.")
    features: list[FlowFeature] = Field(default_factory=list, description="Features "
                                        "written to blood_features.csv.")


class BloodConfig(_Section):
    """The blood arm."""

    flow: FlowConfig = Field(default_factory=FlowConfig, description="Flow cytometry.")


def load_config(path: str | Path | None = None) -> BloodConfig:
    """Read and validate a blood YAML config (default: ``configs/blood.yaml``).

    Relative paths are resolved against the YAML file's folder.

    Raises
    ------
    ConfigError
        Missing file, YAML syntax error or an invalid key, naming the file and the key.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: blood config not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML ({error})") from error
    try:
        config = BloodConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from error
    return _resolve_paths(config, path.parent)


def _resolve_paths(config: BloodConfig, base: Path) -> BloodConfig:
    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p).resolve())

    flow = config.flow.model_copy(update={
        "panels": {k: fix(v) for k, v in config.flow.panels.items()},
        "default_gates": fix(config.flow.default_gates),
    })
    return config.model_copy(update={"flow": flow})
