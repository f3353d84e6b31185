"""scRNA-seq of one file -> per-sample clusters, cell types, fractions, signatures, features.

A file is prepared once (read, detect the kind of values, QC, normalise, then cluster and
annotate each sample's QC-passing cells on their own) and then split into samples by
``scrna.sample_column``; several manifest rows may share one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np

from blood.config import ScrnaConfig
from blood.errors import BloodInputError
from blood.features import FeatureInfo
from blood.outputs import write_csv, write_json
from blood.scrna.annotate import CELL_TYPE, CLUSTER_COLUMNS, GROUP, Annotation, annotate
from blood.scrna.cluster import CLUSTER, UMAP_COLUMNS
from blood.scrna.fractions import cell_type_fractions, pseudobulk_scores
from blood.scrna.normalise import log_normalise
from blood.scrna.plots import plot_umap
from blood.scrna.qc import QcSummary, cell_qc
from blood.scrna.read import DataKind, expression, read_scrna

QC_FILE = "scrna_qc.json"
CELLS_FILE = "scrna_cells.csv"
CLUSTERS_FILE = "scrna_clusters.csv"
UMAP_FILE = "scrna_umap.png"
FRACTIONS_FILE = "cell_types.csv"
SIGNATURES_FILE = "signatures.csv"
N_CELLS = "scrna_n_cells"


@dataclass(frozen=True)
class PreparedScrna:
    """One file after QC, normalisation and annotation (all cells, QC flags in obs).

    Attributes
    ----------
    path
        Input file.
    adata
        Log-normalised cells x genes; obs holds QC metrics and, for QC-passing cells,
        ``cluster``, ``umap_1``, ``umap_2`` and ``cell_type`` ('' and NaN for the others).
    kind, source
        Kind of the input values ("raw_counts" | "log_normalised") and where they came from.
    qc
        QC summary over the whole file.
    annotation
        Clusters and cell types of the QC-passing cells, each sample clustered and labelled
        on its own (its ``group`` in the cluster table).
    """

    path: Path
    adata: ad.AnnData
    kind: DataKind
    source: str
    qc: QcSummary
    annotation: Annotation


def prepare_scrna(path: str | Path, *, config: ScrnaConfig) -> PreparedScrna:
    """Read, QC, normalise and annotate one single-cell file.

    Parameters
    ----------
    path
        h5ad, 10x matrix folder or 10x .h5.
    config
        scRNA config.

    Returns
    -------
    PreparedScrna

    Raises
    ------
    BloodInputError
        Unreadable file, unusable values, no cell passing QC or no marker genes, naming the
        file.
    """
    path = Path(path)
    data = expression(read_scrna(path), path=path)
    adata = data.adata
    batch_key = config.sample_column if config.sample_column in adata.obs else None
    if batch_key is not None:
        adata.obs[batch_key] = adata.obs[batch_key].astype(str)
    qc = cell_qc(adata, kind=data.kind, config=config.qc, batch_key=batch_key,
                 seed=config.seed)
    adata = log_normalise(adata, kind=data.kind, target_sum=config.target_sum)
    passed = np.flatnonzero(adata.obs["qc_pass"].to_numpy(dtype=bool))
    if passed.size == 0:
        raise BloodInputError(f"{path}: no cell passes QC (cells failing each filter: "
                              f"{qc.removed}; thresholds scrna.qc)")
    cells = adata[passed].copy()
    cells.obs_names_make_unique()  # results are put back by position
    try:
        annotation = annotate(cells, config=config, groups=(
            cells.obs[batch_key] if batch_key is not None else None))
    except BloodInputError as error:
        raise BloodInputError(f"{path}: {error}") from error
    umap = annotation.umap.reindex(cells.obs_names)  # all NaN when not computed
    for column, values in ((CLUSTER, annotation.clusters), (CELL_TYPE, annotation.labels)):
        adata.obs[column] = ""  # cells failing QC are neither clustered nor typed
        adata.obs.iloc[passed, adata.obs.columns.get_loc(column)] = values.to_numpy()
    for column in UMAP_COLUMNS:
        adata.obs[column] = np.nan
        adata.obs.iloc[passed, adata.obs.columns.get_loc(column)] = umap[column].to_numpy()
    return PreparedScrna(path, adata, data.kind, data.source, qc, annotation)


def _sample_cells(prepared: PreparedScrna, sample_id: str, column: str) -> ad.AnnData:
    obs = prepared.adata.obs
    if column not in obs:
        return prepared.adata
    values = obs[column].astype(str)
    if sample_id in set(values):
        return prepared.adata[(values == sample_id).to_numpy()]
    if values.nunique() == 1:
        return prepared.adata
    found = sorted(values.unique())
    raise BloodInputError(f"{prepared.path}: sample {sample_id!r} not found in obs column "
                          f"{column!r} (values: {found[:10]}{' ...' if len(found) > 10 else ''})")


def cell_types_of(config: ScrnaConfig) -> list[str]:
    """Cell-type keys reported as fractions: marker keys, or mapped CellTypist keys."""
    if config.celltypist_model is not None:
        return sorted(set(config.celltypist_labels.values()))
    return list(config.markers)


def sample_features(prepared: PreparedScrna, sample_id: str, out_dir: str | Path, *,
                    config: ScrnaConfig) -> dict[str, float]:
    """Write one sample's outputs and return its features.

    Writes ``scrna_qc.json`` (data kind, QC, annotation method, clustering),
    ``scrna_cells.csv`` (one row per cell: QC metrics, pass flag, cluster, UMAP, cell type),
    ``scrna_clusters.csv`` (one row per cluster: label, mean score, cells, purity, how it
    was labelled, its cells' types), ``scrna_umap.png`` (when ``clustering.umap``),
    ``cell_types.csv`` and ``signatures.csv`` under ``out_dir``.

    Returns
    -------
    dict
        ``scrna_n_cells``, ``scrna_<type>_frac`` per cell type (NaN when the type is not
        measurable in the file: none of its marker genes), ``scrna_<name>_score`` per
        signature.

    Raises
    ------
    BloodInputError
        Sample not in the file, or fewer QC-passing cells than ``qc.min_cells``.
    """
    out_dir = Path(out_dir)
    cells = _sample_cells(prepared, sample_id, config.sample_column)
    passed = cells[cells.obs["qc_pass"].to_numpy(dtype=bool)]
    if passed.n_obs < config.qc.min_cells:
        raise BloodInputError(f"{prepared.path}: sample {sample_id!r} has {passed.n_obs} cells "
                              f"passing QC (< scrna.qc.min_cells = {config.qc.min_cells})")
    types = cell_types_of(config)
    not_measurable = prepared.annotation.not_measurable
    fractions = cell_type_fractions(passed.obs[CELL_TYPE], types,
                                    not_measurable=not_measurable)
    signatures = pseudobulk_scores(passed, passed.obs[CELL_TYPE], config.signatures)
    column = config.sample_column
    groups = set(passed.obs[column].astype(str)) if column in passed.obs else {""}
    table = prepared.annotation.cluster_table
    clusters = table[table[GROUP].isin(groups)][list(CLUSTER_COLUMNS)]
    fails = cells.obs["qc_fail"].astype(str).str.split(";").explode()
    qc = {"file": str(prepared.path), "sample_id": sample_id, "data_kind": prepared.kind,
          "values_from": prepared.source, "n_cells_in": int(cells.n_obs),
          "n_cells_pass": int(passed.n_obs),
          "removed": {k: int(v) for k, v in fails[fails != ""].value_counts().items()},
          "notes": prepared.qc.notes, "annotation": prepared.annotation.method,
          "marker_genes_missing": prepared.annotation.missing_genes,
          "not_measurable": not_measurable,
          "celltypist_model_sha256": prepared.annotation.model_sha256,
          "clustering": {**config.clustering.model_dump(), "seed": config.seed,
                         "min_purity": config.min_purity, "n_clusters": int(len(clusters)),
                         "n_clusters_labelled_by_cells": int(
                             (clusters["labelled_by"] == "cells").sum()),
                         "per": "sample" if column in passed.obs else "file"},
          "normalisation": (f"normalize_total(target_sum={config.target_sum:g}) + log1p"
                            if prepared.kind == "raw_counts" else "none (input log-normalised)")}
    write_json(qc, out_dir / QC_FILE)
    columns = [c for c in ("n_genes", "total_counts", "pct_mt", "doublet_score", "qc_pass",
                           "qc_fail", CLUSTER, *UMAP_COLUMNS, CELL_TYPE) if c in cells.obs]
    write_csv(cells.obs[columns].rename_axis("barcode").reset_index(), out_dir / CELLS_FILE)
    write_csv(clusters, out_dir / CLUSTERS_FILE)
    umap = passed.obs[list(UMAP_COLUMNS)]
    if config.clustering.umap and umap.notna().all(axis=None):
        plot_umap(umap, passed.obs[CELL_TYPE], passed.obs[CLUSTER], out_dir / UMAP_FILE,
                  title=sample_id)
    write_csv(fractions, out_dir / FRACTIONS_FILE)
    write_csv(signatures, out_dir / SIGNATURES_FILE)
    values: dict[str, float] = {N_CELLS: float(passed.n_obs)}
    by_type = fractions.set_index("cell_type")["fraction"]
    values.update({f"scrna_{t}_frac": float(by_type[t]) for t in types})  # NaN: not measurable
    values.update({f"scrna_{row.signature}_score": float(row.score)
                   for row in signatures.itertuples()})
    return values


def feature_infos(config: ScrnaConfig, *, source: str = "blood.scrna",
                  not_measurable: dict[str, list[str]] | None = None
                  ) -> dict[str, FeatureInfo]:
    """Data-dictionary entries of every scRNA feature column the config produces.

    Parameters
    ----------
    config
        scRNA config.
    source
        Producing module, for the dictionary.
    not_measurable
        Cell type -> reasons ("<file>: <why>") it could not be measured in some input;
        stated in that type's dictionary row (its value is empty for those samples).

    Returns
    -------
    dict
        Column name -> dictionary entry.
    """
    not_measurable = not_measurable or {}
    method = ("CellTypist model " + config.celltypist_model.name + " (celltypist.annotate, "
              "best match; labels mapped by scrna.celltypist_labels, others 'other')"
              if config.celltypist_model is not None else
              "Leiden clusters of each sample (scanpy: HVGs, PCA, kNN graph) labelled by their "
              "mean scanpy.tl.score_genes marker score (positive - negative markers); a mixed "
              "cluster (purity < scrna.min_purity) cell by cell; subsets ('within') per cell "
              "inside their lineage; empty when none of the type's positive marker genes are "
              "in the data")
    infos = {N_CELLS: FeatureInfo(N_CELLS, "Cells passing scRNA-seq QC", "cells", "scrna",
                                  "cells passing gene, count, MT and doublet filters "
                                  "(data kind per sample in scrna_qc.json)", "scrna.qc", source)}
    for key in cell_types_of(config):
        name = f"scrna_{key}_frac"
        marker = config.markers.get(key)
        label = (marker.label if marker is not None and marker.label else key)
        if config.celltypist_model is not None:
            sources = sorted(k for k, v in config.celltypist_labels.items() if v == key)
            label += f" (CellTypist label {' + '.join(sources)})"
        reasons = not_measurable.get(key, [])
        note = f"; NOT MEASURABLE (empty) in {'; '.join(reasons)}" if reasons else ""
        infos[name] = FeatureInfo(name, f"{label}, fraction of QC-passing cells",
                                  "fraction (0-1)", "scrna", method + note,
                                  f"scrna.markers.{key}; scrna.clustering; scrna.min_score; "
                                  "scrna.min_purity; scrna.celltypist_model",
                                  source)
    for key, signature in config.signatures.items():
        name = f"scrna_{key}_score"
        cells = "all cells" if signature.cell_type is None else f"{signature.cell_type} cells"
        infos[name] = FeatureInfo(
            name, signature.label or key, "log1p(normalised expression)", "scrna",
            f"mean over genes {' '.join(signature.genes)} of log1p(mean expm1 expression) of "
            f"the pseudobulk of {cells}", f"scrna.signatures.{key}; scrna.target_sum", source)
    return infos

