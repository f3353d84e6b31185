"""Write the merged table for statisticians: CSV, Parquet and Stata .dta with variable labels.

Every file is written to a temporary name in the same folder and renamed into place, so a
reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from hcccore.spreadsheet import spreadsheet_safe
from integration.table import FeatureTable

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask; files get the usual mode

STATA_LABEL_MAX = 80
FEATURES_STEM = "features"
LONG_STEM = "features_long"
DICTIONARY_FILE = "data_dictionary.csv"
MISSINGNESS_FILE = "missingness.csv"
EXCLUSIONS_FILE = "exclusions.csv"
SUMMARY_FILE = "integration.json"


def atomic_write(path: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_csv(frame: pd.DataFrame, path: Path, *, free_text: bool = False) -> Path:
    """Write ``frame`` (without its index) as CSV, atomically.

    ``free_text``: the table holds text people typed (reviewers' comments): its text cells
    are written so that no spreadsheet runs them as formulas
    (:func:`hcccore.spreadsheet.spreadsheet_safe`).
    """
    if free_text:
        frame = frame.map(spreadsheet_safe)
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))
    return path


def write_stata(frame: pd.DataFrame, path: Path, labels: dict[str, str]) -> Path:
    """Write a Stata 118 .dta file with variable labels (cut to 80 characters).

    Parameters
    ----------
    frame
        Columns with valid Stata names (``[a-z0-9_]``, <= 32 characters).
    path
        Target ``.dta`` file.
    labels
        ``column -> label``.

    Returns
    -------
    pathlib.Path
    """
    data = frame.copy()
    for column in data.columns:
        if data[column].dtype == object:
            data[column] = data[column].fillna("").astype(str)
        elif pd.api.types.is_integer_dtype(data[column]) or pd.api.types.is_bool_dtype(
                data[column]):
            data[column] = data[column].astype(float)
    cut = {c: str(labels.get(c, c))[:STATA_LABEL_MAX] for c in data.columns}
    atomic_write(path, lambda tmp: data.to_stata(tmp, write_index=False, version=118,
                                                 variable_labels=cut))
    return path


def write_table(frame: pd.DataFrame, folder: Path, stem: str, *,
                labels: dict[str, str] | None = None) -> list[Path]:
    """Write ``<stem>.csv``, ``<stem>.parquet`` and ``<stem>.dta`` into ``folder``."""
    folder = Path(folder)
    paths = [write_csv(frame, folder / f"{stem}.csv")]
    parquet = folder / f"{stem}.parquet"
    atomic_write(parquet, lambda tmp: frame.to_parquet(tmp, index=False))
    paths.append(parquet)
    paths.append(write_stata(frame, folder / f"{stem}.dta", labels or {}))
    return paths


def write_feature_table(table: FeatureTable, out: str | Path) -> list[Path]:
    """Write the merged table and its companions into the run folder.

    Parameters
    ----------
    table
        From :func:`integration.table.build_feature_table`.
    out
        The run folder.

    Returns
    -------
    list of pathlib.Path
        ``features.csv/.parquet/.dta``, ``features_long.csv/.parquet``,
        ``data_dictionary.csv``, ``missingness.csv``, ``exclusions.csv``, ``integration.json``.
    """
    out = Path(out)
    labels = dict(zip(table.dictionary["name"], table.dictionary["label"], strict=True))
    paths = write_table(table.wide, out, FEATURES_STEM, labels=labels)
    paths.append(write_csv(table.long, out / f"{LONG_STEM}.csv"))
    long_parquet = out / f"{LONG_STEM}.parquet"
    atomic_write(long_parquet, lambda tmp: table.long.to_parquet(tmp, index=False))
    paths.append(long_parquet)
    paths.append(write_csv(table.dictionary, out / DICTIONARY_FILE))
    paths.append(write_csv(table.missingness, out / MISSINGNESS_FILE))
    paths.append(write_csv(table.exclusions, out / EXCLUSIONS_FILE, free_text=True))
    summary = out / SUMMARY_FILE
    text = json.dumps({"counts": table.counts, "notes": table.notes}, indent=2)
    atomic_write(summary, lambda tmp: tmp.write_text(text))
    paths.append(summary)
    return paths
