"""Spreadsheet-safe cells: text a spreadsheet would run as a formula is written inert.

A CSV cell starting with ``= + - @``, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (CSV injection). Every run table a person may open in a
spreadsheet writes its free-text cells through :func:`spreadsheet_safe`, which prefixes a
``'`` (OWASP's advice); :func:`spreadsheet_text` undoes it exactly on reading.
"""

from __future__ import annotations

from typing import TypeVar

import pandas as pd

# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

T = TypeVar("T")


def _formula_like(text: str) -> bool:
    return text.startswith(FORMULA_PREFIXES) or (
        text.startswith("'") and _formula_like(text[1:]))


def spreadsheet_safe(value: T) -> T | str:
    """A CSV cell that no spreadsheet runs as a formula.

    Text starting with ``= + - @``, a tab or a carriage return (or such text already
    prefixed with ``'``) gets a leading ``'``; other values pass unchanged.

    Parameters
    ----------
    value
        A cell value of any type; only ``str`` is changed.

    Returns
    -------
    object
        ``value`` or ``"'" + value``.

    Examples
    --------
    >>> spreadsheet_safe("=HYPERLINK(1)"), spreadsheet_safe("fold"), spreadsheet_safe(-1.5)
    ("'=HYPERLINK(1)", 'fold', -1.5)
    >>> all(spreadsheet_text(spreadsheet_safe(t)) == t for t in ("-x", "'-x", "''@", "a"))
    True
    """
    if isinstance(value, str) and _formula_like(value):
        return "'" + value
    return value


def spreadsheet_text(value: str) -> str:
    """The text :func:`spreadsheet_safe` was given (its ``'`` removed).

    Examples
    --------
    >>> spreadsheet_text("'=1+1"), spreadsheet_text("'quoted")
    ('=1+1', "'quoted")
    """
    if value.startswith("'") and _formula_like(value[1:]):
        return value[1:]
    return value


def spreadsheet_safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with every text cell passed through :func:`spreadsheet_safe`.

    Examples
    --------
    >>> spreadsheet_safe_frame(pd.DataFrame({"a": ["=x", "y"], "b": [-1, 2]}))["a"].tolist()
    ["'=x", 'y']
    """
    return frame.map(spreadsheet_safe)
