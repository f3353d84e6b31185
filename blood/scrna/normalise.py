"""Normalisation to log1p(counts per ``target_sum``); log-normalised input is kept as is."""

from __future__ import annotations

import anndata as ad

from blood.scrna.read import DataKind


def log_normalise(adata: ad.AnnData, *, kind: DataKind, target_sum: float = 1e4
                  ) -> ad.AnnData:
    """Return a copy with log-normalised ``X`` (raw counts kept in ``layers['counts']``).

    Parameters
    ----------
    adata
        Cells x genes.
    kind
        "raw_counts" (normalize_total to ``target_sum``, then log1p) or "log_normalised"
        (returned unchanged, as a copy).
    target_sum
        Counts per cell after normalisation.

    Returns
    -------
    anndata.AnnData
    """
    import scanpy as sc

    out = adata.copy()
    if kind == "raw_counts":
        out.layers["counts"] = out.X.copy()
        sc.pp.normalize_total(out, target_sum=target_sum)
        sc.pp.log1p(out)
    return out
