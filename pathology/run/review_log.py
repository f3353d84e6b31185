"""The pathologist's review log ``OUT/qc/review.csv``: its one format and vocabulary.

The review app writes it (:mod:`pathology.run.decisions`), the QC summary shows it and the
study table reads it (:mod:`integration.review`); all of them take the file name, the columns,
the decisions and the reading rule from here, so the writer and the readers cannot disagree.

Columns ``sample_id, decision, reviewer, time, comment``; ``decision`` is :data:`APPROVED` or
:data:`REJECTED`; ``time`` is an ISO 8601 date-time. A slide may be reviewed more than once:
the latest decision (by time, then by file order) stands. A slide without any row is
:data:`NOT_REVIEWED`, which downstream tables flag (never read as approved).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hcccore.spreadsheet import spreadsheet_text
from pathology.io.folder import QC_DIR
from pathology.run.layout import REVIEW_LOG

REVIEW_FILE = Path(QC_DIR) / REVIEW_LOG
REVIEW_COLUMNS = ("sample_id", "decision", "reviewer", "time", "comment")
APPROVED = "approved"
REJECTED = "rejected"
DECISIONS = (APPROVED, REJECTED)
NOT_REVIEWED = "not_reviewed"
REVIEW_STATES = (*DECISIONS, NOT_REVIEWED)


class ReviewError(ValueError):
    """The review log breaks its contract; the message names file, line and column."""


@dataclass(frozen=True)
class Decision:
    """One decision of the review log (the standing one when returned by :func:`read_review`).

    Attributes
    ----------
    sample_id
        The slide.
    decision
        :data:`APPROVED` or :data:`REJECTED`.
    reviewer
        Who decided.
    time
        When (ISO 8601, as written).
    comment
        Why (required for a rejection).
    """

    sample_id: str
    decision: str
    reviewer: str
    time: str
    comment: str

    def reason(self) -> str:
        """A one-line exclusion reason (for rejected slides).

        Examples
        --------
        >>> Decision("s1", REJECTED, "Dr A", "2026-01-02T09:00", "fold").reason()
        'rejected at QC review by Dr A (2026-01-02T09:00): fold'
        """
        text = f"{self.decision} at QC review by {self.reviewer or 'unknown'} ({self.time})"
        return f"{text}: {self.comment}" if self.comment else text


def review_path(out: str | Path) -> Path:
    """The review log of a run folder, ``OUT/qc/review.csv``."""
    return Path(out) / REVIEW_FILE


def _when(text: str, path: Path, line: int) -> datetime:
    try:
        text = text.strip()
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ReviewError(f"{path}, line {line}, column 'time': '{text}' is not an ISO "
                          "date-time") from None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def read_log(path: str | Path) -> list[Decision]:
    """Every row of a review log, validated, in file order (empty when there is no file).

    Raises
    ------
    ReviewError
        Missing column, empty ``sample_id``, a decision outside :data:`DECISIONS` or a time
        that is not ISO 8601; the message names the line and the column.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REVIEW_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ReviewError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                              f"{', '.join(REVIEW_COLUMNS)}")
        for line, record in enumerate(reader, start=2):
            values = {k: spreadsheet_text((record.get(k) or "").strip())
                      for k in REVIEW_COLUMNS}
            if not values["sample_id"]:
                raise ReviewError(f"{path}, line {line}, column 'sample_id': empty")
            if values["decision"] not in DECISIONS:
                raise ReviewError(f"{path}, line {line}, column 'decision': "
                                  f"'{values['decision']}' is not one of {', '.join(DECISIONS)}")
            _when(values["time"], path, line)
            rows.append(Decision(**values))
    return rows


def read_review(path: str | Path) -> dict[str, Decision]:
    """The standing decision of every reviewed slide: the latest by time, then file order.

    Parameters
    ----------
    path
        ``OUT/qc/review.csv`` (see :func:`review_path`); a missing file means no decisions.

    Returns
    -------
    dict
        ``sample_id -> Decision``.

    Raises
    ------
    ReviewError
        See :func:`read_log`.
    """
    latest: dict[str, tuple[datetime, int, Decision]] = {}
    for index, row in enumerate(read_log(path)):
        key = (_when(row.time, Path(path), index + 2), index)
        if row.sample_id not in latest or key >= latest[row.sample_id][:2]:
            latest[row.sample_id] = (*key, row)
    return {sample: item[2] for sample, item in latest.items()}


def review_state(decision: Decision | None) -> str:
    """:data:`APPROVED`, :data:`REJECTED` or :data:`NOT_REVIEWED` for a standing decision."""
    return decision.decision if decision is not None else NOT_REVIEWED
