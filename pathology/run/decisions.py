"""Writing the pathologist's sign-off log, ``OUT/qc/review.csv``: append-only, chained, atomic.

The log's format and vocabulary (columns, ``approved`` / ``rejected``, which row stands, the
hash chain) are defined once in :mod:`pathology.run.review_log`, which the study table reads
through too. Appending verifies the chain first (a log that does not verify is never added
to), then rewrites the file through a temporary file and ``os.replace`` under an exclusive
lock, so a crash never leaves a half-written row and two writers never lose each other's
rows; the rows already there are kept as written. Downstream tables leave out the slides in
:func:`rejected_samples`.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from hcccore.atomic import write_atomic
from hcccore.spreadsheet import spreadsheet_safe
from pathology.run.layout import SAMPLE_ID_RE, RunFolder, valid_sample_id  # noqa: F401
from pathology.run.review_log import (
    CHAIN_COLUMN,
    DECISIONS,
    LOG_COLUMNS,
    REJECTED,
    RESULT_COLUMN,
    REVIEWER_SOURCES,
    SOURCE_COLUMN,
    TYPED,
    Decision,
    ReviewError,
    chain_hash,
    parse_log,
    read_log,
    read_review,
    result_digest,
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
        The log breaks its contract or its chain does not verify
        (:func:`pathology.run.review_log.read_log`).
    """
    return read_log(review_path(out))


def latest_decisions(out: Path) -> dict[str, Decision]:
    """The standing decision of each reviewed slide (see :mod:`pathology.run.review_log`)."""
    return read_review(review_path(out))


def slide_history(out: Path, sample_id: str) -> list[Decision]:
    """Every decision on one slide, oldest first (the standing one is the latest by time).

    Raises
    ------
    ReviewError
        As :func:`read_decisions`.
    """
    return [d for d in read_decisions(out) if d.sample_id == sample_id]


def rejected_samples(out: Path) -> set[str]:
    """Slides whose standing decision is ``rejected``: downstream tables exclude them."""
    return {s for s, d in latest_decisions(out).items() if d.decision == REJECTED}


def slide_result(out: Path, sample_id: str) -> str:
    """The slide's result digest now (:func:`pathology.run.review_log.result_digest`)."""
    return result_digest(RunFolder(Path(out)).slide(sample_id).root)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:  # on disk before it replaces the log
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _clean(text: str, limit: int, field: str) -> str:
    text = "".join(ch if ch.isprintable() or ch in "\n" else " " for ch in str(text)).strip()
    if len(text) > limit:  # never cut what the reviewer wrote without telling them
        raise ReviewError(f"the {field} is {len(text):,} characters long; at most {limit:,} "
                          f"are kept: shorten it")
    return text


def append_decision(out: Path, sample_id: str, *, decision: str, reviewer: str,
                    comment: str = "", when: datetime | None = None,
                    reviewer_source: str = TYPED, result_sha256: str | None = None
                    ) -> Decision:
    """Append one decision to ``OUT/qc/review.csv``, chained to the lines before it.

    Parameters
    ----------
    out
        The run folder.
    sample_id
        The slide.
    decision
        ``approved`` or ``rejected``.
    reviewer
        Who decided (required): the signed-in account, or the name typed in an app
        without accounts.
    comment
        Free text (required when rejecting), at most 2000 characters.
    when
        Time of the decision (default: now, UTC).
    reviewer_source
        ``account`` (``reviewer`` is the signed-in account) or ``typed``.
    result_sha256
        The slide's result the decision was made on (default: its result now,
        :func:`slide_result`).

    Returns
    -------
    Decision

    Raises
    ------
    ReviewError
        Invalid sample id, decision or reviewer, a rejection without a comment, or a
        comment (reviewer name) longer than 2000 (100) characters.
    pathology.run.review_log.ReviewChainError
        The log there does not verify: nothing is appended to it.
    """
    if not valid_sample_id(sample_id):
        raise ReviewError(f"invalid sample id {sample_id!r}")
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if reviewer_source not in REVIEWER_SOURCES:
        raise ReviewError(f"reviewer_source must be one of {', '.join(REVIEWER_SOURCES)}")
    reviewer = _clean(reviewer, MAX_REVIEWER, "reviewer name")
    comment = _clean(comment, MAX_COMMENT, "comment")
    if not reviewer:
        raise ReviewError("a reviewer name is required")
    if decision == REJECTED and not comment:
        raise ReviewError("a rejection needs a comment saying why")
    result = slide_result(out, sample_id) if result_sha256 is None else result_sha256
    stamp = (when or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    path = review_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(path.with_name(f".{REVIEW_FILE}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            log = parse_log(path)  # refuses a log whose chain does not verify
            cells = {"sample_id": sample_id, "decision": decision,
                     "reviewer": spreadsheet_safe(reviewer), "time": stamp,
                     "comment": spreadsheet_safe(comment), RESULT_COLUMN: result,
                     SOURCE_COLUMN: reviewer_source}
            cells[CHAIN_COLUMN] = chain_hash(log.head, cells)
            buffer = io.StringIO()
            if log.chained and path.is_file():  # append to the file as it is
                existing = path.read_bytes()
                if existing and not existing.endswith(b"\n"):
                    existing += b"\n"
                csv.DictWriter(buffer, fieldnames=log.columns, restval="",
                               lineterminator="\n").writerow(cells)
                data = existing + buffer.getvalue().encode("utf-8")
            else:  # new, or written before the chain: the new header, the old cells kept
                writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, extrasaction="ignore",
                                        lineterminator="\n")
                writer.writeheader()
                for _, old in log.rows:
                    writer.writerow(old)
                writer.writerow(cells)
                data = buffer.getvalue().encode("utf-8")
            write_atomic(path, lambda temp: _write_synced(temp, data))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return Decision(sample_id, decision, reviewer, stamp, comment, result, reviewer_source)
