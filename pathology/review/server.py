"""Serve the review app with uvicorn; refuse to listen beyond this machine unless asked."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from pathology.layout import RunFolder

LOOPBACK_NAMES = ("localhost",)


class BindError(ValueError):
    """The server was asked to listen on an address it must not use without consent."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (name or address) is this machine only (127.0.0.0/8, ::1, localhost).

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("::1")
    (True, False, True)
    """
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def check_bind(host: str, *, allow_remote: bool) -> None:
    """Refuse a non-loopback ``host`` unless ``allow_remote``.

    Raises
    ------
    BindError
        ``host`` is reachable from other machines and ``allow_remote`` is False.
    """
    if not allow_remote and not is_loopback(host):
        raise BindError(f"refusing to serve on {host}: other machines could reach the slides "
                        "and the sign-off form; use 127.0.0.1 (default) or pass "
                        "--allow-remote if you mean it (no authentication is provided)")


def serve(out: Path, *, host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False,
          reviewer: str = "") -> None:
    """Run the review app on ``host:port`` until interrupted.

    Raises
    ------
    BindError
        Non-loopback ``host`` without ``allow_remote``.
    FileNotFoundError
        ``out`` has no ``slides/`` folder.
    """
    import uvicorn

    from pathology.review.app import create_app

    check_bind(host, allow_remote=allow_remote)
    if not RunFolder(out).slides.is_dir():
        raise FileNotFoundError(f"{out}: no slides/ folder (run 'hccbio slides run' first)")
    uvicorn.run(create_app(Path(out), reviewer=reviewer), host=host, port=port,
                log_level="warning")
