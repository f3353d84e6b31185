"""The pathologist's QC review decisions (``OUT/qc/review.csv``).

Columns ``sample_id,decision,reviewer,time,comment``; ``decision`` is ``approve`` or ``reject``.
A sample may be reviewed more than once: the latest row (by ``time``, then by file order) wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REVIEW_FILE = Path("qc") / "review.csv"
REVIEW_COLUMNS = ("sample_id", "decision", "reviewer", "time", "comment")
DECISIONS = ("approve", "reject")


class ReviewError(ValueError):
    """The review file breaks its contract; the message names file, line and column."""


@dataclass(frozen=True)
class Decision:
    """The standing review decision of one sample."""

    sample_id: str
    decision: str
    reviewer: str
    time: str
    comment: str

    def reason(self) -> str:
        """A one-line exclusion reason for rejected samples."""
        text = f"rejected at QC review by {self.reviewer or 'unknown'} ({self.time})"
        return f"{text}: {self.comment}" if self.comment else text


def read_review(path: str | Path) -> dict[str, Decision]:
    """Read review decisions; the latest row per sample wins.

    Parameters
    ----------
    path
        ``qc/review.csv``; a missing file means no decisions (every sample stands).

    Returns
    -------
    dict
        ``sample_id -> Decision``.

    Raises
    ------
    ReviewError
        Missing column, empty sample_id, unknown decision or unparseable time.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REVIEW_COLUMNS if c not in table.columns]
    if missing:
        raise ReviewError(f"{path}: missing column(s) {', '.join(missing)}")
    latest: dict[str, tuple[pd.Timestamp, int, Decision]] = {}
    for index, record in enumerate(table.to_dict("records")):
        line = index + 2
        sample = record["sample_id"].strip()
        if not sample:
            raise ReviewError(f"{path}, line {line}, column 'sample_id': empty")
        decision = record["decision"].strip().lower()
        if decision not in DECISIONS:
            raise ReviewError(f"{path}, line {line}, column 'decision': '{record['decision']}'"
                              f" is not one of {', '.join(DECISIONS)}")
        try:
            when = pd.Timestamp(record["time"].strip())
            if pd.isna(when):
                raise ValueError("empty")
        except ValueError:
            raise ReviewError(f"{path}, line {line}, column 'time': '{record['time']}' is not "
                              "an ISO date-time") from None
        if when.tzinfo is not None:
            when = when.tz_convert("UTC").tz_localize(None)
        entry = Decision(sample, decision, record["reviewer"].strip(), record["time"].strip(),
                         record["comment"].strip())
        key = (when, index)
        if sample not in latest or key >= latest[sample][:2]:
            latest[sample] = (when, index, entry)
    return {sample: item[2] for sample, item in latest.items()}
