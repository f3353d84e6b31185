"""Serve the review app with uvicorn; refuse to listen beyond this machine unless asked."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from pathology.run.layout import RunFolder

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


def check_port(host: str, port: int) -> None:
    """Refuse a port this machine cannot listen on (in use, privileged, no such address), so
    that nothing tells the user to open an address that is not served.

    Raises
    ------
    BindError
        The message names the address and the fix.
    """
    if not 0 <= port <= 65535:
        raise BindError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise BindError(f"--host {host}: not an address of this machine ({error})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as error:
            raise BindError(f"cannot listen on {host}:{port} ({error.strerror}); another "
                            "program, perhaps a review server still running, holds the port: "
                            "stop it or choose another --port") from None


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Host names requests may name (besides loopback ones): the listening ``host`` (this
    machine's names when it is a wildcard such as 0.0.0.0) and ``extra``."""
    names = [*extra]
    if host in ("0.0.0.0", "::", ""):
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(host)
    return tuple(names)


def serve(out: Path, *, host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False,
          reviewer: str = "", allow_hosts: tuple[str, ...] = ()) -> None:
    """Run the review app on ``host:port`` until interrupted.

    Parameters
    ----------
    allow_hosts
        Further names the browser may use for this server (``--allow-host``, e.g. the
        name of a machine served with ``--allow-remote``); requests naming any other host
        are refused (DNS rebinding).

    Raises
    ------
    BindError
        Non-loopback ``host`` without ``allow_remote``, or a port that is taken.
    FileNotFoundError
        ``out`` has no ``slides/`` folder.
    """
    import uvicorn

    from pathology.review.app import create_app

    check_bind(host, allow_remote=allow_remote)
    if not RunFolder(out).slides.is_dir():
        raise FileNotFoundError(f"{out}: no slides/ folder (run 'hccbio slides run' first)")
    check_port(host, port)
    uvicorn.run(create_app(Path(out), reviewer=reviewer,
                           allowed_hosts=allowed_hosts(host, allow_hosts)),
                host=host, port=port, log_level="warning")
