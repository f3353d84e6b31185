"""Shared fixtures: the real data folder beside the project (``$HCCBIO_SHARED_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    return Path(os.environ.get("HCCBIO_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; tests skip without it, except under CI where it must exist."""
    root = _shared_data_dir()
    if not root.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"shared data folder {root} is missing under CI; set HCCBIO_SHARED_DATA")
        pytest.skip(f"shared data folder {root} not found; set HCCBIO_SHARED_DATA")
    return root


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root."""
    return PROJECT_ROOT
