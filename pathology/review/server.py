"""Serve the review app with uvicorn; refuse to listen beyond this machine unless asked, and
never beyond it without reviewer accounts."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
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


def check_bind(host: str, *, allow_remote: bool, accounts: Path | None = None) -> None:
    """Refuse a non-loopback ``host`` unless ``allow_remote``, and then unless the accounts
    file ``accounts`` holds at least one reviewer account.

    Raises
    ------
    BindError
        ``host`` is reachable from other machines and ``allow_remote`` is False, or there
        is no account to sign in with (the message names the file and the command).
    pathology.review.accounts.AccountError
        The accounts file cannot be read.
    """
    if is_loopback(host):
        return
    if not allow_remote:
        raise BindError(f"refusing to serve on {host}: other machines could reach the slides "
                        "and the sign-off form; use 127.0.0.1 (default) or pass "
                        "--allow-remote if you mean it (reviewer accounts are then required)")
    from pathology.review.accounts import read_accounts

    if accounts is None or not read_accounts(accounts):
        raise BindError(f"refusing to serve on {host} without reviewer accounts: anyone who "
                        "can reach the port could sign slides off under any name; add one "
                        f"with 'hccbio review users add NAME --out OUT' (accounts file: "
                        f"{accounts if accounts is not None else 'none given'})")


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


def users_file(out: Path, users: Path | None = None) -> Path:
    """The accounts file: ``users`` when given, else ``OUT/qc/reviewers.json``."""
    return Path(users) if users is not None else RunFolder(Path(out)).reviewers


def serve(out: Path, *, host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False,
          reviewer: str = "", allow_hosts: tuple[str, ...] = (), users: Path | None = None,
          session_minutes: float = 60, ready: Callable[[str], None] | None = None) -> None:
    """Run the review app on ``host:port`` until interrupted.

    Parameters
    ----------
    allow_hosts
        Further names the browser may use for this server (``--allow-host``, e.g. the
        name of a machine served with ``--allow-remote``); requests naming any other host
        are refused (DNS rebinding).
    users
        The accounts file (default ``OUT/qc/reviewers.json``); with accounts, sign-in is
        required.
    session_minutes
        A session unused this long ends (it ends 12 hours after sign-in in any case).
    ready
        Called with the app's address once every check has passed, before serving.

    Raises
    ------
    BindError
        Non-loopback ``host`` without ``allow_remote`` or without accounts, or a port that
        is taken.
    FileNotFoundError
        ``out`` has no ``slides/`` folder.
    pathology.run.review_log.ReviewError
        The review log does not verify (the message names the line).
    pathology.review.accounts.AccountError
        The accounts file cannot be read.
    """
    import uvicorn

    from pathology.review.app import create_app

    users = users_file(out, users)
    check_bind(host, allow_remote=allow_remote, accounts=users)
    if not RunFolder(out).slides.is_dir():
        raise FileNotFoundError(f"{out}: no slides/ folder (run 'hccbio slides run' first)")
    if not 0 < session_minutes <= 12 * 60:
        raise BindError(f"--session-minutes {session_minutes:g}: give 1 to 720")
    # the review log and the accounts are checked before the port: a log that does not
    # verify is named whatever the port
    app = create_app(Path(out), reviewer=reviewer, allowed_hosts=allowed_hosts(host, allow_hosts),
                     users=users, session_idle_s=session_minutes * 60)
    check_port(host, port)
    if ready is not None:
        ready(f"http://{f'[{host}]' if ':' in host else host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="warning")
