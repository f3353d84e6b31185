"""The clinical table (``clinical.csv``): one row per patient, validated against the contract.

Required columns: ``patient_id, os_time, os_event, pfs_time, pfs_event, best_response``. Times
are in months from the start of atezolizumab + bevacizumab; events are 1 (event) or 0
(censored); best response is RECIST CR, PR, SD, PD or NE. Known covariates are typed and
range-checked (see :data:`COLUMNS`); any other column is kept, as a number when every value
parses as one and as a category otherwise. Columns ending in ``_date`` must be ISO dates.
Every error names the file, the line (header = line 1) and the column.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

Kind = Literal["id", "number", "integer", "binary", "category", "date"]
RESPONSES = ("CR", "PR", "SD", "PD", "NE")
MISSING = frozenset({"", "na", "nan", "n/a", ".", "none", "null"})
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
REQUIRED = ("patient_id", "os_time", "os_event", "pfs_time", "pfs_event", "best_response")


class ClinicalError(ValueError):
    """The clinical table breaks the contract; the message names file, line and column."""


@dataclass(frozen=True)
class ColumnSpec:
    """Type, label, unit and allowed values of one clinical column."""

    kind: Kind
    label: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    levels: tuple[str, ...] = ()
    required: bool = False


COLUMNS: dict[str, ColumnSpec] = {
    "patient_id": ColumnSpec("id", "Patient identifier", required=True),
    "os_time": ColumnSpec("number", "Overall survival time from treatment start", "months",
                          0, None, required=True),
    "os_event": ColumnSpec("binary", "Death (1) or censored (0)", "0/1", required=True),
    "pfs_time": ColumnSpec("number", "Progression-free survival time from treatment start",
                           "months", 0, None, required=True),
    "pfs_event": ColumnSpec("binary", "Progression or death (1) or censored (0)", "0/1",
                            required=True),
    "best_response": ColumnSpec("category", "Best overall response (RECIST 1.1)", "category",
                                levels=RESPONSES, required=True),
    "age": ColumnSpec("number", "Age at treatment start", "years", 0, 120),
    "sex": ColumnSpec("category", "Sex", "category", levels=("M", "F")),
    "etiology": ColumnSpec("category", "Liver disease etiology (e.g. HBV, HCV, alcohol, "
                           "MASLD, other)", "category"),
    "bclc": ColumnSpec("category", "BCLC stage", "category", levels=("0", "A", "B", "C", "D")),
    "child_pugh": ColumnSpec("category", "Child-Pugh class", "category", levels=("A", "B", "C")),
    "ecog": ColumnSpec("integer", "ECOG performance status", "0-4", 0, 4),
    "mvi": ColumnSpec("binary", "Macrovascular invasion", "0/1"),
    "ehs": ColumnSpec("binary", "Extrahepatic spread", "0/1"),
    "afp": ColumnSpec("number", "Serum AFP at baseline", "ng/mL", 0, None),
    "afp_w6": ColumnSpec("number", "Serum AFP at week 6 of treatment", "ng/mL", 0, None),
    "crp": ColumnSpec("number", "Serum CRP at baseline", "mg/dL", 0, None),
    "albumin": ColumnSpec("number", "Serum albumin at baseline", "g/L", 0, 80),
    "bilirubin": ColumnSpec("number", "Serum total bilirubin at baseline", "umol/L", 0, None),
    "neutrophils": ColumnSpec("number", "Blood neutrophil count at baseline", "10^9/L", 0,
                              None),
    "lymphocytes": ColumnSpec("number", "Blood lymphocyte count at baseline", "10^9/L", 0,
                              None),
}


@dataclass
class ClinicalTable:
    """A validated clinical table.

    Attributes
    ----------
    data
        One row per patient, index ``patient_id`` (str), typed columns: float for numbers,
        ``Int64`` for binary and integer columns, str (or missing) for categories,
        ``datetime64`` for dates.
    specs
        The spec of every column of ``data`` (inferred for columns not in :data:`COLUMNS`).
    path
        The file read.
    derived
        Columns derived by :func:`integration.scores.derive_scores`, with their config keys.
    """

    data: pd.DataFrame
    specs: dict[str, ColumnSpec] = field(default_factory=dict)
    path: Path | None = None
    derived: dict[str, str] = field(default_factory=dict)

    def dictionary(self) -> pd.DataFrame:
        """Data-dictionary rows (name, label, unit, modality, method, config_keys, source)."""
        source = self.path.name if self.path is not None else "clinical table"
        rows = [{"name": name, "label": spec.label, "unit": spec.unit, "modality": "clinical",
                 "method": ("derived score (integration.scores)" if name in self.derived
                            else "clinical table"),
                 "config_keys": self.derived.get(name, ""), "source": source}
                for name, spec in self.specs.items() if name != "patient_id"]
        return pd.DataFrame(rows)


def read_clinical(path: str | Path) -> ClinicalTable:
    """Read and validate a clinical table.

    Parameters
    ----------
    path
        The ``clinical.csv`` file.

    Returns
    -------
    ClinicalTable

    Raises
    ------
    ClinicalError
        Missing file or required column, bad column name, duplicate or empty ``patient_id``,
        missing or negative time, event outside 0/1, best response outside CR/PR/SD/PD/NE,
        a value of the wrong type or out of range, an unparseable date, PFS longer than OS.
    """
    path = Path(path)
    if not path.is_file():
        raise ClinicalError(f"{path}: clinical table not found")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.columns = [str(c).strip() for c in raw.columns]
    return validate_clinical(raw, source=path)


def validate_clinical(raw: pd.DataFrame, *, source: str | Path = "clinical table"
                      ) -> ClinicalTable:
    """Validate a clinical table given as strings (as read by :func:`read_clinical`).

    Parameters
    ----------
    raw
        One row per patient, every cell a string; row ``i`` is file line ``i + 2``.
    source
        Named in error messages.

    Returns
    -------
    ClinicalTable
    """
    where_file = str(source)
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise ClinicalError(f"{where_file}: missing column(s) {', '.join(missing)}; the "
                            f"clinical table needs {', '.join(REQUIRED)}")
    for name in raw.columns:
        if not NAME_PATTERN.match(name):
            raise ClinicalError(f"{where_file}: column name '{name}' is not lowercase "
                                "[a-z0-9_], starting with a letter, at most 32 characters")
    if raw.columns.duplicated().any():
        dup = raw.columns[raw.columns.duplicated()][0]
        raise ClinicalError(f"{where_file}: column '{dup}' appears twice")
    text = raw.astype(str).apply(lambda col: col.str.strip())
    specs = {name: COLUMNS.get(name) or _infer_spec(name, text[name]) for name in text.columns}
    columns: dict[str, list] = {}
    for name, spec in specs.items():
        columns[name] = [_parse(value, spec, name, f"{where_file}, line {i + 2}")
                         for i, value in enumerate(text[name])]
    data = pd.DataFrame(columns)
    _check_ids(data, where_file)
    _check_outcomes(data, where_file)
    for name, spec in specs.items():
        if spec.kind in ("binary", "integer"):
            data[name] = data[name].astype("Int64")
        elif spec.kind == "number":
            data[name] = data[name].astype(float)
        elif spec.kind == "date":
            data[name] = pd.to_datetime(data[name])
    data = data.set_index("patient_id")
    return ClinicalTable(data, specs, source if isinstance(source, Path) else None)


def _infer_spec(name: str, values: pd.Series) -> ColumnSpec:
    if name.endswith("_date"):
        return ColumnSpec("date", name.replace("_", " "), "date (YYYY-MM-DD)")
    present = [v for v in values if v.lower() not in MISSING]
    if present and all(_is_number(v) for v in present):
        return ColumnSpec("number", name.replace("_", " "))
    return ColumnSpec("category", name.replace("_", " "), "category")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _parse(value: str, spec: ColumnSpec, name: str, where: str) -> object:
    if value.lower() in MISSING:
        if spec.required:
            fix = " (use NE when not evaluable)" if name == "best_response" else ""
            raise ClinicalError(f"{where}, column '{name}': value is missing{fix}")
        return None
    if spec.kind == "id":
        return value
    if spec.kind == "date":
        try:
            return pd.Timestamp(pd.to_datetime(value, format="%Y-%m-%d"))
        except (ValueError, TypeError):
            raise ClinicalError(f"{where}, column '{name}': '{value}' is not a date; write "
                                "YYYY-MM-DD") from None
    if spec.kind == "category":
        if name == "child_pugh" and re.fullmatch(r"[ABCabc]\d{1,2}", value):
            value = value[0]  # A5/A6 -> A
        if spec.levels:
            match = {level.upper(): level for level in spec.levels}.get(value.upper())
            if match is None:
                raise ClinicalError(f"{where}, column '{name}': '{value}' is not one of "
                                    f"{', '.join(spec.levels)}")
            return match
        return value
    if not _is_number(value):
        raise ClinicalError(f"{where}, column '{name}': '{value}' is not a number")
    number = float(value)
    if spec.kind == "binary":
        if number not in (0.0, 1.0):
            raise ClinicalError(f"{where}, column '{name}': '{value}' must be 0 or 1"
                                + (" (1 = event, 0 = censored)" if name.endswith("_event")
                                   else ""))
        return int(number)
    if spec.kind == "integer" and number != int(number):
        raise ClinicalError(f"{where}, column '{name}': '{value}' is not a whole number")
    if spec.low is not None and number < spec.low:
        word = "negative" if spec.low == 0 else f"below {spec.low:g}"
        raise ClinicalError(f"{where}, column '{name}': {value} is {word}"
                            + (f" ({spec.unit})" if spec.unit else ""))
    if spec.high is not None and number > spec.high:
        raise ClinicalError(f"{where}, column '{name}': {value} is above {spec.high:g}"
                            + (f" ({spec.unit})" if spec.unit else ""))
    return number


def _check_ids(data: pd.DataFrame, where_file: str) -> None:
    seen: dict[str, int] = {}
    for i, patient in enumerate(data["patient_id"]):
        line = i + 2
        if patient in seen:
            raise ClinicalError(f"{where_file}, line {line}, column 'patient_id': "
                                f"'{patient}' duplicates line {seen[patient]}")
        seen[patient] = line


def _check_outcomes(data: pd.DataFrame, where_file: str) -> None:
    for i, row in enumerate(data.itertuples(index=False)):
        if row.pfs_time > row.os_time + 1e-9:
            raise ClinicalError(f"{where_file}, line {i + 2}, column 'pfs_time': "
                                f"{row.pfs_time:g} is longer than os_time {row.os_time:g}")
        if row.os_event == 1 and row.pfs_event == 0 and row.pfs_time == row.os_time:
            raise ClinicalError(f"{where_file}, line {i + 2}, column 'pfs_event': 0 although "
                                "the patient died at pfs_time (death is a PFS event)")
