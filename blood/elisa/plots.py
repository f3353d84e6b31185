"""QC plots: one standard-curve PNG per plate and analyte, one plate map per multiplex plate."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from blood.elisa.curve import LogisticCurve
from blood.elisa.quantify import Quantified
from blood.outputs import write_png


def plot_curve(result: Quantified, path: str | Path, *, title: str, unit: str,
               reference: LogisticCurve | None = None, reference_label: str = "reference",
               ylabel: str = "blank-corrected response",
               low_bead_samples: Iterable[str] = ()) -> Path:
    """Plot standards, the fitted curve, LLOQ/ULOQ and every sample's response.

    Standards inside the working range are filled, those fitted but outside it hollow,
    those excluded for recovery red crosses. Samples inside the working range sit at their
    in-well concentration; samples below the LLOQ / above the ULOQ are drawn at the limit
    (they have no concentration: nothing is extrapolated). Samples with too few beads are
    circled in red.

    Parameters
    ----------
    result
        Output of :func:`blood.elisa.quantify.quantify`.
    path
        PNG file (written atomically).
    title
        Figure title (plate and analyte).
    unit
        Concentration unit for the x axis.
    reference
        Another curve to draw for comparison (e.g. the instrument software's own fit).
    reference_label
        Legend label of ``reference``.
    ylabel
        Response axis label.
    low_bead_samples
        Sample ids with a low-bead well.

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4.2))
    std = result.standards
    positive = std["concentration"] > 0
    # hollow: in the fit but outside the working range (recovery outside the window too)
    fitted = std["in_fit"] if "in_fit" in std.columns else std["used"]
    used = fitted.to_numpy(dtype=bool) & positive.to_numpy()
    inside = (std["in_range"].to_numpy(dtype=bool) if "in_range" in std.columns
              else used) & used
    axes.scatter(std.loc[inside, "concentration"], std.loc[inside, "response"],
                 color="black", label="standards (working range)", zorder=3)
    if (used & ~inside).any():
        axes.scatter(std.loc[used & ~inside, "concentration"],
                     std.loc[used & ~inside, "response"], facecolors="none",
                     edgecolors="black", label="standards (fitted, outside range)", zorder=3)
    excluded = ~fitted.to_numpy(dtype=bool) & positive.to_numpy()
    if excluded.any():
        axes.scatter(std.loc[excluded, "concentration"], std.loc[excluded, "response"],
                     marker="x", color="red", label="excluded (recovery)", zorder=3)
    low = std.loc[positive, "concentration"].min()
    high = std.loc[positive, "concentration"].max()
    x = np.geomspace(low / 3, high * 3, 200)
    axes.plot(x, result.curve.response(x), color="tab:blue",
              label=f"{result.curve.model.upper()} fit")
    if reference is not None:
        axes.plot(x, reference.response(x), color="tab:green", linestyle="--", linewidth=1,
                  label=reference_label)
    for limit, name in ((result.lloq, "LLOQ"), (result.uloq, "ULOQ")):
        axes.axvline(limit, color="grey", linestyle=":", linewidth=1)
        axes.text(limit, axes.get_ylim()[1], name, fontsize=7, ha="center", va="bottom")
    samples = result.samples
    flags = samples["flag"]
    where = pd.Series(np.nan, index=samples.index)
    where[flags == ""] = samples["concentration"] / samples["dilution"]
    where[flags == "<LLOQ"] = result.lloq
    where[flags == ">ULOQ"] = result.uloq
    for flag, marker, label in (("", "^", "samples (in well)"),
                                ("<LLOQ", "v", "samples <LLOQ (at LLOQ)"),
                                (">ULOQ", "^", "samples >ULOQ (at ULOQ)")):
        chosen = flags == flag
        if chosen.any():
            filled = flag == ""
            axes.scatter(where[chosen], samples.loc[chosen, "response"], marker=marker,
                         color="tab:orange" if filled else "none",
                         edgecolors="tab:orange", label=label, zorder=4)
    low_beads = samples["sample_id"].isin(set(low_bead_samples))
    if low_beads.any():
        axes.scatter(where[low_beads], samples.loc[low_beads, "response"], s=120,
                     facecolors="none", edgecolors="red", label="low bead count", zorder=5)
    axes.set_xscale("log")
    axes.set_xlabel(f"concentration ({unit})")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=6, loc="best")
    figure.tight_layout()
    return write_png(figure, path)


_WELL = re.compile(r"^([A-P])(\d{1,2})$")


def plot_plate(wells: pd.DataFrame, path: str | Path, *, title: str, min_beads: int) -> Path:
    """Plate map of a multiplex plate: bead counts and out-of-range wells.

    Left: the lowest bead count of each well over its analytes, wells under ``min_beads``
    crossed in red. Right: per well, how many analytes fall below the LLOQ / above the
    ULOQ (written as ``below/above``); standards are marked S, blanks B, controls C.

    Parameters
    ----------
    wells
        One row per well and analyte with ``well`` (e.g. 'A1'), ``kind``, ``count`` (beads)
        and ``flag`` ('' | '<LLOQ' | '>ULOQ').
    path
        PNG file (written atomically).
    title
        Figure title.
    min_beads
        The low-bead threshold.

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = wells["well"].str.extract(_WELL)
    row = parts[0].map(lambda letter: ord(letter) - ord("A"))
    col = parts[1].astype(int) - 1
    n_rows, n_cols = (16, 24) if (row.max() >= 8 or col.max() >= 12) else (8, 12)
    frame = wells.assign(row=row, col=col)
    per_well = frame.groupby(["row", "col"]).agg(
        beads=("count", "min"), below=("flag", lambda f: int((f == "<LLOQ").sum())),
        above=("flag", lambda f: int((f == ">ULOQ").sum())), kind=("kind", "first"),
        n=("flag", "size"))
    beads = np.full((n_rows, n_cols), np.nan)
    out = np.full((n_rows, n_cols), np.nan)
    for (r, c), values in per_well.iterrows():
        beads[r, c] = values["beads"]
        out[r, c] = (values["below"] + values["above"]) / values["n"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    image = left.imshow(beads, cmap="viridis", vmin=0,
                        vmax=max(2 * min_beads, float(np.nanmax(beads)) if np.isfinite(
                            beads).any() else 1.0))
    figure.colorbar(image, ax=left, shrink=0.8, label="lowest bead count over analytes")
    image = right.imshow(out, cmap="Oranges", vmin=0, vmax=1)
    figure.colorbar(image, ax=right, shrink=0.8, label="fraction of analytes out of range")
    marks = {"standard": "S", "blank": "B", "control": "C"}
    for (r, c), values in per_well.iterrows():
        if values["beads"] < min_beads:
            left.plot(c, r, marker="x", color="red", markersize=12, mew=2)
        left.text(c, r, f"{values['beads']:.0f}", ha="center", va="center", fontsize=6,
                  color="white")
        label = marks.get(values["kind"], "")
        if values["below"] or values["above"]:
            label = f"{label} {values['below']}/{values['above']}".strip()
        right.text(c, r, label, ha="center", va="center", fontsize=6)
    for axes, name in ((left, f"bead counts (x: < {min_beads})"),
                       (right, "analytes <LLOQ/>ULOQ per well")):
        axes.set_xticks(range(n_cols), [str(c + 1) for c in range(n_cols)], fontsize=6)
        axes.set_yticks(range(n_rows), [chr(ord("A") + r) for r in range(n_rows)], fontsize=6)
        axes.set_title(name, fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return write_png(figure, path)
