"""Population statistics from a gated sample, and absolute counts from counting beads."""

from __future__ import annotations

from dataclasses import dataclass

import flowkit as fk
import numpy as np
import pandas as pd

from blood.errors import BloodInputError

POPULATION_COLUMNS = ("population", "parent", "count", "pct_parent", "pct_total")


@dataclass(frozen=True)
class BeadCounting:
    """Counting beads spiked into a known sample volume (single-platform absolute counts).

    Attributes
    ----------
    gate
        Population id of the bead gate.
    beads_per_test
        Beads added to the tube (lot-specific, from the bead certificate).
    sample_volume_ul
        Blood volume stained in the tube, in microlitres.
    """

    gate: str
    beads_per_test: float
    sample_volume_ul: float


def population_table(results: fk.GatingResults, *, total_events: int) -> pd.DataFrame:
    """One row per gate: population, parent, count, pct_parent, pct_total.

    Populations are named by gate id; when an id occurs at several places in the hierarchy
    (possible in Gating-ML and FlowJo files) its full path is used instead, joined by ``/``.

    Parameters
    ----------
    results
        FlowKit gating results.
    total_events
        Events in the file (denominator of pct_total).

    Returns
    -------
    pandas.DataFrame
        Rows in hierarchy order (parents before children).
    """
    report = results.report.sort_values(["level", "gate_path"], kind="stable")
    duplicated = report["gate_name"].duplicated(keep=False)
    rows = []
    for (_, row), dup in zip(report.iterrows(), duplicated, strict=True):
        path = [p for p in row["gate_path"] if p != "root"]
        name = "/".join([*path, row["gate_name"]]) if dup else row["gate_name"]
        parent = row["parent"] if row["parent"] is not None else "root"
        count = int(row["count"])
        rows.append({
            "population": name,
            "parent": parent,
            "count": count,
            "pct_parent": float(row["relative_percent"]),
            "pct_total": 100.0 * count / total_events if total_events else np.nan,
        })
    return pd.DataFrame(rows, columns=list(POPULATION_COLUMNS))


def add_absolute_counts(table: pd.DataFrame, beads: BeadCounting, *,
                        source: str) -> pd.DataFrame:
    """Add ``cells_per_ul``: count / bead events x beads per test / sample volume.

    Parameters
    ----------
    table
        Output of :func:`population_table`.
    beads
        Bead gate and certificate values.
    source
        The FCS file, for error messages.

    Raises
    ------
    BloodInputError
        The bead gate is missing, holds no events, or the certificate values are not positive.

    Examples
    --------
    >>> t = pd.DataFrame({"population": ["beads", "cd3"], "parent": ["root", "root"],
    ...                   "count": [1000, 5000], "pct_parent": [1.0, 5.0],
    ...                   "pct_total": [1.0, 5.0]})
    >>> add_absolute_counts(t, BeadCounting("beads", 50000, 50), source="x")["cells_per_ul"]
    0    1000.0
    1    5000.0
    Name: cells_per_ul, dtype: float64
    """
    if beads.beads_per_test <= 0 or beads.sample_volume_ul <= 0:
        raise BloodInputError(f"{source}: beads_per_test and sample_volume_ul must be > 0")
    match = table.loc[table["population"] == beads.gate, "count"]
    if match.empty:
        raise BloodInputError(f"{source}: bead gate {beads.gate!r} is not a population "
                              f"(populations: {table['population'].tolist()})")
    bead_events = int(match.iloc[0])
    if bead_events == 0:
        raise BloodInputError(f"{source}: bead gate {beads.gate!r} holds no events; "
                              "absolute counts are undefined")
    out = table.copy()
    out["cells_per_ul"] = (out["count"] / bead_events * beads.beads_per_test
                           / beads.sample_volume_ul)
    return out
