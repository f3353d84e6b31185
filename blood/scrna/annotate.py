"""PBMC cell-type annotation: marker genes per cluster (default, offline) or a CellTypist model.

Markers label clusters, as the field does: each sample's cells are clustered
(:mod:`blood.scrna.cluster`), every cluster takes the lineage of its highest mean marker score,
and per-cell scores only split a cluster whose cells mostly disagree with its label and
assign subsets (``within``, e.g. Treg in CD4 T) inside their lineage.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from blood.config import MarkerSet, ScrnaConfig
from blood.errors import BloodInputError, ConfigError
from blood.scrna.cluster import CLUSTER, UMAP_COLUMNS, cluster_cells

CELL_TYPE = "cell_type"
UNASSIGNED = "unassigned"
OTHER = "other"
CELLTYPIST_FOLDER = "CELLTYPIST_FOLDER"  # environment variable celltypist reads
GROUP = "group"
CLUSTER_COLUMNS = ("cluster", "label", "score", "n_cells", "purity", "labelled_by",
                   "cell_types")


@dataclass(frozen=True)
class Annotation:
    """Cell types of every cell.

    Attributes
    ----------
    labels
        One label per cell (index = obs names): a marker key, 'unassigned' or 'other'.
    scores
        Marker scores (cells x measurable types); empty for CellTypist.
    method
        "markers" or "celltypist:<model file name>".
    missing_genes
        Cell type -> marker genes absent from the data.
    not_measurable
        Cell type -> why it cannot be measured in these data (none of its positive marker
        genes present); such a type gets no cell and an empty fraction.
    model_sha256
        SHA-256 of the CellTypist model file ('' for markers).
    clusters
        Cluster id per cell (index = obs names), unique within the cell's group.
    cluster_table
        One row per cluster: ``group`` (the sample clustered) and :data:`CLUSTER_COLUMNS`:
        the cluster's label (markers: best mean lineage score; CellTypist: its most frequent
        cell label), that mean score, cells, purity (markers: see :func:`label_clusters`;
        CellTypist: share of the most frequent label), ``labelled_by`` ("cluster", or
        "cells" for a mixed cluster and for CellTypist) and the cell types its cells got.
    umap
        UMAP coordinates per cell (columns ``umap_1, umap_2``; each group its own); no rows
        when not computed.
    """

    labels: pd.Series
    scores: pd.DataFrame
    method: str
    missing_genes: dict[str, list[str]]
    not_measurable: dict[str, str] = field(default_factory=dict)
    model_sha256: str = ""
    clusters: pd.Series = field(default_factory=lambda: pd.Series(dtype=str, name=CLUSTER))
    cluster_table: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=[GROUP, *CLUSTER_COLUMNS]))
    umap: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(UMAP_COLUMNS), dtype=float))


def unmeasurable_types(markers: dict[str, MarkerSet], genes: pd.Index | list[str]
                       ) -> dict[str, str]:
    """Cell types none of whose positive marker genes are in ``genes``, with the reason.

    Examples
    --------
    >>> from blood.config import MarkerSet
    >>> unmeasurable_types({"b": MarkerSet(positive=["MS4A1"]),
    ...                     "treg": MarkerSet(positive=["FOXP3", "IL2RA"])}, ["MS4A1", "CD3E"])
    {'treg': 'none of its positive marker genes (FOXP3, IL2RA) are in the data'}
    """
    present = set(genes)
    return {name: f"none of its positive marker genes ({', '.join(marker.positive)}) are in "
                  "the data"
            for name, marker in markers.items() if not present.intersection(marker.positive)}


def _missing_genes(markers: dict[str, MarkerSet], genes: pd.Index) -> dict[str, list[str]]:
    present = set(genes)
    return {name: [g for g in [*m.positive, *m.negative] if g not in present]
            for name, m in markers.items()}


def _measurable_or_fail(markers: dict[str, MarkerSet], genes: pd.Index) -> dict[str, str]:
    """The unmeasurable types; raises when no type at all can be measured."""
    skipped = unmeasurable_types(markers, genes)
    if len(skipped) == len(markers):
        wanted = sorted({g for m in markers.values() for g in m.positive})
        raise BloodInputError(f"no cell type can be measured: none of the positive marker "
                              f"genes {wanted} are in the data (are var_names gene symbols?)")
    return skipped


def marker_scores(adata: ad.AnnData, markers: dict[str, MarkerSet], *, seed: int = 0
                  ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Score every cell for every measurable marker set with ``scanpy.tl.score_genes``.

    The score of a type is the score of its positive genes minus the positive part of the
    score of its negative genes (when any are present). ``adata.X`` must be log-normalised.
    A type none of whose positive genes are in the data is not measurable
    (:func:`unmeasurable_types`) and gets no column.

    Returns
    -------
    scores
        Cells x measurable types.
    missing
        Type -> genes not in ``adata.var_names`` (every type).

    Raises
    ------
    BloodInputError
        No cell type has any of its positive marker genes in the data.
    """
    import scanpy as sc

    genes = set(adata.var_names)
    missing = _missing_genes(markers, adata.var_names)
    skipped = _measurable_or_fail(markers, adata.var_names)
    work = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names), var=adata.var[[]])
    scores: dict[str, np.ndarray] = {}
    ctrl = max(10, min(50, adata.n_vars // 10))
    for name, marker in markers.items():
        if name in skipped:
            continue
        total = np.zeros(adata.n_obs)
        for sign, gene_list in ((1.0, marker.positive), (-1.0, marker.negative)):
            present = [g for g in gene_list if g in genes]
            if not present:
                continue
            sc.tl.score_genes(work, present, ctrl_size=ctrl, score_name="_score",
                              random_state=seed, use_raw=False)
            score = work.obs["_score"].to_numpy()
            # negative markers only penalise expression above background: their absence
            # must not reward a type (T cells lack HLA-DR too, yet are not MDSC-like)
            total += score if sign > 0 else -np.clip(score, 0, None)
        scores[name] = total
    return pd.DataFrame(scores, index=adata.obs_names), missing


def label_clusters(scores: pd.DataFrame, clusters: pd.Series, *,
                   markers: dict[str, MarkerSet], min_score: float = 0.0,
                   min_purity: float = 0.6) -> tuple[pd.Series, pd.DataFrame]:
    """Label clusters by their mean marker scores; split mixed clusters; assign subsets.

    Lineages are the scored types without ``within`` (or whose lineage is not scored). A
    cluster takes the lineage of its highest mean score, or 'unassigned' if that is not above
    ``min_score``. A cell has an opinion when any of its lineage scores is above
    ``min_score``. The purity of a labelled cluster is the share of the cells with an opinion
    whose own best lineage is the cluster's; that of an unassigned cluster is the share of
    cells without an opinion. Below ``min_purity`` the cluster is mixed: each of its cells
    with an opinion takes its own best lineage, the others keep the cluster's label. Then a
    cell of a lineage takes a subset of it (e.g. treg within cd4_t) whose score beats both
    the lineage's score and ``min_score``.

    Parameters
    ----------
    scores
        Cells x scored types (:func:`marker_scores`).
    clusters
        Cluster id per cell, same index.
    markers
        The marker sets (for ``within``).
    min_score, min_purity
        As in :class:`blood.config.ScrnaConfig`.

    Returns
    -------
    labels
        Cell type per cell.
    table
        One row per cluster, columns :data:`CLUSTER_COLUMNS`.

    Examples
    --------
    >>> from blood.config import MarkerSet
    >>> markers = {"b": MarkerSet(positive=["MS4A1"]), "t": MarkerSet(positive=["CD3E"])}
    >>> scores = pd.DataFrame({"b": [1.2, 0.9, -0.1, -0.3, 0.9, 0.8],
    ...                        "t": [0.1, 0.2, -0.2, 0.8, 0.0, 0.7]})
    >>> labels, table = label_clusters(scores, pd.Series(["0", "0", "0", "1", "1", "1"]),
    ...                                markers=markers)
    >>> labels.tolist()  # cell 2 has no opinion and follows cluster 0; cluster 1 is mixed
    ['b', 'b', 'b', 't', 'b', 'b']
    >>> table[["cluster", "label", "n_cells", "purity", "labelled_by"]].round(2)
    ... # doctest: +NORMALIZE_WHITESPACE
      cluster label  n_cells  purity labelled_by
    0       0     b        3    1.00     cluster
    1       1     t        3    0.33       cells
    """
    scored = set(scores.columns)
    lineages = [t for t in scores.columns
                if markers[t].within is None or markers[t].within not in scored]
    own = scores[lineages]
    cell_best = pd.Series(np.asarray(lineages, dtype=object)[own.to_numpy().argmax(axis=1)],
                          index=scores.index)
    # a cell with no lineage score above min_score (its markers not detected) has no opinion:
    # it follows its cluster, which is the point of labelling clusters rather than cells
    opinion = own.max(axis=1).to_numpy() > min_score
    labels = pd.Series(UNASSIGNED, index=scores.index, dtype=object, name=CELL_TYPE)
    rows = []
    for cluster in sorted(set(clusters), key=_cluster_order):
        cells = (clusters == cluster).to_numpy()
        means = own[cells].mean()
        label = str(means.idxmax()) if means.max() > min_score else UNASSIGNED
        voters = cells & opinion
        if label == UNASSIGNED:  # its cells agree when they have no opinion either
            purity = float(1 - voters.sum() / cells.sum())
        else:
            purity = float((cell_best[voters] == label).mean()) if voters.any() else 1.0
        mixed = purity < min_purity
        labels[cells] = label
        if mixed:
            labels[voters] = cell_best[voters]
        rows.append({"cluster": cluster, "label": label, "score": float(means.max()),
                     "n_cells": int(cells.sum()), "purity": purity,
                     "labelled_by": "cells" if mixed else "cluster"})
    subsets = [t for t in scores.columns if t not in lineages]
    for lineage in sorted({markers[t].within for t in subsets}):
        own_subsets = scores[[t for t in subsets if markers[t].within == lineage]]
        best, value = own_subsets.idxmax(axis=1), own_subsets.max(axis=1)
        wins = ((labels == lineage) & (value > scores[lineage]) & (value > min_score)).to_numpy()
        labels[wins] = best[wins]
    table = pd.DataFrame(rows, columns=list(CLUSTER_COLUMNS[:-1]))
    table["cell_types"] = [_composition(labels[(clusters == c).to_numpy()])
                           for c in table["cluster"]]
    return labels, table


def annotate(adata: ad.AnnData, *, config: ScrnaConfig, groups: pd.Series | None = None
             ) -> Annotation:
    """Cluster each group of cells and annotate them (markers per cluster, or CellTypist).

    Each group (a sample) is clustered on its own (:func:`blood.scrna.cluster.cluster_cells`)
    and, with markers, scored and labelled on its own (:func:`label_clusters`), so a sample's
    cell types do not depend on the other samples of its file (nor on how they were
    stimulated). With ``config.celltypist_model`` set, CellTypist labels every cell (its
    labels mapped through ``config.celltypist_labels``, unmapped ones 'other') and the
    clusters are only reported. Types none of whose positive markers are in the data are in
    ``not_measurable`` and get no cells.

    Parameters
    ----------
    adata
        QC-passing cells x genes, log-normalised ``X``, gene symbols as ``var_names``.
    config
        scRNA config.
    groups
        Group (sample) of each cell; None: all cells are one group ('').

    Returns
    -------
    Annotation

    Raises
    ------
    BloodInputError
        Markers: no cell type has any of its positive marker genes in the data.
    """
    groups = pd.Series("" if groups is None else groups.astype(str).to_numpy(),
                       index=adata.obs_names)
    celltypist = None
    if config.celltypist_model is not None:
        celltypist = _celltypist(adata, config.celltypist_model, config.celltypist_labels)
    else:
        _measurable_or_fail(config.markers, adata.var_names)  # fail before clustering
    labels, scores, clusters, umaps, tables = [], [], [], [], []
    for group in sorted(set(groups)):
        cells = adata[(groups == group).to_numpy()]
        clustering = cluster_cells(cells, config=config.clustering, seed=config.seed)
        if celltypist is None:
            group_scores, _ = marker_scores(cells, config.markers, seed=config.seed)
            group_labels, table = label_clusters(
                group_scores, clustering.labels, markers=config.markers,
                min_score=config.min_score, min_purity=config.min_purity)
            scores.append(group_scores)
        else:
            group_labels = celltypist.labels[cells.obs_names]
            table = _majority_table(group_labels, clustering.labels)
        labels.append(group_labels)
        clusters.append(clustering.labels)
        umaps.extend([clustering.umap] if len(clustering.umap) else [])
        tables.append(table.assign(**{GROUP: group})[[GROUP, *CLUSTER_COLUMNS]])
    found = {"clusters": _joined(clusters, adata.obs_names).astype(str).rename(CLUSTER),
             "cluster_table": (pd.concat(tables, ignore_index=True) if tables
                               else pd.DataFrame(columns=[GROUP, *CLUSTER_COLUMNS])),
             "umap": (pd.concat(umaps) if umaps
                      else pd.DataFrame(columns=list(UMAP_COLUMNS), dtype=float))}
    if celltypist is not None:
        return Annotation(celltypist.labels, celltypist.scores, celltypist.method, {},
                          model_sha256=celltypist.model_sha256, **found)
    return Annotation(_joined(labels, adata.obs_names).rename(CELL_TYPE),
                      pd.concat(scores).loc[adata.obs_names] if scores else pd.DataFrame(),
                      "markers", _missing_genes(config.markers, adata.var_names),
                      unmeasurable_types(config.markers, adata.var_names), **found)


def _joined(parts: list[pd.Series], index: pd.Index) -> pd.Series:
    """Per-group series put back in the cells' order."""
    return (pd.concat(parts) if parts else pd.Series(dtype=object)).reindex(index)


def _cluster_order(cluster: str) -> tuple[int, str]:
    return (int(cluster), "") if cluster.isdigit() else (1 << 30, cluster)


def _composition(labels: pd.Series) -> str:
    """'cd4_t 30; treg 2': cell types of a cluster's cells, most frequent first."""
    counts = labels.value_counts()
    return "; ".join(f"{name} {count}" for name, count in counts.items())


def _majority_table(labels: pd.Series, clusters: pd.Series) -> pd.DataFrame:
    """Cluster rows for per-cell labels (CellTypist): each cluster's most frequent label."""
    rows = []
    for cluster in sorted(set(clusters), key=_cluster_order):
        cells = labels[(clusters == cluster).to_numpy()]
        counts = cells.value_counts()
        rows.append({"cluster": cluster, "label": str(counts.index[0]), "score": np.nan,
                     "n_cells": int(len(cells)), "purity": float(counts.iloc[0] / len(cells)),
                     "labelled_by": "cells", "cell_types": _composition(cells)})
    return pd.DataFrame(rows, columns=list(CLUSTER_COLUMNS))


def celltypist_models_folder() -> Path:
    """Folder where CellTypist keeps downloaded models: ``$CELLTYPIST_FOLDER/data/models``.

    Follows celltypist's own rule (``celltypist.models.models_path``): the environment
    variable ``CELLTYPIST_FOLDER``, default ``~/.celltypist``; read at each call.
    """
    root = os.environ.get(CELLTYPIST_FOLDER) or str(Path.home() / ".celltypist")
    return Path(root) / "data" / "models"


def resolve_celltypist_model(model: str | Path) -> Path:
    """The model file: ``model`` itself, else a file of that name in the models folder.

    Parameters
    ----------
    model
        Path to a CellTypist ``.pkl``, or the file name of a model downloaded by
        ``celltypist.models.download_models`` (e.g. ``Immune_All_Low.pkl``).

    Returns
    -------
    pathlib.Path
        Absolute path of an existing file.

    Raises
    ------
    ConfigError
        Neither exists; the message names both places.
    """
    model = Path(model)
    for candidate in (model, celltypist_models_folder() / model.name):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{model}: CellTypist model file not found (scrna.celltypist_model), nor "
                      f"in CellTypist's models folder {celltypist_models_folder()} (set "
                      f"{CELLTYPIST_FOLDER} to the folder holding data/models/)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _celltypist(adata: ad.AnnData, model: Path, mapping: dict[str, str]) -> Annotation:
    try:
        import celltypist
    except ImportError as error:
        raise ConfigError("scrna.celltypist_model is set but the celltypist package is not "
                          "installed (pip install celltypist), or unset it to use the "
                          "marker genes") from error
    path = resolve_celltypist_model(model)
    known = [str(t) for t in celltypist.models.Model.load(str(path)).cell_types]
    unknown = sorted(set(mapping) - set(known))
    if not mapping or unknown:
        problem = ("is empty" if not mapping else
                   f"names labels the model does not have: {unknown}")
        raise ConfigError(f"scrna.celltypist_labels {problem}; map the labels of {path.name} "
                          f"({known}) to cell-type keys")
    # a path string with a '/' is loaded as a file: celltypist never looks for a download
    predicted = celltypist.annotate(adata, model=str(path), majority_voting=False)
    raw = predicted.predicted_labels["predicted_labels"].astype(str)
    labels = raw.map(lambda label: mapping.get(label, OTHER))
    return Annotation(pd.Series(labels.to_numpy(), index=adata.obs_names, name=CELL_TYPE),
                      pd.DataFrame(index=adata.obs_names), f"celltypist:{path.name}", {},
                      model_sha256=_sha256(path))
