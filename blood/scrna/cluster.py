"""Leiden clusters of one sample's cells: HVGs -> scaled PCA -> kNN graph -> Leiden (+ UMAP).

The clusters, not single cells, are what the marker genes label (:mod:`blood.scrna.annotate`):
a cluster's mean score is far less noisy than one cell's, where a marker is often not
detected at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from blood.config import ScrnaClusteringConfig

CLUSTER = "cluster"
UMAP_COLUMNS = ("umap_1", "umap_2")
MIN_CELLS = 10  # fewer cells make one cluster: no graph worth the name


@dataclass(frozen=True)
class Clustering:
    """Clusters of a set of cells.

    Attributes
    ----------
    labels
        Cluster id per cell ("0" is the largest), index = obs names.
    umap
        UMAP coordinates (columns :data:`UMAP_COLUMNS`), index = obs names; empty (no rows)
        when not computed.
    n_pcs
        Principal components used (0 when the cells were too few to cluster).
    """

    labels: pd.Series
    umap: pd.DataFrame
    n_pcs: int


def cluster_cells(adata: ad.AnnData, *, config: ScrnaClusteringConfig, seed: int = 0
                  ) -> Clustering:
    """Cluster cells as scanpy's standard workflow does, seeded.

    Highly variable genes of the log-normalised values, scaled (clipped at 10), PCA, a kNN
    graph on the PCs and Leiden (igraph implementation) on it; optionally a UMAP of the
    same graph. Every random step takes ``seed``, so a rerun gives the same clusters.

    Parameters
    ----------
    adata
        One sample's cells x genes, log-normalised ``X``; not modified.
    config
        Clustering parameters (capped by the numbers of cells and genes).
    seed
        Random state of PCA, neighbours, Leiden and UMAP.

    Returns
    -------
    Clustering
        Fewer than :data:`MIN_CELLS` cells make one cluster "0" with no UMAP.

    Examples
    --------
    >>> from blood.config import ScrnaClusteringConfig
    >>> rng = np.random.default_rng(0)
    >>> x = np.log1p(rng.poisson(1.0, (40, 30)) * np.repeat([[4], [0]], 20, axis=0)
    ...              + rng.poisson(1.0, (40, 30)))
    >>> result = cluster_cells(ad.AnnData(x), config=ScrnaClusteringConfig(umap=False))
    >>> int(result.labels.nunique()) >= 2, result.umap.shape
    (True, (0, 2))
    """
    import scanpy as sc

    empty = pd.DataFrame(columns=list(UMAP_COLUMNS), dtype=float)
    if adata.n_obs < MIN_CELLS:
        return Clustering(pd.Series("0", index=adata.obs_names, name=CLUSTER), empty, 0)
    work = ad.AnnData(X=adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names),
                      var=pd.DataFrame(index=adata.var_names))
    sc.pp.highly_variable_genes(work, n_top_genes=min(config.n_top_genes, work.n_vars))
    work = work[:, work.var["highly_variable"].to_numpy()].copy()
    if sp.issparse(work.X):  # scaling centres the values: dense anyway, at most n_top_genes
        work.X = work.X.toarray()
    sc.pp.scale(work, max_value=10)
    n_pcs = max(2, min(config.n_pcs, work.n_obs - 2, work.n_vars - 1))
    sc.pp.pca(work, n_comps=n_pcs, random_state=seed)
    sc.pp.neighbors(work, n_neighbors=min(config.n_neighbors, work.n_obs - 1),
                    n_pcs=n_pcs, random_state=seed)
    sc.tl.leiden(work, resolution=config.resolution, random_state=seed, flavor="igraph",
                 n_iterations=2, directed=False, key_added=CLUSTER)
    labels = work.obs[CLUSTER].astype(str).rename(CLUSTER)
    umap = empty
    if config.umap:
        sc.tl.umap(work, random_state=seed)
        umap = pd.DataFrame(np.asarray(work.obsm["X_umap"])[:, :2], index=work.obs_names,
                            columns=list(UMAP_COLUMNS))
    return Clustering(labels, umap, n_pcs)
