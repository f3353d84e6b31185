"""Per-cell QC: detected genes, counts, mitochondrial share and (raw counts only) doublets."""

from __future__ import annotations

from dataclasses import dataclass, field

import anndata as ad
import numpy as np

from blood.config import ScrnaQcConfig
from blood.scrna.read import DataKind

QC_COLUMNS = ("n_genes", "total_counts", "pct_mt", "doublet_score", "qc_pass", "qc_fail")


@dataclass
class QcSummary:
    """What QC did to one file or sample.

    Attributes
    ----------
    n_cells_in, n_cells_pass
        Cells before and after QC.
    removed
        Reason -> number of cells failing it (a cell may fail several).
    notes
        What was skipped and why (e.g. no doublet scoring on log-normalised data).
    """

    n_cells_in: int
    n_cells_pass: int
    removed: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def cell_qc(adata: ad.AnnData, *, kind: DataKind, config: ScrnaQcConfig,
            batch_key: str | None = None, seed: int = 0) -> QcSummary:
    """Compute QC metrics into ``adata.obs`` (columns :data:`QC_COLUMNS`) and flag cells.

    Metrics are computed on counts for raw data and on ``expm1`` of the values (normalised
    counts) for log-normalised data, where the count threshold is skipped. Doublets are
    scored with ``scanpy.pp.scrublet`` on raw counts only (per ``batch_key`` when given).

    Parameters
    ----------
    adata
        Cells x genes; modified in place (obs columns added, nothing removed).
    kind
        Kind of ``adata.X`` values.
    config
        Thresholds.
    batch_key
        obs column of samples (scrublet runs per sample).
    seed
        Scrublet random state.

    Returns
    -------
    QcSummary
    """
    import scanpy as sc

    notes: list[str] = []
    x = adata.X if kind == "raw_counts" else adata.X.copy()
    if kind != "raw_counts":
        x = x.expm1() if hasattr(x, "expm1") else np.expm1(x)
    detected = np.asarray((x > 0).sum(axis=1)).ravel()
    totals = np.asarray(x.sum(axis=1)).ravel()
    mt = adata.var_names.str.upper().str.startswith("MT-")
    mt_counts = np.asarray(x[:, np.flatnonzero(mt)].sum(axis=1)).ravel() if mt.any() else 0.0
    adata.obs["n_genes"] = detected
    adata.obs["total_counts"] = totals
    adata.obs["pct_mt"] = 100 * np.divide(mt_counts, totals, out=np.zeros_like(totals),
                                          where=totals > 0)
    if not mt.any():
        notes.append("no MT- genes in the data: mitochondrial share not assessed")
    fails = {"min_genes": detected < config.min_genes,
             "max_pct_mt": adata.obs["pct_mt"].to_numpy() > config.max_pct_mt}
    if kind == "raw_counts":
        fails["min_counts"] = totals < config.min_counts
    else:
        notes.append("log-normalised input: count threshold skipped, genes and MT share "
                     "computed on expm1(values)")
    adata.obs["doublet_score"] = np.nan
    if config.doublets and kind == "raw_counts":
        try:
            scored = adata.copy()
            sc.pp.scrublet(scored, batch_key=batch_key, random_state=seed, verbose=False)
            adata.obs["doublet_score"] = scored.obs["doublet_score"].to_numpy()
            fails["doublet"] = scored.obs["predicted_doublet"].to_numpy(dtype=bool)
        except Exception as error:  # noqa: BLE001 - scrublet fails on tiny samples; say so
            notes.append(f"doublet scoring failed ({type(error).__name__}: {error}); "
                         "no doublets removed")
    elif config.doublets:
        notes.append("log-normalised input: doublet scoring needs raw counts, skipped")
    passed = np.ones(adata.n_obs, dtype=bool)
    for mask in fails.values():
        passed &= ~mask
    adata.obs["qc_pass"] = passed
    reasons = np.full(adata.n_obs, "", dtype=object)
    for name, mask in fails.items():
        reasons[mask] = [f"{r};{name}" if r else name for r in reasons[mask]]
    adata.obs["qc_fail"] = reasons
    return QcSummary(n_cells_in=int(adata.n_obs), n_cells_pass=int(passed.sum()),
                     removed={k: int(v.sum()) for k, v in fails.items()}, notes=notes)
