"""Plate layouts: what each well holds (standard, blank, sample, control, empty).

A layout is a CSV with one row per used well::

    well,kind,sample_id,concentration,dilution
    A1,standard,,5000,1
    A3,blank,,,
    C1,sample,P001_BL,,2

``concentration`` (standards, in the reporting unit) applies to every analyte unless a column
``concentration_<analyte>`` exists for that analyte (multiplex standards differ per analyte).
Replicates are wells sharing kind, sample_id / concentration and dilution. Wells not listed
are unused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from blood.elisa.plate import normalise_well
from blood.errors import BloodInputError

KINDS = ("standard", "blank", "sample", "control", "empty")
LAYOUT_SUFFIX = ".layout.csv"


def layout_beside(plate: str | Path) -> Path:
    """The layout file beside a plate export: ``<name>.layout.csv`` for ``<name>.<ext>``."""
    plate = Path(plate)
    return plate.with_name(plate.stem + LAYOUT_SUFFIX)


def read_layout(path: str | Path) -> pd.DataFrame:
    """Read and check a plate layout CSV.

    Returns
    -------
    pandas.DataFrame
        Columns ``well, kind, sample_id, concentration, dilution`` (+ any
        ``concentration_<analyte>``); dilution defaults to 1.

    Raises
    ------
    BloodInputError
        Missing file or column, unknown kind, duplicate well, a standard without a positive
        concentration or a sample without a sample_id, naming the file and the well.
    """
    path = Path(path)
    if not path.is_file():
        raise BloodInputError(f"{path}: plate layout not found")
    table = pd.read_csv(path, dtype={"well": str, "kind": str, "sample_id": str})
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("well", "kind") if c not in table.columns]
    if missing:
        raise BloodInputError(f"{path}: layout lacks column(s) {missing} (expected well, kind, "
                              "sample_id, concentration, dilution)")
    for column, default in (("sample_id", ""), ("concentration", np.nan), ("dilution", 1.0)):
        if column not in table.columns:
            table[column] = default
    table["well"] = [normalise_well(w, path=path) for w in table["well"]]
    table["kind"] = table["kind"].str.strip().str.lower()
    table["sample_id"] = table["sample_id"].fillna("").astype(str).str.strip()
    table["dilution"] = pd.to_numeric(table["dilution"], errors="coerce").fillna(1.0)
    bad = table.loc[~table["kind"].isin(KINDS)]
    if len(bad):
        raise BloodInputError(f"{path}: well {bad.iloc[0]['well']} has kind "
                              f"{bad.iloc[0]['kind']!r}; expected one of {', '.join(KINDS)}")
    dup = table.loc[table["well"].duplicated()]
    if len(dup):
        raise BloodInputError(f"{path}: well {dup.iloc[0]['well']} is listed twice")
    conc_columns = [c for c in table.columns if c.startswith("concentration")]
    for column in conc_columns:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    standards = table["kind"] == "standard"
    if conc_columns == ["concentration"] and (
            ~(table.loc[standards, "concentration"] > 0)).any():
        well = table.loc[standards & ~(table["concentration"] > 0), "well"].iloc[0]
        raise BloodInputError(f"{path}: standard well {well} needs a concentration > 0")
    if (table["dilution"] <= 0).any():
        well = table.loc[table["dilution"] <= 0, "well"].iloc[0]
        raise BloodInputError(f"{path}: well {well} has a dilution <= 0")
    empty_id = (table["kind"] == "sample") & (table["sample_id"] == "")
    if empty_id.any():
        raise BloodInputError(f"{path}: sample well {table.loc[empty_id, 'well'].iloc[0]} has "
                              "no sample_id")
    return table


def wells_for(layout: pd.DataFrame, plate: pd.DataFrame, analyte: str, *,
              path: str | Path = "") -> pd.DataFrame:
    """Join one analyte's plate values to the layout: the well table of :func:`quantify`.

    Raises
    ------
    BloodInputError
        A layout well has no value on the plate, or a standard has no concentration for
        this analyte.
    """
    values = plate.loc[plate["analyte"] == analyte].set_index("well")
    used = layout.loc[layout["kind"].isin(("standard", "blank", "sample"))].copy()
    absent = sorted(set(used["well"]) - set(values.index))
    if absent:
        raise BloodInputError(f"{path}: analyte {analyte!r}: layout well(s) {absent[:5]} have "
                              "no value in the plate export")
    specific = f"concentration_{analyte.lower()}"
    if specific in used.columns:
        used["concentration"] = used[specific]
    std = used["kind"] == "standard"
    if (~(used.loc[std, "concentration"] > 0)).any():
        raise BloodInputError(f"{path}: analyte {analyte!r}: standard(s) without a "
                              f"concentration > 0 (column {specific} or concentration)")
    used["value"] = values.loc[used["well"], "value"].to_numpy()
    used["beads"] = values.loc[used["well"], "beads"].to_numpy()
    return used[["well", "kind", "sample_id", "concentration", "dilution", "value", "beads"]]
