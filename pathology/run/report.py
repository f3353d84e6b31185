"""Rows of the slide arm's batch report (``OUT/batch_report.csv``, :mod:`hcccore.batch_report`)."""

from __future__ import annotations

from dataclasses import dataclass

from hcccore.batch_report import BatchRow as ReportRow


@dataclass(frozen=True)
class BatchRow(ReportRow):
    """One line of the batch report (:class:`hcccore.batch_report.BatchRow`), with the nuclei
    a done slide gave (logged, not written to the report)."""

    cells: int | None = None
