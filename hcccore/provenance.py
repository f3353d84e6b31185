"""Provenance every arm records: the versions of Python and of the packages that made a result.

Each arm names its own packages (what its numbers depend on); :func:`package_versions` reads
their installed versions (``importlib.metadata``), so that ``run.json``, ``registration.json``
and the analyses' records say exactly which code computed them.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata


def package_versions(packages: Iterable[str], *, python: bool = True,
                     missing: str | None = None) -> dict[str, str]:
    """Installed versions of ``packages`` (distribution names), in the order given.

    Parameters
    ----------
    packages
        Distribution names, e.g. ``("hccbio", "numpy")``.
    python
        Start with ``"python"``: the interpreter's version.
    missing
        The value recorded for a package that is not installed; ``None`` leaves it out.

    Returns
    -------
    dict of str to str

    Examples
    --------
    >>> versions = package_versions(["numpy", "no-such-package-hcc"], missing="not installed")
    >>> list(versions), versions["no-such-package-hcc"]
    (['python', 'numpy', 'no-such-package-hcc'], 'not installed')
    >>> list(package_versions(["no-such-package-hcc"], python=False))
    []
    """
    versions = {"python": platform.python_version()} if python else {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if missing is not None:
                versions[package] = missing
    return versions
