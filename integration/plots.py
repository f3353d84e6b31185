"""Figures of the outcome analysis (matplotlib, Agg): KM with numbers at risk, forest, response.

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes it as
PNG and returns the PNG bytes for the self-contained report.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402
from lifelines.plotting import add_at_risk_counts  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from integration.exports import atomic_write  # noqa: E402


def km_figure(time: pd.Series, event: pd.Series, groups: pd.Series, *, title: str,
              xlabel: str = "months", note: str = "") -> Figure:
    """Kaplan-Meier curves per group with numbers at risk under the axis.

    Parameters
    ----------
    time, event
        Survival data (same index as ``groups``).
    groups
        Group label per patient (plotted in sorted order).
    title
        Axis title.
    xlabel
        Time axis label.
    note
        Text under the title (e.g. the log-rank p value).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    fitters = []
    for label in sorted(groups.dropna().unique(), key=str):
        mask = groups == label
        fitter = KaplanMeierFitter(label=f"{label} (n={int(mask.sum())})")
        fitter.fit(time[mask], event[mask])
        fitter.plot_survival_function(ax=ax, ci_show=False, show_censors=True,
                                      censor_styles={"ms": 4})
        fitters.append(fitter)
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"])
    fig.tight_layout()
    return fig


def forest_figure(table: pd.DataFrame, *, title: str, label_column: str = "label",
                  max_rows: int = 25) -> Figure:
    """Forest plot of hazard (or odds) ratios with 95% intervals on a log axis.

    Parameters
    ----------
    table
        Rows with ``hr``, ``ci_low``, ``ci_high`` and ``label_column``; the first
        ``max_rows`` are drawn top to bottom.
    title
        Axis title.
    """
    finite = np.isfinite(table[["hr", "ci_low", "ci_high"]].astype(float)).all(axis=1)
    rows = table[finite].head(max_rows)  # infinite ratios (separation) cannot be drawn
    height = 1.2 + 0.28 * max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(7.5, height))
    y = np.arange(len(rows))[::-1]
    ax.errorbar(rows["hr"], y, xerr=[rows["hr"] - rows["ci_low"], rows["ci_high"] - rows["hr"]],
                fmt="s", color="black", ecolor="grey", capsize=2, ms=4)
    ax.axvline(1.0, color="red", lw=0.8, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels([str(v)[:60] for v in rows[label_column]], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ratio (95% CI), log scale")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def response_figure(values: pd.Series, labels: pd.Series, *, title: str) -> Figure:
    """Box and strip plot of one feature in responders and non-responders."""
    frame = pd.DataFrame({"x": values, "y": labels}).dropna()
    groups = [frame.loc[frame["y"] == 0, "x"], frame.loc[frame["y"] == 1, "x"]]
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.boxplot(groups, showfliers=False)
    ax.set_xticks([1, 2], [f"non-resp.\n(n={len(groups[0])})", f"resp.\n(n={len(groups[1])})"])
    rng = np.random.default_rng(0)
    for i, group in enumerate(groups, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(group)), group, s=10, alpha=0.7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def variance_heatmap(variance: pd.DataFrame, *, title: str) -> Figure:
    """Heatmap of ``view, factor, r2_pct`` (variance explained, %), values written in cells."""
    grid = variance.pivot(index="view", columns="factor", values="r2_pct")
    grid = grid[list(dict.fromkeys(variance["factor"]))]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * grid.shape[1], 1.0 + 0.5 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(), cmap="Blues", vmin=0, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    for (i, j), value in np.ndenumerate(grid.to_numpy()):
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="% variance")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path) -> bytes:
    """Write ``fig`` as PNG to ``path`` (atomically), close it and return the PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    data = buffer.getvalue()
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return data
