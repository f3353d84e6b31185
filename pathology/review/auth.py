"""Sign-in sessions of the review app and the limit on wrong passwords.

A session lives in the server's memory only (a restart signs everyone out). Its token travels
in an HttpOnly, SameSite=Strict cookie that page scripts cannot read and other sites cannot
make the browser send; its CSRF token is sent back by the page in the ``X-CSRF-Token`` header
of every state-changing request. A session ends after ``idle_s`` without a request or
``max_s`` after sign-in, whichever comes first.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

COOKIE = "hccbio_session"
CSRF_HEADER = "X-CSRF-Token"
IDLE_S = 60 * 60
MAX_S = 12 * 60 * 60
MAX_SESSIONS = 1000
LOGIN_ATTEMPTS = 5
LOGIN_WINDOW_S = 5 * 60


@dataclass
class Session:
    """One signed-in reviewer.

    Attributes
    ----------
    token
        The cookie's value.
    user
        The account name (what the review log records).
    csrf
        The token state-changing requests must send in ``X-CSRF-Token``.
    started, seen
        When it was signed in and last used (the store's clock, seconds).
    """

    token: str
    user: str
    csrf: str
    started: float
    seen: float

    def csrf_ok(self, sent: str | None) -> bool:
        """Whether ``sent`` is this session's CSRF token (constant-time comparison)."""
        return bool(sent) and hmac.compare_digest(sent.encode(), self.csrf.encode())


class Sessions:
    """The open sessions, thread-safe.

    Parameters
    ----------
    idle_s
        A session unused this long ends.
    max_s
        A session ends this long after sign-in, used or not.
    clock
        Seconds (monotonic); tests may pass their own.

    Examples
    --------
    >>> now = [0.0]
    >>> store = Sessions(idle_s=10, max_s=100, clock=lambda: now[0])
    >>> session = store.start("Dr A")
    >>> store.get(session.token).user
    'Dr A'
    >>> now[0] = 11.0
    >>> store.get(session.token) is None
    True
    """

    def __init__(self, *, idle_s: float = IDLE_S, max_s: float = MAX_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s, self.max_s, self.clock = float(idle_s), float(max_s), clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.seen > self.idle_s or now - session.started > self.max_s

    def start(self, user: str) -> Session:
        """A new session for ``user`` (the oldest is dropped beyond 1,000)."""
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        with self._lock:
            for token in [t for t, s in self._sessions.items() if self._expired(s, now)]:
                del self._sessions[token]
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[min(self._sessions, key=lambda t: self._sessions[t].seen)]
            self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token`` (its idle time restarts), or None."""
        if not token:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if self._expired(session, now):
                del self._sessions[token]
                return None
            session.seen = now
            return session

    def end(self, token: str | None) -> None:
        """End a session (nothing when there is none)."""
        with self._lock:
            self._sessions.pop(token or "", None)


class LoginLimiter:
    """At most ``attempts`` wrong passwords per key (an account name, a client address) in
    any ``window_s`` seconds; beyond them sign-in is refused until the oldest leaves the
    window, without checking the password.

    Examples
    --------
    >>> now = [0.0]
    >>> limit = LoginLimiter(attempts=2, window_s=60, clock=lambda: now[0])
    >>> for _ in range(2):
    ...     limit.failed(["user:a"])
    >>> limit.retry_after(["user:a"]), limit.retry_after(["user:b"])
    (60.0, 0.0)
    >>> now[0] = 61.0
    >>> limit.retry_after(["user:a"])
    0.0
    """

    def __init__(self, *, attempts: int = LOGIN_ATTEMPTS, window_s: float = LOGIN_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts, self.window_s, self.clock = int(attempts), float(window_s), clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            times = self._failures[key]
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if not times:
                del self._failures[key]

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until sign-in may be tried again for these keys (0: now)."""
        now = self.clock()
        with self._lock:
            self._prune(now)
            waits = [self.window_s - (now - times[0]) for key in keys
                     if len(times := self._failures.get(key, ())) >= self.attempts]
        return float(max(waits, default=0.0))

    def failed(self, keys: Iterable[str]) -> None:
        """Count a wrong password against each key."""
        now = self.clock()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, deque(maxlen=self.attempts)).append(now)

    def clear(self, key: str) -> None:
        """Forget a key's wrong passwords (after a successful sign-in)."""
        with self._lock:
            self._failures.pop(key, None)
