"""The ``analysis`` section of the study config (``configs/study.yaml``): every option documented.

Other sections of the study file (slides, blood, ...) belong to their arms; this module reads
only ``analysis`` and refuses unknown keys inside it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hcccore.yamlfile import read_yaml

ENDPOINTS = ("os", "pfs")


class ConfigError(ValueError):
    """The study config is missing, unreadable or breaks the schema; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ScoresConfig(_Section):
    """Established clinical scores derived from the clinical table."""

    crafity_crp_mg_dl: float = Field(1.0, gt=0, description="CRAFITY: CRP cut-off (mg/dL).")
    crafity_afp_ng_ml: float = Field(100.0, gt=0, description="CRAFITY: AFP cut-off (ng/mL).")
    afp_response_fall_pct: float = Field(
        75.0, gt=0, le=100, description="AFP response at week 6: fall from baseline of at least "
        "this many percent.")
    afp_progression_rise_pct: float = Field(
        10.0, ge=0, description="AFP non-progression at week 6: rise of at most this many "
        "percent.")
    afp_min_baseline_ng_ml: float = Field(
        20.0, ge=0, description="AFP response is defined only for patients with baseline AFP at "
        "least this high (IMbrave150 convention); others are missing.")


class CoxConfig(_Section):
    """Cox models and cut-points."""

    covariates: list[str] = Field(
        default_factory=lambda: ["crafity", "age", "etiology", "bclc", "child_pugh"],
        description="Clinical model: clinical-table columns (or derived scores) adjusted for in "
        "the multivariable Cox models; its concordance is the bar a biomarker must clear. "
        "Columns absent from the clinical table are dropped with a note in the report.")
    min_patients: int = Field(10, ge=3, description="A feature is analysed only with at least "
                              "this many patients with a value.")
    min_events: int = Field(3, ge=1, description="... and at least this many events among them.")
    minprop: float = Field(0.1, gt=0, lt=0.5, description="Maximally selected rank statistics: "
                           "smallest group fraction of a candidate cut-point (R maxstat minprop).")
    maxprop: float = Field(0.9, gt=0.5, lt=1, description="Largest group fraction (maxprop).")
    ph_test_transform: Literal["rank", "km", "identity", "log"] = Field(
        "rank", description="Time transform of the Schoenfeld-residual PH test (lifelines).")
    n_km_plots: int = Field(6, ge=0, description="KM figures for this many top features per "
                            "endpoint.")


class ElasticNetConfig(_Section):
    """Penalised (elastic-net) Cox model over many features (scikit-survival Coxnet)."""

    enabled: bool = Field(True, description="Fit the penalised model.")
    l1_ratio: float = Field(0.5, gt=0, le=1, description="Mix of L1 (1.0 = lasso) and L2.")
    n_alphas: int = Field(30, ge=5, description="Penalty values on the path.")
    folds: int = Field(5, ge=2, description="Cross-validation folds (penalty chosen by the "
                       "mean out-of-fold concordance).")
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples of the out-of-fold "
                           "risk scores for the concordance interval.")
    max_missing_fraction: float = Field(0.3, ge=0, lt=1, description="Features missing in more "
                                        "patients than this are left out; the rest are "
                                        "median-imputed within each training fold.")


class ResponseConfig(_Section):
    """Objective response and disease control."""

    min_per_group: int = Field(3, ge=1, description="Each outcome group needs this many "
                               "patients with a value.")


class SubtypeConfig(_Section):
    """Multi-omics subtypes by consensus clustering of standardised modality blocks."""

    enabled: bool = Field(True, description="Look for subtypes.")
    k_min: int = Field(2, ge=2, description="Fewest clusters tried.")
    k_max: int = Field(4, ge=2, description="Most clusters tried.")
    resamples: int = Field(50, ge=5, description="Consensus resamples (80% of patients each).")
    max_missing_fraction: float = Field(0.3, ge=0, lt=1, description="Features missing in more "
                                        "patients than this are left out.")

    @model_validator(mode="after")
    def _k_order(self) -> SubtypeConfig:
        if self.k_max < self.k_min:
            raise ValueError("k_max must be at least k_min")
        return self


class MofaConfig(_Section):
    """Multi-omics factor analysis (MOFA+, mofapy2) of the baseline modality views."""

    enabled: bool = Field(True, description="Fit MOFA+ (needs >= 1 view with >= 2 features and "
                          ">= 10 patients).")
    factors: int = Field(8, ge=1, le=50, description="Factors to start from; inactive ones "
                         "(explaining < min_variance_pct in every view) are dropped.")
    min_variance_pct: float = Field(1.0, ge=0, lt=100, description="A factor is kept when it "
                                    "explains at least this % of the variance of some view.")
    iterations: int = Field(1000, ge=10, description="Most training iterations (MOFA+ stops "
                            "earlier at convergence, mode 'fast').")
    include_clinical: bool = Field(False, description="Add the clinical scores (CRAFITY, ALBI, "
                                   "NLR, ...) as a view.")
    max_missing_fraction: float = Field(0.5, ge=0, lt=1, description="Within a view, features "
                                        "missing in more of the view's patients are left out.")
    top_loadings: int = Field(10, ge=1, description="Features listed per factor and view.")
    k_min: int = Field(2, ge=2, description="Fewest subtypes tried on the factors.")
    k_max: int = Field(4, ge=2, description="Most subtypes tried on the factors.")
    resamples: int = Field(50, ge=5, description="Subsamples (80% of patients) for the "
                           "stability of each k (mean adjusted Rand index to the full fit).")

    @model_validator(mode="after")
    def _k_order(self) -> MofaConfig:
        if self.k_max < self.k_min:
            raise ValueError("k_max must be at least k_min")
        return self


class AnalysisConfig(_Section):
    """The ``analysis`` section: outcome analysis of the merged feature table."""

    endpoints: list[Literal["os", "pfs"]] = Field(
        default_factory=lambda: list(ENDPOINTS), description="Survival endpoints analysed.")
    landmark_months: float = Field(
        1.5, gt=0, description="On-treatment features (on-treatment samples, changes from "
        "baseline, week-6 AFP response) are analysed only in patients event-free and followed "
        "at this time, with time measured from it (avoids immortal-time bias).")
    fdr: float = Field(0.1, gt=0, lt=1, description="Benjamini-Hochberg q threshold for "
                       "'significant' in the report.")
    seed: int = Field(20240607, description="Seed of every random step (CV folds, bootstrap, "
                      "clustering).")
    synthetic_outcomes: bool = Field(
        False, description="The clinical outcomes are synthetic (demo); the report says so on "
        "every page.")
    scores: ScoresConfig = Field(default_factory=ScoresConfig, description="Clinical scores.")
    cox: CoxConfig = Field(default_factory=CoxConfig, description="Cox models, cut-points.")
    elastic_net: ElasticNetConfig = Field(default_factory=ElasticNetConfig,
                                          description="Penalised Cox.")
    response: ResponseConfig = Field(default_factory=ResponseConfig, description="Response.")
    subtypes: SubtypeConfig = Field(default_factory=SubtypeConfig, description="Subtypes.")
    mofa: MofaConfig = Field(default_factory=MofaConfig, description="MOFA+ factors and "
                             "factor subtypes.")

    def resolved(self) -> dict:
        """The config as a plain dict (defaults filled in)."""
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """sha256 of the resolved config (canonical JSON), first 16 hex digits."""
        text = json.dumps(self.resolved(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_analysis_config(path: str | Path | None = None) -> AnalysisConfig:
    """Read the ``analysis`` section of a study YAML file.

    Parameters
    ----------
    path
        The study config; ``None`` gives the defaults.

    Returns
    -------
    AnalysisConfig

    Raises
    ------
    ConfigError
        Unreadable YAML, or a key or value the schema refuses (named in the message).
    """
    if path is None:
        return AnalysisConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: study config not found")
    data = read_yaml(path, error=ConfigError) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with an 'analysis' section")
    section = data.get("analysis", {}) or {}
    try:
        return AnalysisConfig.model_validate(section)
    except ValidationError as error:
        problems = "; ".join(f"analysis.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from None
