"""PBMC cell-type annotation: marker-gene scores (default, offline) or a CellTypist model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from blood.config import MarkerSet, ScrnaConfig
from blood.errors import BloodInputError, ConfigError

CELL_TYPE = "cell_type"
UNASSIGNED = "unassigned"
OTHER = "other"


@dataclass(frozen=True)
class Annotation:
    """Cell types of every cell.

    Attributes
    ----------
    labels
        One label per cell (index = obs names): a marker key, 'unassigned' or 'other'.
    scores
        Marker scores (cells x types); empty for CellTypist.
    method
        "markers" or "celltypist:<model file name>".
    missing_genes
        Cell type -> marker genes absent from the data.
    """

    labels: pd.Series
    scores: pd.DataFrame
    method: str
    missing_genes: dict[str, list[str]]


def marker_scores(adata: ad.AnnData, markers: dict[str, MarkerSet], *, seed: int = 0
                  ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Score every cell for every marker set with ``scanpy.tl.score_genes``.

    The score of a type is the score of its positive genes minus the positive part of the
    score of its negative genes (when any are present). ``adata.X`` must be log-normalised.

    Returns
    -------
    scores
        Cells x types.
    missing
        Type -> genes not in ``adata.var_names``.

    Raises
    ------
    BloodInputError
        A cell type has none of its positive marker genes in the data.
    """
    import scanpy as sc

    genes = set(adata.var_names)
    work = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names), var=adata.var[[]])
    scores: dict[str, np.ndarray] = {}
    missing: dict[str, list[str]] = {}
    ctrl = max(10, min(50, adata.n_vars // 10))
    for name, marker in markers.items():
        missing[name] = [g for g in [*marker.positive, *marker.negative] if g not in genes]
        total = np.zeros(adata.n_obs)
        for sign, gene_list in ((1.0, marker.positive), (-1.0, marker.negative)):
            present = [g for g in gene_list if g in genes]
            if not present:
                if sign > 0:
                    raise BloodInputError(f"cell type {name!r}: none of its marker genes "
                                          f"{marker.positive} are in the data")
                continue
            sc.tl.score_genes(work, present, ctrl_size=ctrl, score_name="_score",
                              random_state=seed, use_raw=False)
            score = work.obs["_score"].to_numpy()
            # negative markers only penalise expression above background: their absence
            # must not reward a type (T cells lack HLA-DR too, yet are not MDSC-like)
            total += score if sign > 0 else -np.clip(score, 0, None)
        scores[name] = total
    return pd.DataFrame(scores, index=adata.obs_names), missing


def annotate(adata: ad.AnnData, *, config: ScrnaConfig) -> Annotation:
    """Annotate cells by marker scores, or by CellTypist when a model is configured.

    Markers: each cell takes the type of its highest score; cells whose best score is not
    above ``config.min_score`` are 'unassigned'. CellTypist: its predicted labels mapped
    through ``config.celltypist_labels`` (unmapped labels become 'other').

    Parameters
    ----------
    adata
        Cells x genes, log-normalised ``X``, gene symbols as ``var_names``.
    config
        scRNA config.

    Returns
    -------
    Annotation
    """
    if config.celltypist_model is not None:
        return _celltypist(adata, config.celltypist_model, config.celltypist_labels)
    scores, missing = marker_scores(adata, config.markers, seed=config.seed)
    best = scores.to_numpy().argmax(axis=1)
    labels = np.asarray(scores.columns)[best].astype(object)
    labels[scores.to_numpy().max(axis=1) <= config.min_score] = UNASSIGNED
    return Annotation(pd.Series(labels, index=adata.obs_names, name=CELL_TYPE), scores,
                      "markers", missing)


def _celltypist(adata: ad.AnnData, model: Path, mapping: dict[str, str]) -> Annotation:
    try:
        import celltypist
    except ImportError as error:
        raise ConfigError("scrna.celltypist_model is set but the celltypist package is not "
                          "installed (pip install celltypist), or unset it to use the "
                          "marker genes") from error
    if not Path(model).is_file():
        raise ConfigError(f"{model}: CellTypist model file not found (scrna.celltypist_model)")
    predicted = celltypist.annotate(adata, model=str(model), majority_voting=False)
    raw = predicted.predicted_labels["predicted_labels"].astype(str)
    labels = raw.map(lambda label: mapping.get(label, OTHER))
    return Annotation(pd.Series(labels.to_numpy(), index=adata.obs_names, name=CELL_TYPE),
                      pd.DataFrame(index=adata.obs_names), f"celltypist:{Path(model).name}", {})
