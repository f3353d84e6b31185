"""The pathologist's review log ``OUT/qc/review.csv``: its one format, vocabulary and chain.

The review app writes it (:mod:`pathology.run.decisions`), the QC summary shows it and the
study table reads it (:mod:`integration.review`); all of them take the file name, the columns,
the decisions, the reading rule and the chain check from here, so the writer and the readers
cannot disagree.

Columns: :data:`REVIEW_COLUMNS` ``sample_id, decision, reviewer, time, comment`` (the
decision), then ``result_sha256`` (the slide's result the decision was made on,
:func:`result_digest`), ``reviewer_source`` (:data:`ACCOUNT`: the reviewer is the account
signed in to the app; :data:`TYPED`: the name typed in the form of an app without accounts)
and ``chain_sha256``. ``decision`` is :data:`APPROVED` or :data:`REJECTED`; ``time`` is an
ISO 8601 date-time. A slide may be reviewed more than once: the latest decision (by time,
then by file order) stands, and the earlier ones stay as its history. A slide without any row
is :data:`NOT_REVIEWED`, which downstream tables flag (never read as approved); an approval
whose ``result_sha256`` is not the slide's result any more (recomputed with another
configuration) is :data:`APPROVED_EARLIER`: "approved an earlier result", never read as an
approval of the current one.

**Tamper evidence.** Each line's ``chain_sha256`` is the SHA-256 of the previous line's
``chain_sha256`` (:data:`GENESIS` before the first line), a newline and the line's other
cells as written (:func:`chain_hash`). Changing, removing or reordering a line breaks every
hash from there on; every reader verifies the chain and refuses a log that does not verify
(:class:`ReviewChainError`, naming the first line that fails). The chain shows an edit made
by hand or by another program; it cannot stop someone who rewrites the whole file and
recomputes every hash, nor show that lines were cut from the end (keep backups of the run
folder; the app shows the latest hash).

**Logs written before the chain** (five columns, no hashes) stay readable: their lines form
an unchained prefix. The chain runs through them from :data:`GENESIS` (their hashes are
computed, not stored), so the first chained line written after them also vouches for them
from then on. The first sign-off after the upgrade rewrites the header with the new columns
(the old lines' cells unchanged, the new ones empty) and appends the first chained line. An
unchained line after a chained one is refused.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hcccore.spreadsheet import spreadsheet_text
from pathology.io.folder import FEATURES, QC_DIR, QC_JSON
from pathology.run.layout import REVIEW_LOG, RunFolder

REVIEW_FILE = Path(QC_DIR) / REVIEW_LOG
REVIEW_COLUMNS = ("sample_id", "decision", "reviewer", "time", "comment")
RESULT_COLUMN = "result_sha256"
SOURCE_COLUMN = "reviewer_source"
CHAIN_COLUMN = "chain_sha256"
LOG_COLUMNS = (*REVIEW_COLUMNS, RESULT_COLUMN, SOURCE_COLUMN, CHAIN_COLUMN)
CHAINED_COLUMNS = LOG_COLUMNS[:-1]  # the cells each line's hash covers, in this order
GENESIS = "0" * 64
APPROVED = "approved"
REJECTED = "rejected"
DECISIONS = (APPROVED, REJECTED)
NOT_REVIEWED = "not_reviewed"
APPROVED_EARLIER = "approved_earlier_result"
REVIEW_STATES = (*DECISIONS, APPROVED_EARLIER, NOT_REVIEWED)
ACCOUNT = "account"
TYPED = "typed"
REVIEWER_SOURCES = (ACCOUNT, TYPED)
EARLIER_RESULT_NOTE = "approved an earlier result"
# keys of features.json / qc.json that change on every computation of the same result
VOLATILE_KEYS = frozenset({"seconds", "created"})


class ReviewError(ValueError):
    """The review log breaks its contract; the message names file, line and column."""


class ReviewChainError(ReviewError):
    """The review log's hash chain does not verify: a line was edited, removed or moved."""


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
    result_sha256
        The slide's result the decision was made on (:func:`result_digest`); empty in lines
        written before hccbio recorded it.
    reviewer_source
        :data:`ACCOUNT` (the signed-in account), :data:`TYPED` (typed in an app without
        accounts) or empty (written before hccbio recorded it).
    line
        The line of the log the decision starts on (0 when not read from a file).
    """

    sample_id: str
    decision: str
    reviewer: str
    time: str
    comment: str
    result_sha256: str = ""
    reviewer_source: str = ""
    line: int = 0

    def reason(self) -> str:
        """A one-line exclusion reason (for rejected slides).

        Examples
        --------
        >>> Decision("s1", REJECTED, "Dr A", "2026-01-02T09:00", "fold").reason()
        'rejected at QC review by Dr A (2026-01-02T09:00): fold'
        """
        text = f"{self.decision} at QC review by {self.reviewer or 'unknown'} ({self.time})"
        return f"{text}: {self.comment}" if self.comment else text

    def approved_earlier_result(self, current: str | None) -> bool:
        """Whether this is an approval of another result than ``current`` (the slide's
        :func:`result_digest` now): the slide was recomputed since it was approved.

        Lines without a recorded result (written before hccbio recorded it) and slides whose
        current result is unknown (``None`` or empty) are not flagged.

        Examples
        --------
        >>> d = Decision("s1", APPROVED, "Dr A", "2026-01-02T09:00", "", "ab" * 32)
        >>> d.approved_earlier_result("ab" * 32), d.approved_earlier_result("cd" * 32)
        (False, True)
        """
        return (self.decision == APPROVED and bool(self.result_sha256) and bool(current)
                and current != self.result_sha256)


def review_path(out: str | Path) -> Path:
    """The review log of a run folder, ``OUT/qc/review.csv``."""
    return Path(out) / REVIEW_FILE


def chain_hash(previous: str, cells: Mapping[str, str]) -> str:
    """The ``chain_sha256`` of a line: SHA-256 of ``previous`` (the line before's hash, or
    :data:`GENESIS`), a newline and the line's :data:`CHAINED_COLUMNS` cells (as written in
    the file) as a compact JSON list.

    Examples
    --------
    >>> cells = dict(zip(CHAINED_COLUMNS, ("s1", "approved", "Dr A", "2026-01-02T09:00:00",
    ...                                    "", "", "typed")))
    >>> chain_hash(GENESIS, cells)[:16]
    '38faa2c62b27d4b1'
    >>> chain_hash(GENESIS, {**cells, "reviewer": "Dr B"}) == chain_hash(GENESIS, cells)
    False
    """
    text = json.dumps([cells.get(c) or "" for c in CHAINED_COLUMNS], ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(f"{previous}\n{text}".encode()).hexdigest()


@dataclass(frozen=True)
class LogFile:
    """A review log as written, its chain verified (:func:`parse_log`).

    Attributes
    ----------
    path
        The file.
    columns
        Its header.
    rows
        ``(line, cells)`` per row: the line the row starts on and its cells exactly as
        written (missing cells as ``""``).
    head
        The chain's last hash (:data:`GENESIS` for a log without rows): the next line's
        ``previous``.
    chained
        Whether the header has the chain's columns (False: a log written before them).
    """

    path: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, str]], ...]
    head: str
    chained: bool


def parse_log(path: str | Path) -> LogFile:
    """Read a review log's cells as written and verify its hash chain.

    Parameters
    ----------
    path
        ``OUT/qc/review.csv``; a missing file is a log without rows.

    Returns
    -------
    LogFile

    Raises
    ------
    ReviewError
        A missing column (the message names the columns expected), or a file that is not
        UTF-8 text.
    ReviewChainError
        A line whose ``chain_sha256`` does not follow from the lines before it, or an
        unchained line after a chained one; the message names the line and the fix.
    """
    path = Path(path)
    if not path.is_file():
        return LogFile(path, LOG_COLUMNS, (), GENESIS, True)
    rows: list[tuple[int, dict[str, str]]] = []
    head, first_chained = GENESIS, 0
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None) or []
            missing = [c for c in REVIEW_COLUMNS if c not in header]
            if missing:
                raise ReviewError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                                  f"{', '.join(LOG_COLUMNS)}")
            start = reader.line_num + 1
            for record in reader:
                line, start = start, reader.line_num + 1
                if not record:  # a blank line
                    continue
                cells = {name: (record[i] if i < len(record) else "")
                         for i, name in enumerate(header)}
                cells = {c: cells.get(c, "") for c in LOG_COLUMNS}
                expected = chain_hash(head, cells)
                stored = cells[CHAIN_COLUMN].strip()
                if stored:
                    if stored != expected:
                        raise ReviewChainError(
                            f"{path}, line {line}: the review log's hash chain does not "
                            "verify here (column 'chain_sha256'): this line, or one before "
                            "it, was changed, removed or moved after it was written. Sign-offs "
                            "are only ever appended by 'hccbio review'; restore the file from "
                            "a backup, or find out who edited it, before reviewing or "
                            "integrating")
                    first_chained = first_chained or line
                elif first_chained:
                    raise ReviewChainError(
                        f"{path}, line {line}: no chain_sha256, yet line {first_chained} "
                        "before it has one: the line was added or its hash removed by hand, "
                        "not by 'hccbio review'; restore the file from a backup, or find out "
                        "who edited it, before reviewing or integrating")
                head = expected
                rows.append((line, cells))
    except UnicodeDecodeError as error:
        raise ReviewError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                          "the review log is written by 'hccbio review' only") from None
    return LogFile(path, tuple(header), tuple(rows), head,
                   all(c in header for c in LOG_COLUMNS))


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
    """Every row of a review log, validated and its chain verified, in file order (empty
    when there is no file).

    Raises
    ------
    ReviewError
        Missing column, empty ``sample_id``, a decision outside :data:`DECISIONS` or a time
        that is not ISO 8601; the message names the line and the column.
    ReviewChainError
        The hash chain does not verify (:func:`parse_log`).
    """
    log = parse_log(path)
    decisions = []
    for line, cells in log.rows:
        values = {k: spreadsheet_text(cells[k].strip()) for k in REVIEW_COLUMNS}
        if not values["sample_id"]:
            raise ReviewError(f"{log.path}, line {line}, column 'sample_id': empty")
        if values["decision"] not in DECISIONS:
            raise ReviewError(f"{log.path}, line {line}, column 'decision': "
                              f"'{values['decision']}' is not one of {', '.join(DECISIONS)}")
        _when(values["time"], log.path, line)
        decisions.append(Decision(**values, result_sha256=cells[RESULT_COLUMN].strip(),
                                  reviewer_source=cells[SOURCE_COLUMN].strip(), line=line))
    return decisions


def standing(decisions: Iterable[Decision]) -> dict[str, Decision]:
    """The standing decision of every slide among ``decisions`` (in file order): the latest
    by time, then file order.

    Examples
    --------
    >>> rows = [Decision("s1", REJECTED, "A", "2026-01-02T10:00", "fold"),
    ...         Decision("s1", APPROVED, "B", "2026-01-01T10:00", "")]
    >>> standing(rows)["s1"].decision
    'rejected'
    """
    latest: dict[str, tuple[datetime, int, Decision]] = {}
    for index, row in enumerate(decisions):
        key = (_when(row.time, Path(REVIEW_LOG), row.line or index + 2), index)
        if row.sample_id not in latest or key >= latest[row.sample_id][:2]:
            latest[row.sample_id] = (*key, row)
    return {sample: item[2] for sample, item in latest.items()}


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
        See :func:`read_log` (a log whose chain does not verify included).
    """
    return standing(read_log(path))


def review_state(decision: Decision | None, current_result: str | None = None) -> str:
    """:data:`APPROVED`, :data:`REJECTED`, :data:`APPROVED_EARLIER` or :data:`NOT_REVIEWED`
    for a standing decision.

    Parameters
    ----------
    decision
        The slide's standing decision (None: never reviewed).
    current_result
        The slide's :func:`result_digest` now; an approval of another result is
        :data:`APPROVED_EARLIER`. None: not checked.

    Examples
    --------
    >>> review_state(None), review_state(Decision("s1", APPROVED, "A", "2026-01-01", ""))
    ('not_reviewed', 'approved')
    """
    if decision is None:
        return NOT_REVIEWED
    if decision.approved_earlier_result(current_result):
        return APPROVED_EARLIER
    return decision.decision


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def result_digest(folder: str | Path) -> str:
    """SHA-256 of a slide's result as a sign-off approves it.

    The result is the slide folder's ``features.json`` (slide facts, configuration and input
    digests, features) and ``qc/qc.json`` (QC status, checks, metrics), without the keys that
    change every time the same result is computed (:data:`VOLATILE_KEYS`: timings and
    creation times). A slide recomputed with another configuration, from another file, or
    with other QC settings has another digest; one recomputed identically keeps it.

    Parameters
    ----------
    folder
        ``OUT/slides/<sample_id>``.

    Returns
    -------
    str
        64 hexadecimal digits; empty when the folder has neither file.
    """
    folder = Path(folder)
    parts: dict[str, Any] = {}
    for name, path in ((FEATURES, folder / FEATURES), (f"{QC_DIR}/{QC_JSON}",
                                                       folder / QC_DIR / QC_JSON)):
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            parts[name] = _stable(json.loads(data))
        except (UnicodeDecodeError, json.JSONDecodeError):
            parts[name] = hashlib.sha256(data).hexdigest()  # damaged: its bytes stand
    if not parts:
        return ""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def result_digests(out: str | Path) -> dict[str, str]:
    """:func:`result_digest` of every slide folder of a run folder (sample id -> digest)."""
    return {folder.sample_id: result_digest(folder.root)
            for folder in RunFolder(Path(out)).slide_folders()}
