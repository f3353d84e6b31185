"""Assemble the per-sample feature table, its data dictionary and the gene-set report."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from transcriptome.normalise import Normalised
from transcriptome.signatures import SetScores

MODALITY = "rnaseq"
DICTIONARY_COLUMNS = ("name", "label", "unit", "modality", "method", "config_keys", "source")
NAME_PATTERN = re.compile(r"^[a-z0-9_]{1,32}$")
SIGNATURE_SOURCE = "configs/signatures (see the set's source)"


@dataclass(frozen=True)
class FeatureTables:
    """Outputs of :func:`build_features`.

    Attributes
    ----------
    features
        One row per sample, first column ``sample_id``.
    dictionary
        One row per feature column: name, label, unit, modality, method, config_keys, source.
    gene_sets
        One row per gene set or single gene: key, label, n_genes, n_found, n_used,
        genes_found, genes_missing, status, source.
    """

    features: pd.DataFrame
    dictionary: pd.DataFrame
    gene_sets: pd.DataFrame


def build_features(qc: pd.DataFrame, normalised: Normalised, scores: Sequence[SetScores], *,
                   single_genes: Sequence[str], methods: Sequence[str]) -> FeatureTables:
    """Build the feature table from QC, normalised expression and gene-set scores.

    Parameters
    ----------
    qc
        From :func:`transcriptome.qc.sample_qc`, index = samples in output order.
    normalised
        From :func:`transcriptome.normalise.normalise`.
    scores
        From :func:`transcriptome.signatures.score_gene_sets`.
    single_genes
        Symbols reported one by one as ``rna_<gene>_<unit>`` (NaN when absent).
    methods
        Score methods that were asked for ('zscore' -> ``_score``, 'ssgsea' -> ``_ssgsea``).

    Returns
    -------
    FeatureTables

    Raises
    ------
    ValueError
        A feature name breaks the naming contract (``[a-z0-9_]``, at most 32 characters) or
        repeats.
    """
    samples = qc.index
    columns: dict[str, pd.Series | np.ndarray] = {"sample_id": np.asarray(samples, dtype=str)}
    entries: list[tuple[str, str, str, str, str]] = []
    scale = _scale_text(normalised)

    def add(name: str, values: pd.Series, label: str, unit: str, method: str,
            keys: str, source: str = "input expression file") -> None:
        if not NAME_PATTERN.match(name) or name in columns:
            raise ValueError(f"feature name '{name}' is invalid or repeated; names are "
                             "[a-z0-9_], at most 32 characters")
        columns[name] = values.reindex(samples).to_numpy()
        entries.append((name, label, unit, method, keys, source))

    add("rna_library_size", qc["library_size"], "RNA-seq library size (assigned reads)",
        "reads", "sum of counts over all genes of the input file (counts input only)", "")
    add("rna_detected_genes", qc["detected_genes"], "RNA-seq genes detected", "genes",
        "genes with count (or TPM) >= detection threshold", "qc.detection_threshold")
    add("rna_qc_flag", qc["qc_flag"], "RNA-seq sample flagged by QC (1 = flagged)", "0/1",
        "low library size or low outlier of library size / detected genes (see "
        "transcriptome_qc.csv)", "qc.min_library_size, qc.outlier_mads")
    rows = []
    for result in scores:
        gene_set = result.gene_set
        if "zscore" in methods:
            add(f"rna_{gene_set.key}_score", result.zscore, f"{gene_set.label}: mean z-score",
                "z", f"mean over the set's genes of per-gene z-scores across the cohort, "
                f"{scale}", "signatures.gene_sets, signatures.min_genes, "
                "signatures.min_fraction", gene_set.source)
        if "ssgsea" in methods:
            add(f"rna_{gene_set.key}_ssgsea", result.ssgsea, f"{gene_set.label}: ssGSEA",
                "enrichment score", f"single-sample GSEA enrichment score (gseapy, rank "
                f"weight alpha), {scale}", "signatures.gene_sets, signatures.ssgsea_weight",
                gene_set.source)
        add(f"rna_{gene_set.key}_n_genes", pd.Series(len(result.found), index=samples),
            f"{gene_set.label}: genes found", "genes",
            f"genes of the set present in the expression table (of {len(gene_set.genes)})",
            "signatures.gene_sets", gene_set.source)
        rows.append(_set_row(result))
    present = set(normalised.log2.index)
    for gene in single_genes:
        name = f"rna_{re.sub(r'[^a-z0-9]+', '_', gene.lower()).strip('_')}_{normalised.unit}"
        values = (normalised.log2.loc[gene] if gene in present
                  else pd.Series(np.nan, index=samples))
        add(name, values, f"{gene} expression", normalised.unit, scale,
            "signatures.single_genes, normalise.method, normalise.pseudocount")
        rows.append({"key": gene, "label": f"single gene {gene}", "n_genes": 1,
                     "n_found": int(gene in present), "n_used": int(gene in present),
                     "genes_found": gene if gene in present else "",
                     "genes_missing": "" if gene in present else gene,
                     "status": "ok" if gene in present else "gene not found",
                     "source": "signatures.single_genes"})
    features = pd.DataFrame(columns)
    dictionary = pd.DataFrame(
        [(n, lab, u, MODALITY, m, k, s) for n, lab, u, m, k, s in entries],
        columns=list(DICTIONARY_COLUMNS))
    return FeatureTables(features, dictionary, pd.DataFrame(rows))


def _set_row(result: SetScores) -> dict[str, object]:
    gene_set = result.gene_set
    return {"key": gene_set.key, "label": gene_set.label, "n_genes": len(gene_set.genes),
            "n_found": len(result.found), "n_used": len(result.used),
            "genes_found": " ".join(result.found),
            "genes_missing": " ".join(g for g in gene_set.genes if g not in result.found),
            "status": result.status, "source": gene_set.source}


def _scale_text(normalised: Normalised) -> str:
    if normalised.value_type == "counts":
        return f"on log2(CPM + pseudocount), {normalised.method} normalisation"
    if normalised.value_type == "tpm":
        return "on log2(TPM + pseudocount) as supplied"
    return "on log2 values as supplied"
