"""Luminex xPONENT CSV exports: every block, the instrument's own curves and results.

An xPONENT batch export (``.csv``, LX100/LX200, FLEXMAP 3D) is a header of ``key,value`` lines
followed by blocks, each opened by ``DataType:,<name>``: per-well blocks (``Median``,
``Net MFI``, ``Count``, ``Result``, ``Dilution Factor`` ...; rows ``"1(1,A1)",<sample>,...``),
per-analyte blocks (``Units``, ``Per Bead Count``, ``Analysis Types``, ``Analysis
Coefficients``, ``R^2``) and per-reagent blocks (``Standard Expected Concentration`` ...).

Quirks handled (seen in real exports): expected concentrations that lost their decimal point
(``215625`` for 215.625: repaired from the neighbouring levels of the series, each repair
recorded), results written as ``< 0.105`` / ``> 3000`` (kept as text with a flag, never as a
number), ``NaN`` results, a duplicated standard level.

The instrument's 5PL is ``y = A + (B - A) / (1 + (x / C) ** D) ** F`` on Net MFI (checked on
the shared export: its coefficients reproduce the standards' Net MFI), i.e.
:class:`~blood.elisa.curve.LogisticCurve` with d = A, a = B, c = C, b = D, g = F.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from blood.elisa.curve import LogisticCurve

WELL_BLOCKS = ("Median", "Net MFI", "Count", "Result")
_LOCATION = re.compile(r"^\s*(\d+)\s*\(\s*\d+\s*,\s*([A-Pa-p])\s*0*(\d+)\s*\)\s*$")


@dataclass(frozen=True)
class XponentExport:
    """A parsed xPONENT export.

    Attributes
    ----------
    path
        The file.
    header
        Header lines (``Program``, ``Build``, ``Batch``, ``ProtocolName`` ...) by key.
    analytes
        Analyte names in export order.
    wells
        Long table, one row per well and analyte: ``well, location, sample, kind``
        (standard | control | blank | sample), ``analyte, median, net_mfi, count, result``
        (the instrument's concentration; NaN when not a number), ``result_text``,
        ``result_flag`` ('' | '<' | '>' | 'nan'), ``dilution``, ``expected`` (standards'
        and controls' expected concentration, repaired).
    instrument
        Per analyte: ``type`` (e.g. Logistic 5P), ``A, B, C, D, F``, ``r2``, ``units``.
    repairs
        Human-readable notes of every repaired expected concentration.
    """

    path: Path
    header: dict[str, str]
    analytes: list[str]
    wells: pd.DataFrame
    instrument: pd.DataFrame
    repairs: list[str] = field(default_factory=list)

    def instrument_curve(self, analyte: str) -> LogisticCurve:
        """The instrument software's own fitted curve for ``analyte``."""
        row = self.instrument.loc[analyte]
        return LogisticCurve(a=float(row["B"]), b=float(row["D"]), c=float(row["C"]),
                             d=float(row["A"]), g=float(row["F"]), model="5pl", rss=np.nan)

    def well_table(self, analyte: str) -> pd.DataFrame:
        """Wells of one analyte as :func:`blood.elisa.quantify.quantify` takes them (Net MFI).

        Background wells are ``empty`` (Net MFI is already background-corrected by the
        instrument); controls are ``control``.
        """
        sub = self.wells[self.wells["analyte"] == analyte]
        kind = sub["kind"].replace({"blank": "empty"})
        return pd.DataFrame({
            "well": sub["well"].to_numpy(), "kind": kind.to_numpy(),
            "sample_id": np.where(sub["kind"] == "sample", sub["sample"], ""),
            "concentration": np.where(sub["kind"] == "standard", sub["expected"], np.nan),
            "dilution": sub["dilution"].to_numpy(), "value": sub["net_mfi"].to_numpy(),
            "count": sub["count"].to_numpy()})


def is_xponent(path: str | Path) -> bool:
    """True when a file's content is an xPONENT export, whatever its name.

    Either its first line is ``Program,xPONENT`` or it has a ``DataType:,Net MFI`` block
    (the block layout of xPONENT batch exports, also when the header was cut off).
    """
    try:
        with open(path, encoding="latin-1") as handle:
            first = handle.readline().replace('"', "").strip().lower()
            if first.startswith("program,xponent"):
                return True
            if first.startswith("pk\x03\x04"):  # a zip container (xlsx), not a CSV export
                return False
            for _, line in zip(range(20000), handle, strict=False):
                cells = [c.strip().lower() for c in line.replace('"', "").split(",")[:2]]
                if cells == ["datatype:", "net mfi"]:
                    return True
    except (OSError, UnicodeDecodeError):
        return False
    return False


def _blocks(rows: list[list[str]]) -> tuple[dict[str, str], dict[str, list[list[str]]]]:
    header: dict[str, str] = {}
    blocks: dict[str, list[list[str]]] = {}
    i = 0
    while i < len(rows) and not (rows[i] and rows[i][0].strip() == "DataType:"):
        if rows[i] and rows[i][0].strip() and len(rows[i]) > 1:
            header.setdefault(rows[i][0].strip(), rows[i][1].strip())
        i += 1
    while i < len(rows):
        row = rows[i]
        if row and row[0].strip() == "DataType:":
            name, body = row[1].strip(), []
            i += 1
            while i < len(rows) and not (rows[i] and rows[i][0].strip() == "DataType:"):
                if any(cell.strip() for cell in rows[i]):
                    body.append(rows[i])
                i += 1
            blocks[name] = body
        else:
            i += 1
    return header, blocks


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return np.nan


def _repair_series(values: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Put lost decimal points back: each level must lie between its neighbours.

    A value larger than the level above it (a dilution series falls monotonically) is
    divided by 10 until it fits below that level and above the level below, when known.
    """
    values = values.astype(float).copy()
    repaired = []
    for i in range(len(values)):
        upper = values[i - 1] if i > 0 else np.inf
        lower = values[i + 1] if i + 1 < len(values) else 0.0
        if not np.isfinite(values[i]) or values[i] < upper:
            continue
        v = values[i]
        while v >= upper:
            v /= 10.0
        # when the next level is itself broken, only "below the level above" is certain
        if v > lower or lower >= upper:
            values[i] = v
            repaired.append(i)
    return values, repaired


def read_xponent(path: str | Path) -> XponentExport:
    """Read an xPONENT CSV export: every well block, the standards and the instrument fits.

    Parameters
    ----------
    path
        The ``.csv`` export.

    Returns
    -------
    XponentExport

    Raises
    ------
    ValueError
        Not an xPONENT export, or a block it needs is missing (the message names the file
        and the block).
    """
    path = Path(path)
    with open(path, encoding="latin-1", newline="") as handle:
        rows = list(csv.reader(handle))
    header, blocks = _blocks(rows)
    if "xponent" not in header.get("Program", "").lower() and "Net MFI" not in blocks:
        raise ValueError(f"{path}: not an xPONENT export (first line should be "
                         "'Program,xPONENT', with 'DataType:' blocks below)")
    missing = [name for name in ("Net MFI", "Count", "Result") if name not in blocks]
    if missing:
        raise ValueError(f"{path}: xPONENT export lacks block(s) {missing}; export with "
                         "Median, Net MFI, Count and Result")
    columns = blocks["Net MFI"][0]
    analytes = [c.strip() for c in columns[2:] if c.strip() and c.strip() != "Total Events"]

    def well_block(name: str) -> pd.DataFrame:
        body = blocks.get(name)
        if not body:
            return pd.DataFrame()
        frame = pd.DataFrame([r + [""] * (len(body[0]) - len(r)) for r in body[1:]],
                             columns=[c.strip() for c in body[0]][:len(body[0])])
        return frame

    net = well_block("Net MFI")
    loc = net["Location"].str.extract(_LOCATION)
    if loc.isna().any().any():
        bad = net.loc[loc.isna().any(axis=1), "Location"].iloc[0]
        raise ValueError(f"{path}: block 'Net MFI': location {bad!r} is not like '1(1,A1)'")
    wells = (loc[1].str.upper() + loc[2]).to_numpy()
    index = loc[0].astype(int).to_numpy()
    samples = net["Sample"].str.strip().to_numpy()
    kind = np.select([pd.Series(samples).str.match(r"(?i)^standard\d+$"),
                      pd.Series(samples).str.match(r"(?i)^control\d+$"),
                      pd.Series(samples).str.match(r"(?i)^background\d*$")],
                     ["standard", "control", "blank"], "sample")
    dil = well_block("Dilution Factor")
    dilution = (dil.iloc[:, 2].map(_number).to_numpy() if len(dil) else np.ones(len(net)))
    dilution = np.where(np.isfinite(dilution), dilution, 1.0)

    expected: dict[str, dict[str, float]] = {}
    repairs: list[str] = []
    for block in ("Standard Expected Concentration", "Control Expected Concentration"):
        body = blocks.get(block, [])
        if not body:
            continue
        names = [c.strip() for c in body[0][1:]]
        reagents = [r[0].strip() for r in body[1:]]
        table = np.array([[_number(v) for v in (r[1:] + [""] * len(names))[:len(names)]]
                          for r in body[1:]])
        for j, analyte in enumerate(names):
            if not analyte:
                continue
            column = table[:, j]
            if block.startswith("Standard"):
                column, fixed = _repair_series(column)
                for i in fixed:
                    repairs.append(f"{analyte} {reagents[i]}: {table[i, j]:g} read as "
                                   f"{column[i]:g} (lost decimal point)")
            for reagent, value in zip(reagents, column, strict=True):
                expected.setdefault(reagent, {})[analyte] = value

    frames = {name: well_block(name) for name in WELL_BLOCKS}
    parts = []
    for analyte in analytes:
        result_text = frames["Result"][analyte].str.strip().to_numpy()
        flag = np.select([pd.Series(result_text).str.startswith("<"),
                          pd.Series(result_text).str.startswith(">"),
                          pd.Series(result_text).str.lower() == "nan"], ["<", ">", "nan"], "")
        parts.append(pd.DataFrame({
            "well": wells, "location": index, "sample": samples, "kind": kind,
            "analyte": analyte,
            "median": (frames["Median"][analyte].map(_number).to_numpy()
                       if len(frames["Median"]) else np.nan),
            "net_mfi": frames["Net MFI"][analyte].map(_number).to_numpy(),
            "count": frames["Count"][analyte].map(_number).to_numpy(),
            "result": np.where(flag == "", pd.Series(result_text).map(_number), np.nan),
            "result_text": result_text, "result_flag": flag, "dilution": dilution,
            "expected": [expected.get(s, {}).get(analyte, np.nan) for s in samples]}))
    long = pd.concat(parts, ignore_index=True)

    def per_analyte(block: str, key: str) -> dict[str, str]:
        for row in blocks.get(block, []):
            if row and row[0].strip().rstrip(":") == key:
                names = [c.strip() for c in blocks[block][0][1:]]
                return {n: v.strip() for n, v in zip(names, row[1:], strict=False) if n}
        return {}

    instrument = pd.DataFrame(index=pd.Index(analytes, name="analyte"))
    instrument["type"] = pd.Series(per_analyte("Analysis Types", "AnalysisType"))
    for letter in "ABCDEF":
        values = per_analyte("Analysis Coefficients", f"Coefficient {letter}")
        if values:
            instrument[letter] = pd.Series(values).map(_number)
    instrument["r2"] = pd.Series(per_analyte("R^2", "Value")).map(_number)
    instrument["units"] = pd.Series(per_analyte("Units", "Units"))
    return XponentExport(path, header, analytes, long, instrument, repairs)
