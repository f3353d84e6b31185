"""Reading a YAML configuration file the same way in every arm: UTF-8 text, then YAML.

A file that is not UTF-8 (saved as Latin-1 or UTF-16 by an editor) or not YAML is one error
naming the file and the fix, of the caller's own error type, never a ``UnicodeDecodeError``.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def read_yaml(path: Path, *, error: type[Exception]) -> object:
    """The parsed content of a YAML file (``None`` when it is empty).

    Parameters
    ----------
    path
        The file (its existence is the caller's check).
    error
        The exception type raised for an unreadable file (the arm's ``ConfigError``).

    Returns
    -------
    object
        What :func:`yaml.safe_load` returns.

    Raises
    ------
    error
        The file cannot be read, is not UTF-8 text, or is not valid YAML.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "a.yaml").write_bytes(b"name: caf\\xe9\\n")
    11
    >>> try:
    ...     read_yaml(folder / "a.yaml", error=ValueError)
    ... except ValueError as problem:
    ...     print(str(problem).split(": ", 1)[1])
    not UTF-8 text (byte 0xe9 at position 9); save it as UTF-8
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte 0x{problem.object[problem.start]:02x} at "
                    f"position {problem.start}); save it as UTF-8") from None
    except OSError as problem:
        raise error(f"{path}: cannot be read ({problem.strerror or problem})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML ({' '.join(str(problem).split())})") from None
