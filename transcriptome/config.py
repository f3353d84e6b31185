"""Configuration of the transcriptome arm: one pydantic section per pipeline step.

The YAML form is ``configs/transcriptome.yaml``; relative paths in it are resolved against the
YAML file's own folder, so a config travels with its gene sets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hcccore.yamlfile import read_yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIGNATURE_DIR = PROJECT_ROOT / "configs" / "signatures"
DEFAULT_GENE_MAP = DEFAULT_SIGNATURE_DIR / "ensembl_to_symbol.tsv"
DEFAULT_GENE_SETS = (DEFAULT_SIGNATURE_DIR / "hcc_atezo_bev.yaml",
                     DEFAULT_SIGNATURE_DIR / "ifng_ayers.yaml")
DEFAULT_SINGLE_GENES = ("CD274", "GPC3", "AFP", "VEGFA", "KDR")

ValueType = Literal["counts", "tpm", "log2"]


class ConfigError(ValueError):
    """The transcriptome config is invalid; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class InputConfig(_Section):
    """How expression files are read and their gene identifiers mapped."""

    value_type: Literal["auto", "counts", "tpm", "log2"] = Field(
        "auto", description="Scale of the input values. 'auto' detects it: integer values are "
        "counts, values up to 30 (or any negative value) are log2, columns summing to 1e6 are "
        "TPM; anything else is refused as ambiguous.")
    gene_map: Path | None = Field(
        DEFAULT_GENE_MAP, description="TSV with columns ensembl_gene_id, symbol used to map "
        "Ensembl gene ids (version suffix dropped) to HGNC symbols; null keeps ids as given.")


class QcConfig(_Section):
    """Per-sample quality control (flags only: flagged samples are still scored)."""

    min_library_size: float = Field(1e6, ge=0, description="Counts input: samples with fewer "
                                    "assigned reads are flagged 'low library size'.")
    detection_threshold: float = Field(1.0, gt=0, description="A gene is detected in a sample "
                                       "when its count (or TPM) is at least this value.")
    outlier_mads: float = Field(3.0, gt=0, description="Flag samples whose log10 library size "
                                "or detected-gene count lies more than this many scaled MADs "
                                "below the cohort median.")


class NormaliseConfig(_Section):
    """Normalisation of counts and the log2 transform."""

    method: Literal["tmm", "median_ratio", "cpm"] = Field(
        "tmm", description="Counts input: 'tmm' (edgeR trimmed mean of M values), "
        "'median_ratio' (DESeq2 median-of-ratios size factors) or 'cpm' (library size only). "
        "All give counts per million of an effective library size. Ignored for TPM/log2 input.")
    pseudocount: float = Field(1.0, gt=0, description="Added to CPM or TPM before log2.")


class SignaturesConfig(_Section):
    """Gene-set scores and single genes of interest."""

    gene_sets: tuple[Path, ...] = Field(
        DEFAULT_GENE_SETS, description="YAML (key, label, source, genes) or GMT files of gene "
        "sets, genes as HGNC symbols.")
    methods: tuple[Literal["zscore", "ssgsea"], ...] = Field(
        ("zscore", "ssgsea"), min_length=1, description="'zscore': mean over the set's genes of "
        "each gene's z-score across the cohort; 'ssgsea': single-sample GSEA enrichment score "
        "(Barbie et al. 2009, gseapy).")
    min_genes: int = Field(3, ge=1, description="A set scores only when at least this many of "
                           "its genes are present (and variable, for zscore).")
    min_fraction: float = Field(0.5, gt=0, le=1, description="... and at least this fraction "
                                "of its genes are present.")
    ssgsea_weight: float = Field(0.25, ge=0, description="ssGSEA rank weight (alpha).")
    single_genes: tuple[str, ...] = Field(DEFAULT_SINGLE_GENES, description="Genes (HGNC "
                                          "symbols) reported one by one as log2 expression.")

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("methods must not repeat")
        return value


class TranscriptomeConfig(_Section):
    """The whole transcriptome arm config."""

    input: InputConfig = InputConfig()
    qc: QcConfig = QcConfig()
    normalise: NormaliseConfig = NormaliseConfig()
    signatures: SignaturesConfig = SignaturesConfig()

    def digest(self) -> str:
        """Return the SHA-256 of the resolved config (canonical JSON)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def load_config(path: str | Path) -> TranscriptomeConfig:
    """Read a transcriptome config YAML; relative paths resolve against its folder.

    Parameters
    ----------
    path
        The YAML file (e.g. ``configs/transcriptome.yaml``).

    Returns
    -------
    TranscriptomeConfig

    Raises
    ------
    ConfigError
        File missing, not YAML, or keys/values invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    data = read_yaml(path, error=ConfigError) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = path.resolve().parent
    section = data.get("input")
    if isinstance(section, dict) and section.get("gene_map"):
        section["gene_map"] = str(_resolve(section["gene_map"], base))
    section = data.get("signatures")
    if isinstance(section, dict) and isinstance(section.get("gene_sets"), list):
        section["gene_sets"] = [str(_resolve(p, base)) for p in section["gene_sets"]]
    try:
        return TranscriptomeConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{path}: {error}") from error


def _resolve(value: str, base: Path) -> Path:
    candidate = Path(value)
    return candidate if candidate.is_absolute() else (base / candidate).resolve()
