"""``hccbio review ...``: serve the review app, and keep its reviewer accounts.

``hccbio review OUT [options]`` serves the app (the ``serve`` command is the default, so the
command reads as before accounts existed); ``hccbio review users add / list / remove`` keep
the accounts file (``OUT/qc/reviewers.json`` or ``--users FILE``). A thin layer over
:mod:`pathology.review.server` and :mod:`pathology.review.accounts`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

from pathology.review.accounts import AccountError, add_account, list_accounts, remove_account
from pathology.run.layout import RunFolder


class _ServeByDefault(TyperGroup):
    """``hccbio review OUT ...`` means ``hccbio review serve OUT ...``: anything but a
    sub-command name (or ``--help``) is handed to ``serve``."""

    def parse_args(self, ctx, args):  # noqa: D102 - click's
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_ServeByDefault, no_args_is_help=True,
                  help="The pathologist's review in the browser, and its reviewer accounts. "
                       "'hccbio review OUT [options]' serves the app ('review serve OUT').")
users_app = typer.Typer(no_args_is_help=True,
                        help="Reviewer accounts: who may sign slides off (names and scrypt "
                             "password hashes).")
app.add_typer(users_app, name="users")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _users_path(out: Path | None, users: Path | None) -> Path:
    if users is not None:
        return users
    if out is None:
        _fail("give the run folder (--out OUT, accounts in OUT/qc/reviewers.json) or the "
              "accounts file (--users FILE)")
    return RunFolder(out).reviewers


OUT_OPTION = typer.Option(None, "--out", help="Run folder: accounts in OUT/qc/reviewers.json.")
USERS_OPTION = typer.Option(None, "--users", help="Accounts file (instead of the run "
                            "folder's OUT/qc/reviewers.json), e.g. one shared by several runs.")


@app.command("serve")
def serve(
    out: Path = typer.Argument(..., help="Run folder (with slides/*/qc from 'slides qc')."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback "
                                      "--host (needs reviewer accounts: 'hccbio review users "
                                      "add'); put it behind an HTTPS reverse proxy."),
    reviewer: str = typer.Option("", "--reviewer", help="Default reviewer name in the form "
                                 "(without accounts only)."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Another name browsers may "
                                         "use for this server (repeat); requests naming any "
                                         "other host are refused (DNS rebinding)."),
    users: Path | None = USERS_OPTION,
    session_minutes: float = typer.Option(60, "--session-minutes", help="Sign a reviewer "
                                          "out after this many minutes without a request "
                                          "(and 12 hours after sign-in in any case)."),
) -> None:
    """Review slides in the browser: QC flags, deep-zoom viewer, overlays, approve / reject."""
    from pathology.review.server import BindError
    from pathology.review.server import serve as serve_app
    from pathology.run.review_log import ReviewError

    try:
        serve_app(out, host=host, port=port, allow_remote=allow_remote, reviewer=reviewer,
                  allow_hosts=tuple(allow_host), users=users, session_minutes=session_minutes,
                  ready=lambda url: typer.echo(f"review app on {url} (Ctrl-C to stop)"))
    except (BindError, FileNotFoundError, ReviewError, AccountError) as error:
        _fail(str(error))


def _read_password(from_stdin: bool) -> str:
    """The new password, asked twice (hidden), or two lines of standard input."""
    if from_stdin:
        lines = sys.stdin.read().splitlines()
        if len(lines) < 2:
            _fail("--password-stdin reads the password twice, one per line; got "
                  f"{len(lines)} line(s)")
        first, second = lines[0], lines[1]
    else:
        first = typer.prompt("password", hide_input=True)
        second = typer.prompt("password again", hide_input=True)
    if first != second:
        _fail("the two passwords differ; nothing was changed")
    return first


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., help="The reviewer's name, as sign-offs will record it."),
    out: Path | None = OUT_OPTION,
    users: Path | None = USERS_OPTION,
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password "
                                        "twice (two lines) from standard input, for scripts."),
    replace: bool = typer.Option(False, "--replace", help="Set a new password for an "
                                 "existing account."),
) -> None:
    """Add a reviewer account (asks for its password twice); only a scrypt hash is stored."""
    path = _users_path(out, users)
    try:
        account = add_account(path, name, _read_password(password_stdin), replace=replace)
    except AccountError as error:
        _fail(str(error))
    typer.echo(f"{'password set for' if replace else 'added'} {account.name!r} in {path}")


@users_app.command("list")
def users_list(out: Path | None = OUT_OPTION, users: Path | None = USERS_OPTION) -> None:
    """List the reviewer accounts (names and when they were set; never the hashes)."""
    path = _users_path(out, users)
    try:
        accounts = list_accounts(path)
    except AccountError as error:
        _fail(str(error))
    for account in accounts:
        typer.echo(f"{account.name}\t{account.created}")
    if not accounts:
        typer.echo(f"no accounts in {path} (the review app then serves this machine only, "
                   "and records the name typed in its form)", err=True)


@users_app.command("remove")
def users_remove(
    name: str = typer.Argument(..., help="The account to remove."),
    out: Path | None = OUT_OPTION,
    users: Path | None = USERS_OPTION,
) -> None:
    """Remove a reviewer account (its sign-offs stay in the log; its sessions end)."""
    path = _users_path(out, users)
    try:
        remove_account(path, name)
    except AccountError as error:
        _fail(str(error))
    typer.echo(f"removed {name!r} from {path}")
