"""Plate-reader exports -> a long table ``well, analyte, value[, beads]``.

Two shapes are read from CSV (any of , ; tab) or Excel (every sheet):

- **grids** of 96 (A-H x 1-12) or 384 (A-P x 1-24) wells, anywhere in the sheet (reader
  exports put metadata above them); several grids may follow each other. The cell left of
  the column header ``1`` names the grid's analyte; when empty, the sheet name (Excel) or
  the caller's default analyte is used (generic sheet names such as 'Sheet1' are skipped).
- **long tables** with a ``well`` column and either ``value`` (+ optional ``analyte``) or, as
  Luminex exports, ``analyte``, ``mfi`` (or ``value``) and a bead ``count`` column.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from blood.errors import BloodInputError

PLATE_COLUMNS = ("well", "analyte", "value", "beads")
WELL = re.compile(r"^\s*([A-Pa-p])\s*0*([1-9][0-9]?)\s*$")
GRIDS = {12: "ABCDEFGH", 24: "ABCDEFGHIJKLMNOP"}
_VALUE_NAMES = ("value", "mfi", "od", "median", "net mfi", "signal")
_BEAD_NAMES = ("count", "beads", "bead count", "bead_count")


def normalise_well(well: object, *, path: str | Path = "") -> str:
    """Canonical well name: 'a01', 'A 1' and 'A1' all become 'A1'.

    Examples
    --------
    >>> normalise_well("b07")
    'B7'

    Raises
    ------
    BloodInputError
        Not a well name of a 96- or 384-well plate.
    """
    match = WELL.match(str(well))
    if not match or int(match.group(2)) > 24:
        raise BloodInputError(f"{path}: {well!r} is not a well name (A1 .. P24)")
    return f"{match.group(1).upper()}{int(match.group(2))}"


def _read_sheets(path: Path) -> dict[str, pd.DataFrame]:
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm", ".xls"):
        sheets = pd.read_excel(path, sheet_name=None, header=None, dtype=object)
        return {str(k): v for k, v in sheets.items()}
    if suffix not in (".csv", ".tsv", ".txt"):
        raise BloodInputError(f"{path}: unknown plate export format (expected .csv, .tsv, "
                              ".txt, .xlsx or .xls)")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    width = max((len(r) for r in rows), default=0)
    frame = pd.DataFrame([r + [""] * (width - len(r)) for r in rows], dtype=object)
    return {"": frame.replace({"": None})}


def _number(value: object) -> float:
    try:
        return float(str(value).replace(",", ".")) if value is not None else np.nan
    except ValueError:
        return np.nan


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _is_int(value: object, expected: int) -> bool:
    number = _number(value)
    return bool(np.isfinite(number) and number == expected)


def _grids(frame: pd.DataFrame, sheet: str, default: str, path: Path) -> list[pd.DataFrame]:
    cells = frame.to_numpy(dtype=object)
    found = []
    for r in range(cells.shape[0]):
        for c in range(cells.shape[1]):
            if not _is_int(cells[r, c], 1):
                continue
            n_cols = next((n for n in (24, 12) if c + n <= cells.shape[1] and all(
                _is_int(cells[r, c + k], k + 1) for k in range(n))), None)
            if n_cols is None or c == 0:
                continue
            letters = GRIDS[n_cols]
            below = [_text(cells[i, c - 1]).upper()
                     for i in range(r + 1, min(r + 1 + len(letters), cells.shape[0]))]
            if not below or below[0] != "A":
                continue
            if below != list(letters):
                raise BloodInputError(f"{path}: plate grid at row {r + 1} has row labels "
                                      f"{''.join(below)}, expected A-{letters[-1]}")
            generic = re.fullmatch(r"(sheet|tabelle|feuil)\s*\d*", sheet.lower())
            analyte = _text(cells[r, c - 1]) or ("" if generic else sheet) or default
            rows = []
            for i, letter in enumerate(letters):
                for k in range(n_cols):
                    rows.append({"well": f"{letter}{k + 1}", "analyte": analyte,
                                 "value": _number(cells[r + 1 + i, c + k]), "beads": np.nan})
            found.append(pd.DataFrame(rows, columns=list(PLATE_COLUMNS)))
    return found


def _long(frame: pd.DataFrame, default: str, path: Path) -> pd.DataFrame | None:
    cells = frame.to_numpy(dtype=object)
    for r in range(min(cells.shape[0], 50)):
        names = [_text(v).lower() for v in cells[r]]
        if "well" not in names:
            continue
        table = pd.DataFrame(cells[r + 1:], columns=names).dropna(how="all")
        value = next((n for n in _VALUE_NAMES if n in names), None)
        if value is None:
            raise BloodInputError(f"{path}: long plate table has a 'well' column but no value "
                                  f"column (one of {', '.join(_VALUE_NAMES)})")
        beads = next((n for n in _BEAD_NAMES if n in names), None)
        out = pd.DataFrame({
            "well": [normalise_well(w, path=path) for w in table["well"]],
            "analyte": table["analyte"].astype(str).str.strip() if "analyte" in names
            else default,
            "value": [_number(v) for v in table[value]],
            "beads": [_number(v) for v in table[beads]] if beads else np.nan})
        return out.loc[:, list(PLATE_COLUMNS)]
    return None


def read_plate(path: str | Path, *, default_analyte: str = "") -> pd.DataFrame:
    """Read a plate-reader export into ``well, analyte, value, beads`` (beads NaN if absent).

    Parameters
    ----------
    path
        CSV / TSV / TXT or Excel export.
    default_analyte
        Analyte of grids without a label (and long tables without an analyte column).

    Returns
    -------
    pandas.DataFrame
        One row per well and analyte.

    Raises
    ------
    BloodInputError
        Missing file, no grid or long table found, an unnamed analyte or a duplicate well.
    """
    path = Path(path)
    if not path.is_file():
        raise BloodInputError(f"{path}: plate export not found")
    try:
        sheets = _read_sheets(path)
    except BloodInputError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure names the file
        raise BloodInputError(f"{path}: cannot read plate export ({error})") from error
    parts: list[pd.DataFrame] = []
    for sheet, frame in sheets.items():
        long = _long(frame, default_analyte, path)
        parts.extend([long] if long is not None else _grids(frame, sheet, default_analyte,
                                                             path))
    if not parts:
        raise BloodInputError(f"{path}: no 96/384-well grid (rows A-H/A-P, columns 1-12/1-24) "
                              "and no long table with a 'well' column found")
    plate = pd.concat(parts, ignore_index=True)
    if (plate["analyte"] == "").any():
        raise BloodInputError(f"{path}: a plate grid has no analyte name: label the cell left "
                              "of its column header '1', or give the analyte (manifest stain)")
    duplicated = plate.duplicated(["well", "analyte"])
    if duplicated.any():
        first = plate.loc[duplicated].iloc[0]
        raise BloodInputError(f"{path}: well {first['well']} of analyte {first['analyte']!r} "
                              "appears twice")
    return plate
