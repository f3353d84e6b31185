"""The pathologist's review web app (Starlette): slide list, deep-zoom viewer, sign-off.

Safety:

- only slides of the run folder are served: a sample id must match
  :data:`~pathology.run.decisions.SAMPLE_ID_RE` and be one of the run's slides, so no path
  is ever built from unchecked input; QC images are served only if their names are in the
  slide's ``qc.json``;
- every page is built with :func:`html.escape`; a Content-Security-Policy forbids inline
  scripts and any origin but this one;
- decisions are accepted as JSON only (a cross-site form cannot post one) and from this
  origin only;
- every request must name this server in its ``Host`` header (a loopback name or address, or
  a host the server was started for): a page on another site whose DNS name is re-pointed
  at 127.0.0.1 (DNS rebinding) sends its own name and is refused;
- label and macro images are never read (tiles come from the pyramid levels only);
- with reviewer accounts (:mod:`.accounts`) every page, tile and API call needs a signed-in
  session (:mod:`.auth`: an HttpOnly, SameSite=Strict cookie), a sign-off also the session's
  CSRF token in ``X-CSRF-Token``, and the review log records the signed-in account, never a
  name from the request; wrong passwords are rate-limited; without accounts (a single user
  on their own machine, loopback only) the form's typed name is recorded, as text only;
- the review log's hash chain is verified at start and on every read: a log that does not
  verify is refused (HTTP 409, nothing appended).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pathology.review.accounts import AccountStore
from pathology.review.auth import (
    COOKIE,
    IDLE_S,
    LOGIN_ATTEMPTS,
    LOGIN_WINDOW_S,
    MAX_S,
    LoginLimiter,
    Session,
    Sessions,
)
from pathology.review.deepzoom import TileSource
from pathology.review.pages import error_page, list_page, login_page, viewer_page
from pathology.run.decisions import (
    ReviewError,
    append_decision,
    read_decisions,
    valid_sample_id,
)
from pathology.run.layout import RunFolder
from pathology.run.qc_summary import write_qc_summary
from pathology.run.review_log import (
    ACCOUNT,
    EARLIER_RESULT_NOTE,
    NOT_REVIEWED,
    TYPED,
    Decision,
    ReviewChainError,
    parse_log,
    result_digest,
    review_path,
    standing,
)
from pathology.run.tables import slide_sources

log = logging.getLogger("hccbio.review")

STATIC_DIR = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cache-Control": "no-store"}
MAX_BODY = 64 * 1024
FIGURE_KEYS = ("tissue_artefacts", "detections", "regions", "density", "registration")


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response (static files may
    be cached: they hold no data of the run)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                static = scope.get("path", "").startswith("/static/")
                for key, value in SECURITY_HEADERS.items():
                    if not (static and key == "Cache-Control"):
                        headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


LOOPBACK_HOSTS = ("localhost", "localhost.localdomain", "ip6-localhost")


def host_name(header: str) -> str | None:
    """The host name of a ``Host`` header, lower case, without port or trailing dot (None
    when malformed).

    Examples
    --------
    >>> host_name("127.0.0.1:8000"), host_name("[::1]:80"), host_name("Example.ORG.")
    ('127.0.0.1', '::1', 'example.org')
    """
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            return None
        name = header[1:end]
    elif header.count(":") > 1:  # a bare IPv6 address
        name = header
    else:
        name = header.split(":", 1)[0]
    name = name.rstrip(".")
    return name or None


class HostCheck:
    """ASGI middleware: 400 without a ``Host`` header, 403 unless it names this server.

    Allowed are the loopback names (:data:`LOOPBACK_HOSTS`), every loopback address
    (127.0.0.0/8, ::1) and ``allowed`` (the host the server listens on, names given with
    ``--allow-host``).
    """

    def __init__(self, app, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {n for n in (host_name(h) for h in (*LOOPBACK_HOSTS, *allowed)) if n}

    def permits(self, name: str) -> bool:
        """Whether a request naming host ``name`` is served."""
        if name in self.allowed:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        raw = headers.get(b"host")
        name = host_name(raw.decode("latin-1")) if raw else None
        if name is None:
            response = JSONResponse({"error": "missing or malformed Host header"},
                                    status_code=400)
        elif not self.permits(name):
            log.warning("refused a request for host %r (DNS rebinding?)", name)
            response = JSONResponse({"error": f"host {name!r} is not served here; open the "
                                     "review app by the address 'hccbio review' printed, or "
                                     "start it with --allow-host " + name}, status_code=403)
        else:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await response(scope, receive, send)


SESSION_KEY = "hccbio.session"
PAGE_PREFIXES = ("/slides/",)
PUBLIC_PATHS = ("/login", "/api/login")


def _safe_next(target: str | None) -> str:
    """A local path to return to after sign-in (``/`` for anything else: no open redirect).

    Examples
    --------
    >>> _safe_next("/slides/s1"), _safe_next("//evil.example/x"), _safe_next("https://x")
    ('/slides/s1', '/', '/')
    """
    if (not target or not target.startswith("/") or target.startswith(("//", "/\\"))
            or any(ch in target for ch in "\r\n\\")):
        return "/"
    return target


class ReviewState:
    """The run folder's slides, their open tile sources (opened on first use), the reviewer
    accounts and the signed-in sessions."""

    def __init__(self, out: Path, *, reviewer: str = "", users: Path | None = None,
                 session_idle_s: float = IDLE_S, session_max_s: float = MAX_S,
                 login_attempts: int = LOGIN_ATTEMPTS, login_window_s: float = LOGIN_WINDOW_S
                 ) -> None:
        self.out = Path(out)
        self.reviewer = reviewer
        self.sources = slide_sources(self.out)
        self.accounts = AccountStore(users if users is not None
                                     else RunFolder(self.out).reviewers)
        self.sessions = Sessions(idle_s=session_idle_s, max_s=session_max_s)
        self.limiter = LoginLimiter(attempts=login_attempts, window_s=login_window_s)
        self._tiles: dict[str, TileSource] = {}
        self._results: dict[str, tuple[tuple, str]] = {}
        self._lock = threading.Lock()

    def known(self, sample_id: str) -> bool:
        """Whether ``sample_id`` is a valid id of one of this run's slides."""
        return valid_sample_id(sample_id) and sample_id in self.sources

    def qc(self, sample_id: str) -> dict:
        """The slide's ``qc.json`` (empty when QC has not run)."""
        path = RunFolder(self.out).slide(sample_id).qc_json
        return json.loads(path.read_text()) if path.is_file() else {}

    def result(self, sample_id: str) -> str:
        """The slide's result digest now (:func:`pathology.run.review_log.result_digest`),
        computed again only when its ``features.json`` or ``qc.json`` changed."""
        folder = RunFolder(self.out).slide(sample_id)
        stamp = tuple(_stamp(p) for p in (folder.features, folder.qc_json))
        with self._lock:
            cached = self._results.get(sample_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        digest = result_digest(folder.root)
        with self._lock:
            self._results[sample_id] = (stamp, digest)
        return digest

    def decisions(self) -> list[Decision]:
        """Every decision of the review log, its chain verified (:class:`ReviewError` if
        not)."""
        return read_decisions(self.out)

    def tiles(self, sample_id: str) -> TileSource:
        """The slide's tile source (opened once)."""
        with self._lock:
            if sample_id not in self._tiles:
                path = self.sources[sample_id][0]
                backend = self.qc(sample_id).get("slide", {}).get("backend")
                if backend is None:
                    record = json.loads(RunFolder(self.out).slide(sample_id).features
                                        .read_text())
                    backend = record.get("slide", {}).get("backend", "openslide")
                # the manifest's mpp, as the pipeline had it: a TIFF without pixel-size
                # metadata cannot be opened without it
                colors = (self.qc(sample_id).get("display") or {}).get("colors")
                self._tiles[sample_id] = TileSource(path, backend=backend,
                                                    mpp=self.sources[sample_id][1],
                                                    colors=colors)
            return self._tiles[sample_id]

    def summary(self, sample_id: str, decisions: dict[str, Decision]) -> dict:
        """What the list and the viewer show about one slide."""
        qc = self.qc(sample_id)
        decision = decisions.get(sample_id)
        earlier = decision is not None and decision.approved_earlier_result(
            self.result(sample_id))
        return {"sample_id": sample_id, "qc_status": qc.get("status", "no qc"),
                "flags": qc.get("flags", []), "reasons": qc.get("reasons", []),
                "decision": decision.decision if decision else NOT_REVIEWED,
                "reviewer": decision.reviewer if decision else "",
                "time": decision.time if decision else "",
                "note": EARLIER_RESULT_NOTE if earlier else ""}

    def allowed_files(self, sample_id: str) -> set[str]:
        """QC image names this slide may serve (those listed in its ``qc.json``)."""
        files = self.qc(sample_id).get("files", {})
        names = {files.get(k) for k in (*FIGURE_KEYS, "thumbnail")}
        names |= set(files.get("layers", {}).values())
        names |= {c[k] for c in files.get("crops", []) for k in ("image", "overlay")}
        return {n for n in names if n and n.endswith(".png") and "/" not in n}

    def close(self) -> None:
        """Release every open slide."""
        for source in self._tiles.values():
            source.close()


def _stamp(path: Path) -> tuple:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return ()
    return (info.st_ino, info.st_mtime_ns, info.st_size)


class SignInGate:
    """ASGI middleware: with reviewer accounts, every request but the sign-in page, the
    sign-in call and static files needs a live session. A page asked for without one is
    redirected to ``/login``; anything else gets 401. The session (or None) is left in the
    request's scope under :data:`SESSION_KEY`."""

    def __init__(self, app, state: ReviewState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        session = self.state.sessions.get(request.cookies.get(COOKIE))
        if session is not None and not self.state.accounts.exists(session.user):
            self.state.sessions.end(session.token)  # the account was removed
            session = None
        scope[SESSION_KEY] = session
        path = scope.get("path", "")
        if (session is not None or not self.state.accounts.required
                or path in PUBLIC_PATHS or path.startswith("/static/")):
            await self.app(scope, receive, send)
            return
        if request.method in ("GET", "HEAD") and (path == "/" or path.startswith(
                PAGE_PREFIXES)):
            target = path + (f"?{scope['query_string'].decode('latin-1')}"
                             if scope.get("query_string") else "")
            response: Response = RedirectResponse("/login?" + urlencode({"next": target}),
                                                  status_code=303)
        else:
            response = JSONResponse({"error": "not signed in, or the session expired: sign "
                                     "in at /login (POST /api/login with user and password)"},
                                    status_code=401)
        await response(scope, receive, send)


def _not_found() -> Response:
    return JSONResponse({"error": "not found"}, status_code=404)


def _json_type(value) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _text(body: dict, field: str) -> str:
    """A text field of a JSON body (``""`` when absent); anything but a string is refused,
    so JSON null is never stored as "None"."""
    value = body.get(field, "")
    if not isinstance(value, str):
        raise ValueError(f"'{field}' must be text (a JSON string), not {_json_type(value)}")
    return value


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() == "application/json"


def create_app(out: Path, *, reviewer: str = "", allowed_hosts: Iterable[str] = (),
               users: Path | None = None, session_idle_s: float = IDLE_S,
               session_max_s: float = MAX_S, login_attempts: int = LOGIN_ATTEMPTS,
               login_window_s: float = LOGIN_WINDOW_S) -> Starlette:
    """The review app over a run folder.

    Parameters
    ----------
    out
        The run folder (``OUT/slides/<id>/features.json`` names each slide file).
    reviewer
        Default reviewer name shown in the sign-off form of an app without accounts.
    allowed_hosts
        Host names (or addresses) requests may name besides the loopback ones: the host the
        server listens on and any name given with ``--allow-host`` (:class:`HostCheck`).
    users
        The reviewer accounts file (default ``OUT/qc/reviewers.json``). With an account in
        it, sign-in is required (:class:`SignInGate`) and each sign-off records the
        signed-in account; without, the name typed in the form is recorded.
    session_idle_s, session_max_s
        A session ends after this long without a request / after sign-in.
    login_attempts, login_window_s
        Wrong passwords allowed per account name and per client address in any window
        (:class:`pathology.review.auth.LoginLimiter`); beyond them HTTP 429.

    Returns
    -------
    starlette.applications.Starlette

    Raises
    ------
    pathology.run.review_log.ReviewError
        The review log breaks its contract or its hash chain does not verify (the message
        names the line).
    pathology.review.accounts.AccountError
        The accounts file cannot be read.
    """
    state = ReviewState(out, reviewer=reviewer, users=users, session_idle_s=session_idle_s,
                        session_max_s=session_max_s, login_attempts=login_attempts,
                        login_window_s=login_window_s)
    state.decisions()  # refuse a log that does not verify before serving anything

    def session_of(request: Request) -> Session | None:
        return request.scope.get(SESSION_KEY)

    def page_user(request: Request) -> dict | None:
        session = session_of(request)
        return {"name": session.user, "csrf": session.csrf} if session else None

    def index(request: Request) -> Response:
        rows = state.decisions()
        decisions = standing(rows)
        head = parse_log(review_path(state.out)).head if rows else ""
        return HTMLResponse(list_page([state.summary(s, decisions) for s in state.sources],
                                      user=page_user(request),
                                      log={"lines": len(rows), "head": head}))

    def api_slides(request: Request) -> Response:
        decisions = standing(state.decisions())
        return JSONResponse([state.summary(s, decisions) for s in state.sources])

    def viewer(request: Request) -> Response:
        sid = request.path_params["sid"]
        if not state.known(sid):
            return _not_found()
        qc = state.qc(sid)
        files = qc.get("files", {})
        slide = qc.get("slide", {})
        layers = {}
        shape = qc.get("overview_shape")
        if shape and slide.get("dimensions"):
            ratio = (shape[1] * qc["metrics"]["overview_mpp"]) / (
                slide["dimensions"][0] * slide["mpp_x"])
            layers = {name: {"url": f"/qc/{sid}/{file}", "width": ratio}
                      for name, file in files.get("layers", {}).items()}
        figures = [f"/qc/{sid}/{files[k]}" for k in FIGURE_KEYS if files.get(k)]
        figures += [f"/qc/{sid}/{c[k]}" for c in files.get("crops", [])
                    for k in ("image", "overlay")]
        rows = state.decisions()
        current = state.result(sid)
        history = [{"decision": d.decision, "reviewer": d.reviewer, "time": d.time,
                    "comment": d.comment, "source": d.reviewer_source,
                    "result": ("" if not d.result_sha256 or not current else
                               "this result" if d.result_sha256 == current
                               else "an earlier result")}
                   for d in rows if d.sample_id == sid]
        summary = state.summary(sid, standing(rows))
        return HTMLResponse(viewer_page(summary, layers=layers, figures=figures,
                                        reviewer=state.reviewer,
                                        channels=state.tiles(sid).channel_controls(),
                                        user=page_user(request),
                                        accounts=state.accounts.required,
                                        history=history, result=current))

    def dzi(request: Request) -> Response:
        sid = request.path_params["sid"]
        if not state.known(sid):
            return _not_found()
        return Response(state.tiles(sid).dzi(), media_type="application/xml")

    def tile(request: Request) -> Response:
        sid = request.path_params["sid"]
        if not state.known(sid):
            return _not_found()
        p = request.path_params
        source = state.tiles(sid)
        try:
            display = source.parse_display(request.query_params.get("ch"))
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        try:
            data = source.tile_jpeg(p["level"], p["col"], p["row"], display)
        except ValueError:
            return _not_found()
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    def qc_file(request: Request) -> Response:
        sid, name = request.path_params["sid"], request.path_params["name"]
        if not state.known(sid) or name not in state.allowed_files(sid):
            return _not_found()
        folder = RunFolder(state.out).slide(sid).qc.resolve()
        path = (folder / name).resolve()
        if path.parent != folder or not path.is_file():
            return _not_found()
        return Response(path.read_bytes(), media_type="image/png")

    def csrf_refused(request: Request) -> Response | None:
        """403 unless a signed-in request carries its session's CSRF token."""
        session = session_of(request)
        if state.accounts.required and (
                session is None or not session.csrf_ok(request.headers.get("x-csrf-token"))):
            return JSONResponse({"error": "missing or wrong X-CSRF-Token header (the token "
                                 "/api/login returned): reload the page"}, status_code=403)
        return None

    async def review(request: Request) -> Response:
        sid = request.path_params["sid"]
        if not state.known(sid):
            return _not_found()
        refused = csrf_refused(request)
        if refused is not None:
            return refused
        if not _same_origin(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        if not _is_json(request):
            return JSONResponse({"error": "send JSON"}, status_code=415)
        session = session_of(request)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            decision_text, comment = _text(body, "decision"), _text(body, "comment")
            if session is not None:  # the signed-in account, never a field of the request
                name, source = session.user, ACCOUNT
            else:
                name, source = _text(body, "reviewer"), TYPED
            current = await run_in_threadpool(state.result, sid)
            seen = body.get("result_sha256")
            if seen is not None and seen != current:
                return JSONResponse({"error": "the slide was computed again since this page "
                                     "was opened: reload it and review the result it shows "
                                     "now"}, status_code=409)
            decision = await run_in_threadpool(
                append_decision, state.out, sid, decision=decision_text, reviewer=name,
                comment=comment, reviewer_source=source, result_sha256=current)
        except ReviewChainError as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        except (ReviewError, ValueError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        try:
            await run_in_threadpool(write_qc_summary, state.out)
        except (OSError, KeyError, ValueError) as error:  # the decision itself is saved
            log.warning("qc summary not refreshed: %s", error)
        return JSONResponse({"sample_id": decision.sample_id, "decision": decision.decision,
                             "reviewer": decision.reviewer, "time": decision.time,
                             "reviewer_source": decision.reviewer_source,
                             "result_sha256": decision.result_sha256})

    def login_form(request: Request) -> Response:
        target = _safe_next(request.query_params.get("next"))
        return HTMLResponse(login_page(target, accounts=state.accounts.required,
                                       user=page_user(request)))

    async def login(request: Request) -> Response:
        if not state.accounts.required:
            return JSONResponse({"error": "this review app has no reviewer accounts: sign-in "
                                 "is not needed (add one with 'hccbio review users add')"},
                                status_code=404)
        if not _same_origin(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        if not _is_json(request):
            return JSONResponse({"error": "send JSON"}, status_code=415)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            name, password = _text(body, "user"), _text(body, "password")
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        client = request.client.host if request.client else "unknown"
        keys = [f"user:{name.casefold()}", f"address:{client}"]
        wait = state.limiter.retry_after(keys)
        if wait > 0:
            log.warning("sign-in refused for %r from %s: too many wrong passwords", name,
                        client)
            return JSONResponse({"error": f"too many wrong passwords: try again in "
                                 f"{int(wait) + 1} s"}, status_code=429,
                                headers={"Retry-After": str(int(wait) + 1)})
        if not name or not password or not await run_in_threadpool(
                state.accounts.verify, name, password):
            state.limiter.failed(keys)
            log.warning("wrong user name or password for %r from %s", name, client)
            return JSONResponse({"error": "wrong user name or password"}, status_code=401)
        state.limiter.clear(keys[0])
        state.sessions.end(request.cookies.get(COOKIE))  # a new token at every sign-in
        session = state.sessions.start(name)
        response = JSONResponse({"user": session.user, "csrf_token": session.csrf,
                                 "idle_timeout_s": state.sessions.idle_s})
        response.set_cookie(COOKIE, session.token, max_age=int(state.sessions.max_s),
                            path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    def session_info(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return JSONResponse({"user": None, "accounts": state.accounts.required})
        return JSONResponse({"user": session.user, "csrf_token": session.csrf,
                             "accounts": True})

    def logout(request: Request) -> Response:
        refused = csrf_refused(request)
        if refused is not None:
            return refused
        session = session_of(request)
        if session is not None:
            state.sessions.end(session.token)
        response = JSONResponse({"signed_out": session is not None})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def review_log_refused(request: Request, error: Exception) -> Response:
        """A review log that does not verify (or breaks its contract): 409, nothing shown
        from it and nothing appended."""
        log.error("%s", error)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(error)}, status_code=409)
        return HTMLResponse(error_page("The review log does not verify", str(error)),
                            status_code=409)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = Starlette(routes=[
        Route("/", index),
        Route("/login", login_form),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/session", session_info),
        Route("/api/slides", api_slides),
        Route("/slides/{sid}", viewer),
        Route("/dzi/{sid}.dzi", dzi),
        Route("/dzi/{sid}_files/{level:int}/{col:int}_{row:int}.jpeg", tile),
        Route("/qc/{sid}/{name}", qc_file),
        Route("/api/review/{sid}", review, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ], middleware=[Middleware(SecurityHeaders),
                   Middleware(HostCheck, allowed=tuple(allowed_hosts)),
                   Middleware(SignInGate, state=state)], lifespan=lifespan,
        exception_handlers={ReviewError: review_log_refused}, max_body_size=MAX_BODY)
    app.state.review = state
    return app
