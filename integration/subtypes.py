"""Multi-omics patient subtypes by consensus clustering (Monti et al. 2003).

Baseline features are grouped in blocks by modality (H&E, IHC, mIF, flow, ELISA, scRNA,
RNA-seq). Each feature is standardised (z-score, missing values set to 0 = the mean after
standardising), and each block is weighted by ``1/sqrt(features in block)`` so that every
modality weighs the same whatever its number of features. K-means is run on many 80%
subsamples of the patients for each k; the consensus matrix holds how often two patients fall
together when both are sampled. k is chosen by the smallest proportion of ambiguous clustering
(PAC: consensus between 0.1 and 0.9); the final subtypes are average-linkage clusters of
``1 - consensus``. The defining features are those that differ most between subtypes
(Kruskal-Wallis, Benjamini-Hochberg q).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import kruskal
from sklearn.cluster import AgglomerativeClustering, KMeans

from integration.config import SubtypeConfig
from integration.fdr import bh_qvalues
from integration.frame import AnalysisData


@dataclass
class SubtypeResult:
    """Consensus clustering result.

    Attributes
    ----------
    labels
        ``patient_id -> subtype`` (``S1``, ``S2``, ...).
    selection
        ``k, pac`` for every k tried.
    features
        ``feature, modality, p, q`` and the mean z-score per subtype, by p.
    note
        Why no subtypes were found (empty otherwise).
    """

    labels: pd.Series
    selection: pd.DataFrame
    features: pd.DataFrame
    note: str = ""


def _blocks_matrix(data: AnalysisData, config: SubtypeConfig
                   ) -> tuple[pd.DataFrame, dict[str, str]]:
    parts: list[pd.DataFrame] = []
    modality_of: dict[str, str] = {}
    for modality, keys in data.blocks.items():
        block = data.x[keys]
        block = block.loc[:, (block.isna().mean() <= config.max_missing_fraction)
                          & (block.nunique() > 1)]
        if block.shape[1] == 0:
            continue
        z = (block - block.mean()) / block.std(ddof=0)
        parts.append(z.fillna(0.0) / np.sqrt(block.shape[1]))
        modality_of.update({k: modality for k in block.columns})
    if not parts:
        return pd.DataFrame(), modality_of
    matrix = pd.concat(parts, axis=1)
    present = data.x[list(modality_of)].notna().mean(axis=1) >= 0.5
    return matrix[present], modality_of


def consensus_subtypes(data: AnalysisData, *, config: SubtypeConfig | None = None,
                       seed: int = 0) -> SubtypeResult:
    """Find patient subtypes from the standardised baseline modality blocks.

    Parameters
    ----------
    data
        The analysis frame (its ``blocks``).
    config
        k range, resamples, missingness limit.
    seed
        Seeds subsampling and k-means.

    Returns
    -------
    SubtypeResult
    """
    config = config or SubtypeConfig()
    matrix, modality_of = _blocks_matrix(data, config)
    empty = SubtypeResult(pd.Series(dtype=str), pd.DataFrame(columns=["k", "pac"]),
                          pd.DataFrame())
    n = len(matrix)
    if matrix.shape[1] < 2 or n < max(10, 3 * config.k_min):
        empty.note = (f"not done: needs >= 2 features and >= 10 patients with baseline "
                      f"features (has {matrix.shape[1]}, {n})")
        return empty
    values = matrix.to_numpy()
    rng = np.random.default_rng(seed)
    selection = []
    consensus_by_k: dict[int, np.ndarray] = {}
    for k in range(config.k_min, min(config.k_max, n // 3) + 1):
        together = np.zeros((n, n))
        sampled = np.zeros((n, n))
        for r in range(config.resamples):
            pick = np.sort(rng.choice(n, size=max(int(0.8 * n), k + 1), replace=False))
            labels = KMeans(n_clusters=k, n_init=5, random_state=seed + r).fit_predict(
                values[pick])
            same = (labels[:, None] == labels[None, :]).astype(float)
            together[np.ix_(pick, pick)] += same
            sampled[np.ix_(pick, pick)] += 1.0
        consensus = np.divide(together, sampled, out=np.zeros_like(together),
                              where=sampled > 0)
        upper = consensus[np.triu_indices(n, 1)]
        selection.append({"k": k, "pac": float(np.mean((upper > 0.1) & (upper < 0.9)))})
        consensus_by_k[k] = consensus
    if not selection:
        empty.note = "not done: too few patients for the k range"
        return empty
    table = pd.DataFrame(selection)
    best_k = int(table.sort_values(["pac", "k"]).iloc[0]["k"])
    clusters = AgglomerativeClustering(n_clusters=best_k, metric="precomputed",
                                       linkage="average").fit_predict(
        1.0 - consensus_by_k[best_k])
    order = pd.Series(clusters).value_counts().index  # S1 = largest subtype
    rename = {c: f"S{i + 1}" for i, c in enumerate(order)}
    labels = pd.Series([rename[c] for c in clusters], index=matrix.index, name="subtype")
    return SubtypeResult(labels, table, _defining(data, labels, modality_of))


def _defining(data: AnalysisData, labels: pd.Series, modality_of: dict[str, str]
              ) -> pd.DataFrame:
    rows = []
    by_key = {v.key: v for v in data.variables}
    for key, modality in modality_of.items():
        x = data.x.loc[labels.index, key]
        z = (x - x.mean()) / x.std(ddof=0)
        groups = [x[labels == s].dropna() for s in sorted(labels.unique())]
        row = {"feature": by_key[key].feature, "label": by_key[key].label,
               "modality": modality}
        if all(len(g) >= 2 for g in groups) and x.nunique() > 1:
            try:
                row["p"] = float(kruskal(*groups).pvalue)
            except ValueError:
                row["p"] = np.nan
        for subtype in sorted(labels.unique()):
            row[f"mean_z_{subtype.lower()}"] = float(z[labels == subtype].mean())
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if "p" not in table.columns:
        table["p"] = np.nan
    table["q"] = bh_qvalues(table["p"].to_numpy(dtype=float))
    first = ["feature", "label", "modality", "p", "q"]
    table = table[first + [c for c in table.columns if c not in first]]
    return table.sort_values("p", na_position="last").reset_index(drop=True)
