"""Writing the pathologist's sign-off log, ``OUT/qc/review.csv``: append-only, atomic.

The log's format and vocabulary (columns, ``approved`` / ``rejected``, which row stands) are
defined once in :mod:`pathology.run.review_log`, which the study table reads through too.
Appending rewrites the file through a temporary file and ``os.replace`` under an exclusive
lock, so a crash never leaves a half-written row and two writers never lose each other's
rows. Downstream tables leave out the slides in :func:`rejected_samples`.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import threading
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from hcccore.spreadsheet import spreadsheet_safe
from pathology.run.layout import SAMPLE_ID_RE, valid_sample_id  # noqa: F401 - re-exported
from pathology.run.review_log import (
    DECISIONS,
    REJECTED,
    REVIEW_COLUMNS,
    Decision,
    ReviewError,
    read_log,
    read_review,
    review_path,
)

REVIEW_FILE = review_path(".").name
MAX_COMMENT = 2000
MAX_REVIEWER = 100
_LOCK = threading.Lock()


def read_decisions(out: Path) -> list[Decision]:
    """Every decision of a run folder in file order (empty when no review has been made).

    Raises
    ------
    ReviewError
        The log breaks its contract (:func:`pathology.run.review_log.read_log`).
    """
    return read_log(review_path(out))


def latest_decisions(out: Path) -> dict[str, Decision]:
    """The standing decision of each reviewed slide (see :mod:`pathology.run.review_log`)."""
    return read_review(review_path(out))


def rejected_samples(out: Path) -> set[str]:
    """Slides whose standing decision is ``rejected``: downstream tables exclude them."""
    return {s for s, d in latest_decisions(out).items() if d.decision == REJECTED}


def _clean(text: str, limit: int, field: str) -> str:
    text = "".join(ch if ch.isprintable() or ch in "\n" else " " for ch in str(text)).strip()
    if len(text) > limit:  # never cut what the reviewer wrote without telling them
        raise ReviewError(f"the {field} is {len(text):,} characters long; at most {limit:,} "
                          f"are kept: shorten it")
    return text


def append_decision(out: Path, sample_id: str, *, decision: str, reviewer: str,
                    comment: str = "", when: datetime | None = None) -> Decision:
    """Append one decision to ``OUT/qc/review.csv`` atomically.

    Parameters
    ----------
    out
        The run folder.
    sample_id
        The slide.
    decision
        ``approved`` or ``rejected``.
    reviewer
        Who decided (required).
    comment
        Free text (required when rejecting), at most 2000 characters.
    when
        Time of the decision (default: now, UTC).

    Returns
    -------
    Decision

    Raises
    ------
    ReviewError
        Invalid sample id, decision or reviewer, a rejection without a comment, or a
        comment (reviewer name) longer than 2000 (100) characters.
    """
    if not valid_sample_id(sample_id):
        raise ReviewError(f"invalid sample id {sample_id!r}")
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    reviewer = _clean(reviewer, MAX_REVIEWER, "reviewer name")
    comment = _clean(comment, MAX_COMMENT, "comment")
    if not reviewer:
        raise ReviewError("a reviewer name is required")
    if decision == REJECTED and not comment:
        raise ReviewError("a rejection needs a comment saying why")
    stamp = (when or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    row = Decision(sample_id, decision, reviewer, stamp, comment)
    path = review_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(path.with_name(f".{REVIEW_FILE}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            existing = path.read_bytes() if path.is_file() else b""
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=REVIEW_COLUMNS, lineterminator="\n")
            if not existing:
                writer.writeheader()
            writer.writerow({k: spreadsheet_safe(v) for k, v in asdict(row).items()})
            data = existing + (b"" if not existing or existing.endswith(b"\n") else b"\n")
            tmp = path.with_name(f".{REVIEW_FILE}.{os.getpid()}.tmp")
            with open(tmp, "wb") as handle:
                handle.write(data + buffer.getvalue().encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return row
