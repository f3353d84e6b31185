"""``OUT/batch_report.csv``: one row per sample of every arm, read, merged and written.

Columns ``sample_id, status, reason, seconds``; ``status`` is ``done``, ``skipped`` or
``failed``; ``reason`` says why a sample failed or was skipped (written spreadsheet-safe, see
:mod:`hcccore.spreadsheet`); ``seconds`` has two decimals. Every arm merges its rows into the
one report: a sample run again replaces its own row, the rows of other samples (earlier runs,
other arms) stay. The report is rewritten atomically; callers hold the run lock
(:class:`hcccore.lock.RunLock`) while they read and write it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hcccore.atomic import write_text
from hcccore.spreadsheet import spreadsheet_safe, spreadsheet_text

BATCH_REPORT = "batch_report.csv"
BATCH_COLUMNS = ("sample_id", "status", "reason", "seconds")
STATUSES = ("done", "skipped", "failed")


class BatchReportError(ValueError):
    """``batch_report.csv`` breaks its contract; the message names the file and the line."""


@dataclass(frozen=True)
class BatchRow:
    """One line of the batch report.

    Attributes
    ----------
    sample_id
        The sample (manifest ``sample_id``).
    status
        ``done``, ``skipped`` or ``failed``.
    reason
        Why it failed or was skipped (empty when done without a note).
    seconds
        Wall time spent on the sample.
    """

    sample_id: str
    status: str
    reason: str
    seconds: float


def read_report(out: str | Path) -> dict[str, BatchRow]:
    """Rows of ``OUT/batch_report.csv`` keyed by sample id, in file order (empty if none).

    Parameters
    ----------
    out
        The run folder.

    Returns
    -------
    dict of str to BatchRow

    Raises
    ------
    BatchReportError
        The file lacks a column or a ``seconds`` cell is not a number (file and line named).

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> _ = write_report(out, {"a": BatchRow("a", "failed", "=bad", 1.234)})
    >>> (out / BATCH_REPORT).read_text().splitlines()[1]
    "a,failed,'=bad,1.23"
    >>> read_report(out)["a"]
    BatchRow(sample_id='a', status='failed', reason='=bad', seconds=1.23)
    """
    path = Path(out) / BATCH_REPORT
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in BATCH_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise BatchReportError(
                f"{path}: batch report lacks column(s) {', '.join(missing)}; expected "
                f"{','.join(BATCH_COLUMNS)} (move the file away to start a new report)")
        rows: dict[str, BatchRow] = {}
        for record in reader:
            text = (record["seconds"] or "").strip()
            try:
                seconds = float(text or 0)
            except ValueError:
                raise BatchReportError(
                    f"{path}: line {reader.line_num}: seconds {text!r} is not a number; "
                    "correct or delete that row") from None
            sample_id = record["sample_id"] or ""
            rows[sample_id] = BatchRow(sample_id, record["status"] or "",
                                       spreadsheet_text(record["reason"] or ""), seconds)
    return rows


def write_report(out: str | Path, rows: Mapping[str, BatchRow]) -> Path:
    """Rewrite ``OUT/batch_report.csv`` atomically with ``rows``, in their order.

    Parameters
    ----------
    out
        The run folder.
    rows
        Every row the report keeps (other arms' too), keyed by sample id.

    Returns
    -------
    pathlib.Path
        The report.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(BATCH_COLUMNS)
    for row in rows.values():
        writer.writerow([row.sample_id, row.status, spreadsheet_safe(row.reason),
                         f"{row.seconds:.2f}"])
    return write_text(Path(out) / BATCH_REPORT, buffer.getvalue())


def merge_report(out: str | Path, rows: Iterable[BatchRow]) -> dict[str, BatchRow]:
    """Merge a run's rows into ``OUT/batch_report.csv``.

    A sample in ``rows`` loses its earlier row; the rows of every other sample stay, in their
    order, and ``rows`` follow in their order.

    Parameters
    ----------
    out
        The run folder.
    rows
        This run's rows.

    Returns
    -------
    dict of str to BatchRow
        The whole report as written.

    Raises
    ------
    BatchReportError
        The existing report breaks its contract (see :func:`read_report`).

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> _ = merge_report(out, [BatchRow("a", "done", "", 1.0), BatchRow("b", "failed", "x", 1)])
    >>> list(merge_report(out, [BatchRow("b", "done", "", 2.0), BatchRow("c", "done", "", 1)]))
    ['a', 'b', 'c']
    """
    new = {row.sample_id: row for row in rows}
    merged = {sid: row for sid, row in read_report(out).items() if sid not in new}
    merged.update(new)
    write_report(out, merged)
    return merged


def report_frame(rows: Iterable[BatchRow]) -> pd.DataFrame:
    """Rows as a table with the report's columns (for an arm's result object).

    Examples
    --------
    >>> report_frame([BatchRow("a", "done", "", 0.5)]).columns.tolist()
    ['sample_id', 'status', 'reason', 'seconds']
    """
    return pd.DataFrame([(r.sample_id, r.status, r.reason, r.seconds) for r in rows],
                        columns=list(BATCH_COLUMNS))
