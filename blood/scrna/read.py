"""Read single-cell data (h5ad, 10x matrix folder, 10x .h5) and detect what its values are.

The expression values are classified as raw counts, log-normalised or scaled (z-scored);
scaled data is unusable for scoring, so its ``.raw`` (when present) is used instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp

from blood.errors import BloodInputError

DataKind = Literal["raw_counts", "log_normalised"]
COUNTS_LAYER = "counts"
_SAMPLE_ROWS = 2000


@dataclass(frozen=True)
class ScrnaData:
    """Cells x genes with the kind of its values stated.

    Attributes
    ----------
    adata
        AnnData whose ``X`` holds ``kind`` values (gene symbols as ``var_names``).
    kind
        "raw_counts" or "log_normalised".
    source
        Where the values came from: "X", "raw" or "layers/counts".
    """

    adata: ad.AnnData
    kind: DataKind
    source: str


def read_scrna(path: str | Path) -> ad.AnnData:
    """Read an h5ad file, a 10x matrix folder or a 10x ``.h5`` file.

    Parameters
    ----------
    path
        ``.h5ad``; a folder with ``matrix.mtx(.gz)``, ``features.tsv(.gz)`` or ``genes.tsv``
        and ``barcodes.tsv(.gz)``; or a 10x ``.h5`` (Cell Ranger v3).

    Returns
    -------
    anndata.AnnData

    Raises
    ------
    BloodInputError
        Missing or unreadable file, naming the file and the problem.
    """
    import scanpy as sc

    path = Path(path)
    if not path.exists():
        raise BloodInputError(f"{path}: single-cell file not found")
    try:
        if path.is_dir():
            adata = sc.read_10x_mtx(path, var_names="gene_symbols", cache=False)
        elif path.suffix == ".h5ad":
            adata = ad.read_h5ad(path)
        elif path.suffix == ".h5":
            adata = sc.read_10x_h5(path)
        else:
            raise BloodInputError(f"{path}: unknown single-cell format (expected .h5ad, a 10x "
                                  "matrix folder or a 10x .h5)")
    except BloodInputError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure names the file
        raise BloodInputError(f"{path}: cannot read single-cell data "
                              f"({type(error).__name__}: {error})") from error
    adata.var_names_make_unique()
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise BloodInputError(f"{path}: no cells or no genes ({adata.n_obs} x {adata.n_vars})")
    return adata


def _values(matrix: object) -> np.ndarray:
    """A dense sample of the stored (non-zero for sparse) values, for classification."""
    if sp.issparse(matrix):
        rows = matrix[: min(_SAMPLE_ROWS, matrix.shape[0])]
        return np.asarray(rows.data, dtype=float)
    return np.asarray(matrix[: min(_SAMPLE_ROWS, matrix.shape[0])], dtype=float).ravel()


def classify_values(matrix: object) -> Literal["raw_counts", "log_normalised", "scaled"]:
    """Classify an expression matrix by its values.

    Non-negative integers are raw counts; non-negative non-integers up to 30 are
    log-normalised (log1p of normalised counts never comes near 30); negative values are
    scaled (z-scored) data.

    Examples
    --------
    >>> classify_values(np.array([[0, 3], [1, 7]]))
    'raw_counts'
    >>> classify_values(np.log1p(np.array([[0.0, 3.5], [1.2, 7.0]])))
    'log_normalised'
    """
    values = _values(matrix)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "raw_counts"
    if values.min() < 0:
        return "scaled"
    if np.array_equal(values, np.round(values)):
        return "raw_counts"
    if values.max() <= 30:
        return "log_normalised"
    return "scaled"  # large non-integers: normalised but not logged; not usable as is


def expression(adata: ad.AnnData, *, path: str | Path = "") -> ScrnaData:
    """Pick usable expression values and state their kind.

    Order of preference: a ``layers['counts']`` of raw counts, ``X`` if raw counts or
    log-normalised, then ``.raw`` if ``X`` is scaled.

    Raises
    ------
    BloodInputError
        No raw counts or log-normalised values anywhere in the file.
    """
    if COUNTS_LAYER in adata.layers and classify_values(adata.layers[COUNTS_LAYER]) == \
            "raw_counts":
        out = adata.copy()
        out.X = adata.layers[COUNTS_LAYER].copy()
        return ScrnaData(out, "raw_counts", "layers/counts")
    kind = classify_values(adata.X)
    if kind != "scaled":
        return ScrnaData(adata.copy(), kind, "X")
    if adata.raw is not None:
        raw_kind = classify_values(adata.raw.X)
        if raw_kind != "scaled":
            raw = adata.raw.to_adata()
            raw.obs = adata.obs.copy()
            return ScrnaData(raw, raw_kind, "raw")
    raise BloodInputError(f"{path}: expression values are scaled or not log-transformed and "
                          "there is no raw-count layer ('counts') or .raw to use instead; "
                          "store raw counts or log1p-normalised values")
