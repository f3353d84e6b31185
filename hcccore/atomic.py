"""Atomic writes: a file is written beside its target and ``os.replace``-d into place.

A reader (or a run killed half-way) sees the old file or the new one, never a part of it.
Temporary files are named ``.<name>.<random>.tmp`` in the target's folder and removed when the
write fails.
"""

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


def write_atomic(path: str | Path, write: Callable[[Path], None], *,
                 mode: int | None = None) -> Path:
    """Write a file through a temporary sibling and ``os.replace`` it into place.

    Parameters
    ----------
    path
        Final file; its folder is created if needed.
    write
        Called with the temporary path; must write the whole file there.
    mode
        Permission bits of the file (e.g. ``0o600`` for a file only its owner may read); by
        default the usual mode (``0o666`` less the umask). The temporary file has them from
        the start, so the content is never readable with wider ones.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_atomic(folder / "a.txt", lambda temp: temp.write_text("hi")).read_text()
    'hi'
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        if mode is not None:
            os.chmod(temp, mode)
        write(Path(temp))
        os.chmod(temp, 0o666 & ~_UMASK if mode is None else mode)  # mkstemp makes 0600 files
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write bytes atomically (``mode`` as in :func:`write_atomic`); returns ``path``."""
    return write_atomic(path, lambda temp: temp.write_bytes(data), mode=mode)


def write_text(path: str | Path, text: str, *, mode: int | None = None) -> Path:
    """Write UTF-8 text atomically (``mode`` as in :func:`write_atomic`); returns ``path``."""
    return write_bytes(path, text.encode("utf-8"), mode=mode)


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV atomically (no index); returns ``path``."""
    return write_atomic(path, lambda temp: frame.to_csv(temp, index=False))


def write_json(data: Any, path: str | Path) -> Path:
    """Write JSON atomically (indented, keys sorted, other types as ``str``); returns ``path``."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(table: Any, path: str | Path) -> Path:
    """Write a ``pandas.DataFrame`` (index kept) or a ``pyarrow.Table`` as Parquet atomically.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(table, pd.DataFrame):
        return write_atomic(path, lambda temp: table.to_parquet(temp, engine="pyarrow"))
    if not isinstance(table, pa.Table):
        raise TypeError(f"{path}: write_parquet takes a pandas DataFrame or a pyarrow Table, "
                        f"not {type(table).__name__}")
    return write_atomic(path, lambda temp: pq.write_table(table, temp))


def write_png(figure: Any, path: str | Path, *, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it; returns ``path``."""
    import matplotlib.pyplot as plt

    try:
        return write_atomic(path, lambda temp: figure.savefig(temp, format="png", dpi=dpi))
    finally:
        plt.close(figure)
