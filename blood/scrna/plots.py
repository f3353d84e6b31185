"""QC plot of one sample: its UMAP coloured by the cell type each cell was given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from blood.outputs import write_png


def plot_umap(umap: pd.DataFrame, labels: pd.Series, clusters: pd.Series, path: str | Path, *,
              title: str) -> Path:
    """Scatter the UMAP coloured by cell type, each cluster's id at its centre.

    Parameters
    ----------
    umap
        Cells x 2 coordinates.
    labels, clusters
        Cell type and cluster id of the same cells (same order).
    path
        PNG to write.
    title
        Figure title (the sample).

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: batch runs have no display
    import matplotlib.pyplot as plt

    xy = umap.to_numpy(dtype=float)
    labels = pd.Series(labels.to_numpy(), dtype=str)
    clusters = pd.Series(clusters.to_numpy(), dtype=str)
    counts = labels.value_counts()
    palette = plt.get_cmap("tab10" if len(counts) <= 10 else "tab20")  # distinct hues first
    figure, axes = plt.subplots(figsize=(6.4, 5.0))
    size = float(np.clip(3000 / max(len(xy), 1), 2, 40))
    for index, (name, count) in enumerate(counts.items()):
        cells = (labels == name).to_numpy()
        axes.scatter(xy[cells, 0], xy[cells, 1], s=size, color=palette(index % palette.N),
                     label=f"{name} ({count})", linewidths=0)
    for cluster in clusters.unique():
        centre = np.median(xy[(clusters == cluster).to_numpy()], axis=0)
        axes.text(centre[0], centre[1], cluster, fontsize=7, ha="center", va="center",
                  bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7,
                        "linewidth": 0})
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_xlabel("UMAP 1")
    axes.set_ylabel("UMAP 2")
    axes.set_title(f"{title}: {len(xy)} cells, {clusters.nunique()} clusters", fontsize=9)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                markerscale=max(1.0, 20 / size))
    figure.tight_layout()
    return write_png(figure, path)
