"""Atomic writes and the shared ``batch_report.csv`` merge."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask; files get the usual mode

BATCH_REPORT = "batch_report.csv"
BATCH_COLUMNS = ("sample_id", "status", "reason", "seconds")


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file through a temporary sibling and ``os.replace`` it into place.

    Parameters
    ----------
    path
        Final file.
    write
        Called with the temporary path; must write the whole file there.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temp))
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV atomically (no index)."""
    return write_atomic(path, lambda temp: frame.to_csv(temp, index=False))


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Write JSON atomically (indented, keys sorted)."""
    return write_atomic(path, lambda temp: temp.write_text(
        json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))


def merge_batch_report(out: str | Path, rows: pd.DataFrame) -> Path:
    """Merge rows into ``OUT/batch_report.csv``, replacing rows with the same sample_id.

    Rows of other samples (other arms) are kept in their order; new rows are appended.

    Raises
    ------
    ValueError
        The existing report lacks the expected columns.
    """
    path = Path(out) / BATCH_REPORT
    rows = rows.loc[:, list(BATCH_COLUMNS)]
    if path.is_file():
        existing = pd.read_csv(path, dtype={"sample_id": str, "status": str, "reason": str},
                               keep_default_na=False)
        missing = set(BATCH_COLUMNS) - set(existing.columns)
        if missing:
            raise ValueError(f"{path}: existing batch report lacks column(s) "
                             f"{', '.join(sorted(missing))}; expected {', '.join(BATCH_COLUMNS)}")
        existing = existing[~existing["sample_id"].isin(set(rows["sample_id"]))]
        rows = pd.concat([existing.loc[:, list(BATCH_COLUMNS)], rows], ignore_index=True)
    return write_csv(rows, path)
