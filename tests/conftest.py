"""Shared fixtures: the real data folder beside the project (``$HCCBIO_SHARED_DATA``) and
the review app served on a loopback port."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# segmentation.backend auto measures OpenVINO against TensorFlow once per CPU; a noisy first
# measurement on a busy test machine could pick either, and some tests compare numbers recorded
# with OpenVINO to 1e-6. Pinned here (and for the CLI subprocesses tests start);
# tests/pathology/test_auto_backend.py unsets it to test the measurement itself.
os.environ.setdefault("HCCBIO_AUTO_BACKEND", "openvino")


def _shared_data_dir() -> Path:
    from pathology.evaluation.annotations import shared_data_folder

    return shared_data_folder(must_exist=False)


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


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _review_server(out: Path, **options):
    """The real review app over run folder ``out`` on a free loopback port (uvicorn in a
    thread), stopped on exit; yields the port. ``options`` go to ``create_app`` (e.g.
    ``users``, ``session_idle_s``)."""
    import uvicorn

    from pathology.review.app import create_app
    from pathology.review.server import allowed_hosts

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        create_app(out, **{"reviewer": "Dr Test", **options},
                   allowed_hosts=allowed_hosts("127.0.0.1")),
        host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("review server did not start")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def review_server():
    """``with review_server(out[, **create_app options]) as port``: the review app over run
    folder ``out``."""
    return _review_server
