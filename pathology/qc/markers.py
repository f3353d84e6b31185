"""QC of multiplex marker calls: each marker's histogram with its threshold, and lineage
consistency (CD8+ cells are CD3+; keratin+ epithelial cells are CD45-).

Count channels (IMC, MIBI) are sparse: most cells have no count of a given marker, and a
threshold that separates zero from the first counts calls noise positive. Two checks show it
on every slide: ``qc/markers/<marker>.png``, the histogram of the cells' values on the scale
the threshold was fitted on (arcsinh for counts) with the threshold drawn, and the lineage
shares in ``qc.json`` (``metrics.lineage``) with the flag ``lineage`` when one is below its
limit (``qc.lineage_*``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from hcccore.atomic import write_bytes
from pathology.config import QcSection
from pathology.qc.flags import Flag

LINEAGE_FLAG = "lineage"
MARKERS_DIR = "markers"


def _find(calls: dict[str, np.ndarray], names: tuple[str, ...]) -> str | None:
    lowered = {name.lower(): name for name in calls}
    return next((lowered[n.lower()] for n in names if n.lower() in lowered), None)


def lineage_metrics(positive: dict[str, np.ndarray], *, config: QcSection) -> dict:
    """Lineage shares of a slide's marker calls.

    Parameters
    ----------
    positive
        Marker name -> per-cell positivity (the panel's calls).
    config
        ``qc.lineage_*``: which marker names are CD3, CD8, CD45 and keratin.

    Returns
    -------
    dict
        ``cd3_of_cd8`` (share of CD8+ cells that are CD3+) and ``cd45neg_of_keratin`` (share
        of keratin+ cells that are CD45-), each ``{"value", "n", "markers"}`` (value None when
        the panel lacks a marker or has no cell in the denominator).

    Examples
    --------
    >>> calls = {"CD3": np.array([1, 1, 0, 0], bool), "CD8": np.array([1, 0, 1, 0], bool)}
    >>> lineage_metrics(calls, config=QcSection())["cd3_of_cd8"]["value"]
    0.5
    """
    def share(numerator: str | None, denominator: str | None, negate: bool) -> dict:
        if numerator is None or denominator is None:
            return {"value": None, "n": 0, "markers": [denominator, numerator]}
        base = positive[denominator]
        hit = ~positive[numerator] if negate else positive[numerator]
        n = int(base.sum())
        return {"value": float(hit[base].mean()) if n else None, "n": n,
                "markers": [denominator, numerator]}

    return {"cd3_of_cd8": share(_find(positive, config.lineage_cd3_markers),
                                _find(positive, config.lineage_cd8_markers), False),
            "cd45neg_of_keratin": share(_find(positive, config.lineage_cd45_markers),
                                        _find(positive, config.lineage_keratin_markers), True)}


def lineage_flag(metrics: dict, *, config: QcSection) -> Flag:
    """The ``lineage`` check: fired when a share with enough cells is below its limit."""
    limits = {"cd3_of_cd8": (config.lineage_min_cd3_of_cd8, "qc.lineage_min_cd3_of_cd8",
                             "share of CD8+ cells that are CD3+"),
              "cd45neg_of_keratin": (config.lineage_min_cd45neg_of_keratin,
                                     "qc.lineage_min_cd45neg_of_keratin",
                                     "share of keratin+ cells that are CD45-")}
    threshold = ", ".join(f"{key} = {limit:g}" for limit, key, _ in limits.values())
    failed, passed = [], []
    worst = None
    for name, (limit, key, what) in limits.items():
        entry = metrics.get(name) or {}
        value, n = entry.get("value"), entry.get("n", 0)
        if value is None or n < config.lineage_min_cells:
            passed.append(f"{what}: not checked ({n} cells < qc.lineage_min_cells "
                          f"{config.lineage_min_cells} or marker not in the panel)")
            continue
        text = f"{what} {value:.3g} of {n}"
        if value < limit:
            failed.append(f"{text} < {limit:g} ({key}): marker calls inconsistent with "
                          "lineage (threshold too low on a sparse channel, or spill-over "
                          "between neighbouring cells)")
            worst = value if worst is None else min(worst, value)
        else:
            passed.append(f"{text} >= {limit:g} ({key})")
    return Flag(LINEAGE_FLAG, bool(failed), worst, threshold, "; ".join(failed or passed))


def write_marker_histograms(cells: pd.DataFrame, calls: dict[str, dict],
                            target: Path) -> dict[str, str]:
    """One PNG per marker: the histogram of the cells' values with the slide's threshold.

    Parameters
    ----------
    cells
        ``cells.parquet`` (the markers' columns).
    calls
        ``features.json`` ``phenotyping.markers``: per marker its ``column``, ``threshold``,
        ``transform`` (``none``, ``log1p``, ``asinh``), ``cofactor``, ``n_positive``.
    target
        The folder the PNGs go to (``qc/markers``).

    Returns
    -------
    dict
        Marker -> file name relative to ``qc/`` (markers whose column is missing are left out).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target.mkdir(parents=True, exist_ok=True)
    files = {}
    for marker, call in calls.items():
        column = call.get("column", "")
        if "|" in column or column not in cells:
            continue
        values = np.maximum(cells[column].to_numpy(dtype=np.float64), 0.0)
        values = values[np.isfinite(values)]
        transform, cofactor = call.get("transform", "none"), call.get("cofactor") or 1.0
        threshold = float(call["threshold"])

        def forward(x, transform=transform, cofactor=cofactor):
            if transform == "asinh":
                return np.arcsinh(np.asarray(x) / cofactor)
            if transform == "log1p":
                return np.log1p(np.asarray(x))
            return np.asarray(x)

        scaled = forward(values)
        zeros = int((values == 0).sum())
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        nonzero = scaled[values > 0]
        ax.hist(nonzero if nonzero.size else scaled, bins=50, color="#56b4e9")
        ax.axvline(float(forward(threshold)), color="#d55e00", lw=2,
                   label=f"threshold {threshold:.3g} ({call.get('n_positive', 0)} positive)")
        scale = {"asinh": f"arcsinh(value / {cofactor:g})", "log1p": "log1p(value)"}.get(
            transform, "value")
        ax.set_xlabel(f"{column}: {scale}")
        ax.set_ylabel("cells")
        ax.set_title(f"{marker}: {len(values)} cells, {zeros} with 0 (not shown)"
                     if nonzero.size and zeros else f"{marker}: {len(values)} cells",
                     fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        name = f"{MARKERS_DIR}/{_safe(marker)}.png"
        write_bytes(target / f"{_safe(marker)}.png", buffer.getvalue())
        files[marker] = name
    return files


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def marker_qc(cells_path: Path, classes_path: Path, record: dict, target: Path, *,
              config: QcSection) -> tuple[dict, Flag | None, dict[str, str]]:
    """The marker QC of one multiplex slide folder: lineage metrics, their flag, and the
    histograms written under ``target / "markers"``.

    Returns
    -------
    tuple
        ``metrics`` (see :func:`lineage_metrics`; empty without marker calls), the
        ``lineage`` flag (None without marker calls) and marker -> histogram file.
    """
    from pathology.io.metadata import safe_channel_name

    calls = (record.get("phenotyping") or {}).get("markers") or {}
    if not calls or not cells_path.is_file() or not classes_path.is_file():
        return {}, None, {}
    import pyarrow.parquet as pq

    classes = pd.read_parquet(classes_path)
    positive = {m: classes[f"{safe_channel_name(m)}_pos"].to_numpy(dtype=bool) for m in calls
                if f"{safe_channel_name(m)}_pos" in classes}
    metrics = lineage_metrics(positive, config=config)
    names = set(pq.read_schema(cells_path).names)
    columns = sorted({c.get("column", "") for c in calls.values()} & names)
    files = write_marker_histograms(pd.read_parquet(cells_path, columns=columns), calls,
                                    target / MARKERS_DIR)
    return metrics, lineage_flag(metrics, config=config), files
