"""Per-sample cell-type fractions and pseudobulk signature scores."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from blood.config import Signature
from blood.errors import BloodInputError

FRACTION_COLUMNS = ("cell_type", "n_cells", "fraction", "not_measurable")
SIGNATURE_COLUMNS = ("signature", "score", "n_genes", "genes_missing", "n_cells")


def cell_type_fractions(labels: pd.Series, cell_types: list[str], *,
                        not_measurable: dict[str, str] | None = None) -> pd.DataFrame:
    """Fraction of cells of each type among all QC-passing cells of one sample.

    Types listed in ``cell_types`` always get a row (zero when absent); other labels
    ('unassigned', 'other') follow; fractions sum to one over the measured types. A type in
    ``not_measurable`` (none of its markers in the data) gets empty ``n_cells`` and
    ``fraction`` and its reason in ``not_measurable``.

    Examples
    --------
    >>> cell_type_fractions(pd.Series(["b", "b", "nk", "unassigned"]), ["b", "nk", "dc"],
    ...                     not_measurable={"dc": "no marker gene"})
    ... # doctest: +NORMALIZE_WHITESPACE
        cell_type  n_cells  fraction  not_measurable
    0           b        2      0.50
    1          nk        1      0.25
    2          dc     <NA>       NaN  no marker gene
    3  unassigned        1      0.25
    """
    not_measurable = not_measurable or {}
    counts = labels.value_counts()
    order = [*cell_types, *sorted(set(counts.index) - set(cell_types))]
    n = np.array([int(counts.get(t, 0)) for t in order])
    total = max(int(n.sum()), 1)
    blank = np.array([t in not_measurable for t in order])
    return pd.DataFrame({
        "cell_type": order,
        "n_cells": pd.array([pd.NA if b else int(c) for b, c in zip(blank, n, strict=True)],
                            dtype="Int64"),
        "fraction": np.where(blank, np.nan, n / total),
        "not_measurable": [not_measurable.get(t, "") for t in order]})


def pseudobulk_scores(adata: ad.AnnData, labels: pd.Series, signatures: dict[str, Signature]
                      ) -> pd.DataFrame:
    """Score gene signatures on the pseudobulk of one sample.

    The pseudobulk of a gene is ``log1p(mean over cells of expm1(x))``, i.e. the log of its
    mean normalised expression (counts per ``target_sum`` for raw input); the score is the
    mean pseudobulk over the signature's genes present in the data.

    Parameters
    ----------
    adata
        One sample's QC-passing cells, log-normalised ``X``.
    labels
        Cell types of those cells (for signatures restricted to one type).
    signatures
        Name -> signature.

    Returns
    -------
    pandas.DataFrame
        One row per signature: ``signature, score, n_genes, genes_missing, n_cells``
        (score NaN when a restricted type has no cells).

    Raises
    ------
    BloodInputError
        A signature has none of its genes in the data.
    """
    genes = pd.Index(adata.var_names)
    rows = []
    for name, signature in signatures.items():
        present = [g for g in signature.genes if g in genes]
        if not present:
            raise BloodInputError(f"signature {name!r}: none of its genes {signature.genes} "
                                  "are in the data")
        cells = np.ones(adata.n_obs, dtype=bool) if signature.cell_type is None else \
            (labels.to_numpy() == signature.cell_type)
        score = np.nan
        if cells.any():
            x = adata[cells, present].X
            x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
            score = float(np.log1p(np.expm1(x.astype(float)).mean(axis=0)).mean())
        rows.append({"signature": name, "score": score, "n_genes": len(present),
                     "genes_missing": " ".join(g for g in signature.genes if g not in genes),
                     "n_cells": int(cells.sum())})
    return pd.DataFrame(rows, columns=list(SIGNATURE_COLUMNS))
