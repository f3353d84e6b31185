"""CSV records with the line each starts on, and a field count checked against the header.

pandas reads a row cut short (a truncated file, a lost cell) as a row with empty trailing
cells, and a row with an extra field by shifting it under the index: both without a word.
The study tables are read through here first, so that such a row is refused with its line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

Record = tuple[int, list[str]]


def read_records(path: str | Path, *, error: type[Exception], what: str,
                 allow_short: bool = False, fix: str = "") -> tuple[list[str], list[Record]]:
    """The header and every non-blank record of a CSV file, with the line it starts on.

    Blank lines and records whose fields are all empty (spreadsheets export them as ``,,,,``)
    are skipped; a quoted field may span lines, and the record is named by its first line.

    Parameters
    ----------
    path
        The CSV file (UTF-8, with or without a byte-order mark).
    error
        Exception class raised on a problem (its message names the file and the line).
    what
        What the file is, for messages ("manifest", "feature table").
    allow_short
        Accept records with fewer fields than the header (optional trailing columns);
        records with more fields are always refused.
    fix
        Appended to the message of a record whose field count is wrong.

    Returns
    -------
    tuple
        The header (stripped names) and ``(line, fields)`` per record, in file order.

    Raises
    ------
    error
        Not UTF-8, a quoting error, or a record with another number of fields than the header.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = path.write_text("a,b\\n1,2\\n\\n3\\n")
    >>> read_records(path, error=ValueError, what="table")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...t.csv, line 4: 1 field(s) but the header has 2: the row is cut short
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header: list[str] | None = None
            rows: list[Record] = []
            end = 0  # the last line of the previous record
            for fields in reader:
                start, end = end + 1, reader.line_num
                if not any(f.strip() for f in fields):
                    continue
                if header is None:
                    header = [f.strip() for f in fields]
                    continue
                if len(fields) > len(header):
                    raise error(f"{path}, line {start}: {len(fields)} fields but the header "
                                f"has {len(header)}; quote values that contain a comma{fix}")
                if len(fields) < len(header) and not allow_short:
                    raise error(f"{path}, line {start}: {len(fields)} field(s) but the header "
                                f"has {len(header)}: the row is cut short{fix}")
                rows.append((start, fields))
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte {problem.start}); save the {what} as CSV "
                    "UTF-8") from None
    except csv.Error as problem:
        raise error(f"{path}, line {reader.line_num}: {problem}; check the quotes on that "
                    "line") from None
    return header or [], rows


#: cells read as a missing value (what pandas and spreadsheets write for one)
MISSING = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "NULL", "null", "None", "#N/A"})


@dataclass(frozen=True)
class CellProblem:
    """The first cell of a column that cannot be analysed.

    Attributes
    ----------
    position
        Row position (0-based) of the cell.
    text
        The cell as written.
    kind
        "text": not a number in a column of numbers; "non_finite": inf or -inf.
    count
        Cells of the column with the same problem.
    """

    position: int
    text: str
    kind: Literal["text", "non_finite"]
    count: int


def typed_column(cells: pd.Series, *, category: bool = False
                 ) -> tuple[pd.Series, CellProblem | None]:
    """A column of CSV cells as numbers (float) or, when it holds no number, as text.

    A column with numbers and text is numeric with a text cell in it (a type change) unless
    it is declared a category; ``inf`` / ``-inf`` are numbers that cannot be analysed.
    Either is returned as the problem for the caller to name (file, line, column).

    Parameters
    ----------
    cells
        The column as read (str; missing-value spellings of :data:`MISSING` are missing).
    category
        The column is a category (dictionary unit ``category``): text is expected.

    Returns
    -------
    tuple
        The typed column (float, or object of str with None for missing) and the first
        problem, or None.

    Examples
    --------
    >>> values, problem = typed_column(pd.Series(["1.5", "", "2"]))
    >>> values.tolist()[0], problem is None
    (1.5, True)
    >>> typed_column(pd.Series(["1.5", "pending", "2"]))[1].text
    'pending'
    >>> typed_column(pd.Series(["1.5", "inf"]))[1].kind
    'non_finite'
    """
    text = cells.astype(object).where(cells.notna(), "").astype(str).str.strip()
    text = text.where(~text.isin(MISSING), None)
    numbers = pd.to_numeric(text, errors="coerce").astype(float)
    words = np.flatnonzero(text.notna().to_numpy() & numbers.isna().to_numpy())
    if words.size and (words.size == text.notna().sum() or category):
        return text, None
    if words.size:
        return text, CellProblem(int(words[0]), str(text.iloc[words[0]]), "text", words.size)
    infinite = np.flatnonzero(np.isinf(numbers.to_numpy()))
    if infinite.size:
        return numbers, CellProblem(int(infinite[0]), str(text.iloc[infinite[0]]),
                                    "non_finite", infinite.size)
    return numbers, None


def cell_message(problem: CellProblem, unit: str) -> str:
    """What is wrong with a cell, for a message that names the file, line and column first.

    Examples
    --------
    >>> cell_message(CellProblem(0, "inf", "non_finite", 3), "%")
    'inf is not a finite number (2 more in this column)'
    """
    more = f" ({problem.count - 1} more in this column)" if problem.count > 1 else ""
    if problem.kind == "non_finite":
        return f"{problem.text} is not a finite number{more}"
    return (f"'{problem.text}' is not a number, but the column holds numbers (unit "
            f"'{unit}'){more}")
