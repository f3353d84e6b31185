"""Reviewer accounts of the review app: names and scrypt password hashes in one JSON file.

The file is ``OUT/qc/reviewers.json`` (:attr:`pathology.run.layout.RunFolder.reviewers`) or
one given with ``--users``; ``hccbio review users add / list / remove`` keep it. Passwords are
never stored: only a salted scrypt hash (:func:`hashlib.scrypt`, OpenSSL's implementation, at
OWASP's parameters ``N=2**17, r=8, p=1``; the parameters are stored with each hash so that
they can be raised later). The file is written atomically, readable by its owner only
(``0600``), under an exclusive lock.

```json
{"format": "hccbio-reviewers/1",
 "accounts": {"Dr A": {"created": "2026-01-02T09:00:00+00:00",
                       "scrypt": {"n": 131072, "r": 8, "p": 1, "salt": "...", "hash": "..."}}}}
```
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hcccore.atomic import write_text

FORMAT = "hccbio-reviewers/1"
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_NAME = 100
# letters (any script), digits, then also spaces, '.', '_', ''' and '-'; no leading symbol
NAME_RE = re.compile(r"[^\W_][\w .'-]*")
_LOCK = threading.Lock()


class AccountError(ValueError):
    """A bad account name or password, or an accounts file that cannot be used; the message
    names the file and the fix."""


@dataclass(frozen=True)
class Account:
    """One reviewer account as :func:`list_accounts` shows it (never its hash).

    Attributes
    ----------
    name
        The reviewer's name: what the review log records for each of their sign-offs.
    created
        When the account (or its latest password) was set, ISO 8601.
    """

    name: str
    created: str


def check_name(name: str) -> str:
    """``name`` if it can name an account, else :class:`AccountError` saying why.

    Examples
    --------
    >>> check_name("Dr Müller"), check_name("j.smith")
    ('Dr Müller', 'j.smith')
    >>> check_name("=cmd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pathology.review.accounts.AccountError: account name '=cmd': start with a letter or ...
    """
    if not (0 < len(name) <= MAX_NAME and NAME_RE.fullmatch(name) and name == name.strip()):
        raise AccountError(f"account name {name!r}: start with a letter or digit; then "
                           f"letters, digits, spaces and . _ ' - (at most {MAX_NAME} "
                           "characters)")
    return name


def check_password(password: str) -> str:
    """``password`` if it is long enough (8 to 1024 characters), else :class:`AccountError`."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password has {len(password)} character(s); use at least "
                           f"{MIN_PASSWORD} (a passphrase of a few words is best)")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"the password has {len(password):,} characters; at most "
                           f"{MAX_PASSWORD:,}")
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> dict:
    """A salted scrypt hash of ``password`` with its parameters (what the file stores).

    Examples
    --------
    >>> record = hash_password("correct horse", n=2**10)
    >>> sorted(record), verify_password(record, "correct horse"), verify_password(record, "x")
    (['hash', 'n', 'p', 'r', 'salt'], True, False)
    """
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                            maxmem=_maxmem(n, r), dklen=HASH_BYTES)
    return {"n": n, "r": r, "p": p, "salt": _b64(salt), "hash": _b64(digest)}


def _maxmem(n: int, r: int) -> int:
    return 128 * r * n + 16 * 1024 * 1024  # scrypt needs 128 r N bytes, OpenSSL a bit more


def verify_password(record: dict, password: str) -> bool:
    """Whether ``password`` matches a stored :func:`hash_password` record (constant time)."""
    try:
        n, r, p = int(record["n"]), int(record["r"]), int(record["p"])
        salt = base64.b64decode(record["salt"], validate=True)
        expected = base64.b64decode(record["hash"], validate=True)
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                                maxmem=_maxmem(n, r), dklen=len(expected))
    except (KeyError, TypeError, ValueError):
        return False
    return hmac.compare_digest(digest, expected)


def read_accounts(path: str | Path) -> dict[str, dict]:
    """Every account of an accounts file: name -> ``{"created", "scrypt"}`` (empty when the
    file does not exist).

    Raises
    ------
    AccountError
        The file is not an accounts file (malformed JSON, another format, an entry without
        a hash); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AccountError(f"{path}: not an accounts file ({error}); it is written by "
                           "'hccbio review users add' only: restore it or remove it and add "
                           "the accounts again") from None
    accounts = data.get("accounts") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("format") != FORMAT
            or not isinstance(accounts, dict)):
        raise AccountError(f"{path}: not an accounts file of this version (expected "
                           f"\"format\": \"{FORMAT}\" and \"accounts\"); it is written by "
                           "'hccbio review users add' only")
    for name, entry in accounts.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("scrypt"), dict)):
            raise AccountError(f"{path}: account {name!r} has no password hash; remove it "
                               "with 'hccbio review users remove' and add it again")
    return accounts


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(path: Path, accounts: dict[str, dict]) -> None:
    text = json.dumps({"format": FORMAT, "accounts": accounts}, indent=2, sort_keys=True,
                      ensure_ascii=False)
    write_text(path, text + "\n", mode=0o600)


def add_account(path: str | Path, name: str, password: str, *, replace: bool = False,
                scrypt_n: int = SCRYPT_N) -> Account:
    """Add a reviewer account (or, with ``replace``, set a new password for one).

    Parameters
    ----------
    path
        The accounts file (created with mode ``0600`` if needed).
    name
        The reviewer's name (:func:`check_name`); no two accounts differ only in case.
    password
        At least 8 characters (:func:`check_password`); only its scrypt hash is stored.
    replace
        Set a new password for an existing account instead of refusing it.
    scrypt_n
        scrypt's cost (a power of 2; the default is OWASP's).

    Returns
    -------
    Account

    Raises
    ------
    AccountError
        A bad name or password, an existing account without ``replace`` (or a missing one
        with it), or an accounts file that cannot be read.
    """
    path = Path(path)
    check_name(name)
    check_password(password)
    with _locked(path):
        accounts = read_accounts(path)
        same = [n for n in accounts if n.casefold() == name.casefold()]
        if same and not replace:
            raise AccountError(f"{path}: account {same[0]!r} exists; give --replace to set a "
                               "new password, or choose another name")
        if replace and name not in accounts:
            raise AccountError(f"{path}: no account {name!r} to replace (accounts: "
                               f"{', '.join(sorted(accounts)) or 'none'})")
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        accounts[name] = {"created": created, "scrypt": hash_password(password, n=scrypt_n)}
        _write(path, accounts)
    return Account(name, created)


def remove_account(path: str | Path, name: str) -> None:
    """Remove a reviewer account; its sessions end at their next request.

    Raises
    ------
    AccountError
        No such account (the message lists those there), or an unreadable file.
    """
    path = Path(path)
    with _locked(path):
        accounts = read_accounts(path)
        if name not in accounts:
            raise AccountError(f"{path}: no account {name!r} (accounts: "
                               f"{', '.join(sorted(accounts)) or 'none'})")
        del accounts[name]
        _write(path, accounts)


def list_accounts(path: str | Path) -> list[Account]:
    """The accounts of a file, sorted by name (never their hashes).

    Raises
    ------
    AccountError
        An unreadable file (:func:`read_accounts`).
    """
    return [Account(name, str(entry.get("created", "")))
            for name, entry in sorted(read_accounts(path).items())]


class AccountStore:
    """The accounts file as the running app sees it: read again whenever it changes, so
    that an account added or removed takes effect without a restart.

    Sign-in stays required once the app has seen an account (fail closed): emptying or
    deleting the file while the app runs locks everyone out rather than opening the app.

    Parameters
    ----------
    path
        The accounts file.

    Raises
    ------
    AccountError
        The file exists but cannot be read when the store is made.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._accounts: dict[str, dict] = {}
        self._ever = False
        self._dummy: dict | None = None
        self._load()

    def _load(self) -> dict[str, dict]:
        try:
            info = os.stat(self.path)
            stamp: tuple | None = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._accounts = read_accounts(self.path) if stamp else {}
                self._stamp = stamp
            self._ever = self._ever or bool(self._accounts)
            return self._accounts

    def current(self) -> dict[str, dict]:
        """The accounts now; an unreadable file counts as none (and sign-in stays required
        when there were accounts)."""
        try:
            return self._load()
        except AccountError:
            with self._lock:
                self._accounts, self._stamp = {}, None
            return {}

    @property
    def required(self) -> bool:
        """Whether sign-in is required: the file holds, or has held, an account."""
        self.current()
        return self._ever

    def exists(self, name: str) -> bool:
        """Whether account ``name`` exists now."""
        return name in self.current()

    def verify(self, name: str, password: str) -> bool:
        """Whether ``name`` and ``password`` match an account. An unknown name costs the same
        scrypt work as a known one (no timing tells which names exist)."""
        entry = self.current().get(name)
        if entry is None:
            if self._dummy is None:
                self._dummy = hash_password(secrets.token_hex(16))
            verify_password(self._dummy, password)
            return False
        return verify_password(entry["scrypt"], password)
