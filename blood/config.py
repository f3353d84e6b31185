"""Configuration of the blood arm: one pydantic section per assay and step.

The YAML form is ``configs/blood.yaml``; relative paths in it are resolved against the YAML
file's own folder, so a config travels with its gates files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from blood.errors import ConfigError
from hcccore.yamlfile import read_yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "blood.yaml"
FEATURE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    """Acquisition QC thresholds: flags, and a failure for a (nearly) empty file."""

    min_events: int = Field(5000, ge=0, description="Flag files with fewer events.")
    fail_below_events: int = Field(100, ge=0, description="A file with fewer events fails "
                                   "(check flow_events in qc.json; the sample gets no "
                                   "features): an empty or aborted acquisition. 0 = never.")
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
    wsp_samples: dict[str, str] = Field(default_factory=dict, description="FlowJo "
                                        "workspaces: manifest sample_id -> workspace sample "
                                        "name, where the FCS file is named otherwise (a "
                                        "workspace with one sample needs none).")
    beads: BeadsConfig | None = Field(None, description="Counting beads; null = no absolute "
                                      "counts.")
    qc: FlowQcConfig = Field(default_factory=FlowQcConfig, description="Acquisition QC.")
    plots: bool = Field(True, description="Write gating plots (PNG) per sample.")
    features: list[FlowFeature] = Field(default_factory=list, description="Features "
                                        "written to blood_features.csv.")


# ---------------------------------------------------------------- single-cell RNA-seq
CELL_TYPE_KEY = re.compile(r"^[a-z][a-z0-9_]{0,20}$")  # scrna_<key>_frac stays <= 32 chars


def _check_keys(mapping: dict[str, object]) -> dict[str, object]:
    bad = [k for k in mapping if not CELL_TYPE_KEY.match(k)]
    if bad:
        raise ValueError(f"names {bad} must be lowercase [a-z0-9_], start with a letter and "
                         "have at most 21 characters (they become scrna_<name>_frac/_score)")
    return mapping


class MarkerSet(_Section):
    """Marker genes of one cell type: score = score(positive) - max(score(negative), 0)."""

    label: str = Field("", description="Long name for the data dictionary.")
    positive: list[str] = Field(min_length=1, description="Genes expressed by the type.")
    negative: list[str] = Field(default_factory=list, description="Genes the type lacks "
                                "(e.g. HLA-DR for MDSC-like cells); their score above background "
                                "is subtracted.")
    within: str | None = Field(None, description="Key of the lineage this type is a subset "
                               "of (e.g. treg within cd4_t): clusters are labelled with "
                               "lineages only, and a cell of that lineage takes the subset "
                               "when its own subset score beats its lineage score.")


# Lineage markers: specific to their lineage in PBMCs and not interferon-stimulated, so that
# an IFN response (ISG15, IFI6, IFIT1-3, MX1, OAS1 ...) never decides a lineage; genes shared
# across lineages (CST3 and HLA-DQA1 are high in monocytes and B cells, LDHB and CCR7 in B
# cells, LST1 in all monocytes) or interferon-induced (CD74) are left out.
DEFAULT_MARKERS: dict[str, dict[str, object]] = {
    "cd8_t": {"label": "CD8+ T cells", "positive": ["CD8A", "CD8B", "CD3D", "CD3E"]},
    "cd4_t": {"label": "CD4+ T cells (conventional)",
              "positive": ["CD3D", "CD3E", "CD4", "IL7R"], "negative": ["CD8A", "CD8B"]},
    "treg": {"label": "Regulatory T cells",
             "positive": ["FOXP3", "IL2RA", "CTLA4", "IKZF2", "TIGIT"], "within": "cd4_t"},
    "nk": {"label": "NK cells", "positive": ["NKG7", "GNLY", "KLRD1", "KLRF1", "NCAM1", "PRF1"],
           "negative": ["CD3D", "CD3E"]},
    "b": {"label": "B cells", "positive": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1"]},
    "cmono": {"label": "Classical monocytes (CD14+)",
              "positive": ["CD14", "LYZ", "S100A8", "S100A9", "FCN1"]},
    "ncmono": {"label": "Non-classical monocytes (CD16+)",
               "positive": ["FCGR3A", "MS4A7", "CDKN1C"]},
    "dc": {"label": "Dendritic cells (cDC and pDC)",
           "positive": ["FCER1A", "CLEC10A", "CD1C", "LILRA4", "IL3RA"]},
    "mdsc": {"label": "MDSC-like (monocytic, HLA-DR low)",
             "positive": ["S100A8", "S100A9", "S100A12", "VCAN", "CD14", "ARG1"],
             "negative": ["HLA-DRA", "HLA-DRB1", "HLA-DPA1"], "within": "cmono"},
}

DEFAULT_SIGNATURES: dict[str, dict[str, object]] = {
    "teff": {"label": "T-effector signature (pseudobulk)",
             "genes": ["CD8A", "GZMA", "GZMB", "PRF1", "IFNG", "CXCL9", "CXCL10", "TBX21"]},
    "exhaustion": {"label": "T-cell exhaustion signature (pseudobulk)",
                   "genes": ["PDCD1", "HAVCR2", "LAG3", "TIGIT", "CTLA4", "TOX"]},
    "ifn": {"label": "Interferon signature (pseudobulk)",
            "genes": ["ISG15", "IFI6", "IFI44L", "MX1", "IFIT1", "IFIT3", "OAS1", "STAT1",
                      "IRF7"]},
}


class Signature(_Section):
    """A gene signature scored on the pseudobulk of each sample."""

    label: str = Field("", description="Long name for the data dictionary.")
    genes: list[str] = Field(min_length=1, description="Genes (those absent are skipped; "
                             "at least one must be present).")
    cell_type: str | None = Field(None, description="Pseudobulk of this annotated cell type "
                                  "only (null = all QC-passing cells).")


class ScrnaQcConfig(_Section):
    """Per-cell QC filters; doublets only where raw counts exist."""

    min_genes: int = Field(200, ge=0, description="Drop cells with fewer detected genes.")
    min_counts: int = Field(500, ge=0, description="Drop cells with fewer counts (raw counts "
                            "only; skipped for log-normalised input).")
    max_pct_mt: float = Field(20.0, ge=0, le=100, description="Drop cells with a larger "
                              "mitochondrial (MT-) share of counts, in percent.")
    doublets: bool = Field(True, description="Score doublets with scanpy.pp.scrublet (raw "
                           "counts only) and drop predicted doublets.")
    min_cells: int = Field(50, ge=1, description="A sample with fewer QC-passing cells fails.")


class ScrnaClusteringConfig(_Section):
    """Leiden clustering of each sample's QC-passing cells (the units that get a label)."""

    n_top_genes: int = Field(2000, ge=10, description="Highly variable genes (scanpy "
                             "'seurat' flavour; all genes when the data have fewer).")
    n_pcs: int = Field(30, ge=2, description="Principal components for the neighbour graph "
                       "(fewer when the sample has fewer cells or genes).")
    n_neighbors: int = Field(15, ge=2, description="Neighbours per cell in the kNN graph.")
    resolution: float = Field(1.0, gt=0, description="Leiden resolution (higher: more, "
                              "smaller clusters).")
    umap: bool = Field(True, description="Compute a UMAP of each sample and write "
                       "scrna_umap.png coloured by cell type.")


class ScrnaConfig(_Section):
    """Single-cell RNA-seq: reading, QC, normalisation, annotation, fractions, signatures."""

    sample_column: str = Field("sample", description="obs column holding manifest "
                               "sample_ids when one file holds several samples.")
    qc: ScrnaQcConfig = Field(default_factory=ScrnaQcConfig, description="Cell QC.")
    target_sum: float = Field(1e4, gt=0, description="normalize_total target before log1p "
                              "(raw counts only).")
    markers: dict[str, MarkerSet] = Field(
        default_factory=lambda: {k: MarkerSet.model_validate(v)
                                 for k, v in DEFAULT_MARKERS.items()},
        description="Cell type -> marker genes for scanpy.tl.score_genes annotation.")
    clustering: ScrnaClusteringConfig = Field(default_factory=ScrnaClusteringConfig,
                                              description="Clusters labelled by the markers.")
    min_score: float = Field(0.0, description="A cluster (or a cell of a mixed cluster) whose "
                             "best mean marker score is not above this is 'unassigned'.")
    min_purity: float = Field(0.6, ge=0, le=1, description="A cluster in which fewer than "
                              "this share of cells have the cluster's label as their own "
                              "best-scoring lineage is mixed: its cells are labelled one by "
                              "one (0 = never).")
    celltypist_model: Path | None = Field(None, description="CellTypist model (.pkl); when "
                                          "set, CellTypist annotates instead of the markers.")
    celltypist_labels: dict[str, str] = Field(default_factory=dict, description="CellTypist "
                                              "label -> cell type key; unmapped = 'other'.")
    signatures: dict[str, Signature] = Field(
        default_factory=lambda: {k: Signature.model_validate(v)
                                 for k, v in DEFAULT_SIGNATURES.items()},
        description="Signature name -> genes, scored per sample on the pseudobulk.")
    seed: int = Field(0, description="Random seed (score_genes control genes, scrublet, PCA, "
                      "neighbours, Leiden, UMAP).")

    _markers = field_validator("markers")(_check_keys)
    _signatures = field_validator("signatures")(_check_keys)

    @field_validator("markers")
    @classmethod
    def _subsets(cls, value: dict[str, MarkerSet]) -> dict[str, MarkerSet]:
        for name, marker in value.items():
            parent = value.get(marker.within) if marker.within is not None else None
            if marker.within is not None and (parent is None or parent.within is not None):
                raise ValueError(f"{name}.within = {marker.within!r} must name another "
                                 "marker type that is a lineage (has no 'within' itself)")
        return value


# ---------------------------------------------------------------- ELISA / multiplex
ANALYTE_KEY = re.compile(r"^[a-z][a-z0-9_]{0,19}$")  # elisa_<key>_pg_ml stays <= 32 chars


class ElisaConfig(_Section):
    """ELISA and Luminex-style multiplex plates: layout, curve, limits, QC, features."""

    layout: Path | None = Field(None, description="Plate layout CSV used when no "
                                "'<plate name>.layout.csv' lies beside the plate export.")
    model: Literal["4pl", "5pl"] = Field("4pl", description="Standard-curve model.")
    weight_power: float = Field(2.0, ge=0, description="Weights 1/|y|^power (2 = 1/Y^2).")
    recovery_window: tuple[float, float] = Field((70.0, 130.0), description="Accepted "
                                                 "back-calculated standard recovery (%).")
    max_cv_pct: float = Field(15.0, gt=0, description="Flag replicate CV above this (%).")
    min_curve_span: float = Field(0.3, ge=0, lt=1, description="A standard curve whose level "
                                  "means (raw OD / MFI) span less than this fraction of the "
                                  "highest is flat: the analyte fails (0 = no check).")
    min_curve_tau: float = Field(0.7, ge=0, le=1, description="Standards whose mean "
                                 "responses rise or fall with concentration less "
                                 "consistently than this |Kendall tau| are non-monotonic: the "
                                 "analyte fails (0 = no check).")
    min_recovering_standards: float = Field(0.5, ge=0, le=1, description="Fraction of "
                                            "standard levels that must back-calculate within "
                                            "recovery_window on the final curve; fewer: the "
                                            "analyte fails.")
    below_rule: Literal["lloq_half", "lowest_standard", "censor"] = Field(
        "lloq_half", description="Value below the LLOQ: LLOQ/2, LLOQ (lowest standard) or "
        "NaN (censored); all are flagged '<LLOQ'. Above the ULOQ is always NaN.")
    min_beads: int = Field(35, ge=0, description="Flag multiplex wells with fewer beads "
                           "(labs use 35 to 50 per analyte).")
    exclude_low_beads: bool = Field(False, description="Also drop wells with too few beads.")
    sample_map: Path | None = Field(None, description="CSV plate_sample,sample_id[,plate] "
                                    "naming the manifest sample of each plate sample name "
                                    "(Luminex xPONENT exports), used when no "
                                    "'<plate name>.samples.csv' lies beside the export; "
                                    "unlisted names are taken as sample_ids.")
    xponent_model: Literal["4pl", "5pl"] = Field("5pl", description="Curve model of Luminex "
                                                 "xPONENT exports (their software fits 5PL).")
    xponent_weight_floor: float = Field(1.0, ge=0, description="xPONENT exports: Net MFI "
                                        "closer to zero than this counts as this in the "
                                        "1/|y|^power weights (1 reproduces xPONENT's fits).")
    unit: Literal["pg/mL", "ng/mL"] = Field("pg/mL", description="Unit of the standards' "
                                            "concentrations and the features.")
    analytes: dict[str, str] = Field(default_factory=dict, description="Plate analyte name "
                                     "-> feature key (default: lowercase alphanumerics, "
                                     "'IL-6' -> il6).")
    plots: bool = Field(True, description="Curve plots per plate and analyte (PNG).")

    @field_validator("analytes")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [v for v in value.values() if not ANALYTE_KEY.match(v)]
        if bad:
            raise ValueError(f"analyte keys {bad} must be lowercase [a-z0-9_], start with a "
                             "letter and have at most 20 characters")
        return value


class BloodConfig(_Section):
    """The blood arm."""

    flow: FlowConfig = Field(default_factory=FlowConfig, description="Flow cytometry.")
    elisa: ElisaConfig = Field(default_factory=ElisaConfig, description="ELISA / multiplex.")
    scrna: ScrnaConfig = Field(default_factory=ScrnaConfig, description="scRNA-seq.")


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
    data = read_yaml(path, error=ConfigError) or {}
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
    scrna = config.scrna.model_copy(update={
        "celltypist_model": fix(config.scrna.celltypist_model)})
    elisa = config.elisa.model_copy(update={"layout": fix(config.elisa.layout),
                                            "sample_map": fix(config.elisa.sample_map)})
    return config.model_copy(update={"flow": flow, "elisa": elisa, "scrna": scrna})
