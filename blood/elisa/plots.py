"""Standard-curve plots: one PNG per plate and analyte."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blood.elisa.quantify import Quantified
from blood.outputs import write_png


def plot_curve(result: Quantified, path: str | Path, *, title: str, unit: str) -> Path:
    """Plot standards (used / excluded), the fitted curve, LLOQ/ULOQ and sample responses.

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

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4))
    std = result.standards
    used = std["used"].to_numpy(dtype=bool)
    axes.scatter(std.loc[used, "concentration"], std.loc[used, "response"], color="black",
                 label="standards")
    if (~used).any():
        axes.scatter(std.loc[~used, "concentration"], std.loc[~used, "response"], marker="x",
                     color="red", label="excluded (recovery)")
    x = np.geomspace(std["concentration"].min() / 3, std["concentration"].max() * 3, 200)
    axes.plot(x, result.curve.response(x), color="tab:blue",
              label=f"{result.curve.model.upper()} fit")
    for limit, name in ((result.lloq, "LLOQ"), (result.uloq, "ULOQ")):
        axes.axvline(limit, color="grey", linestyle=":", linewidth=1)
        axes.text(limit, axes.get_ylim()[1], name, fontsize=7, ha="center", va="bottom")
    samples = result.samples
    in_range = samples["flag"] == ""
    if in_range.any():
        axes.scatter(samples.loc[in_range, "concentration"] / samples.loc[in_range, "dilution"],
                     samples.loc[in_range, "response"], marker="^", color="tab:orange",
                     label="samples (in well)")
    axes.set_xscale("log")
    axes.set_xlabel(f"concentration ({unit})")
    axes.set_ylabel("blank-corrected response")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return write_png(figure, path)
