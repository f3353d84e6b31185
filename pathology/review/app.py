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
- label and macro images are never read (tiles come from the pyramid levels only).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import threading
from collections.abc import Iterable
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pathology.review.deepzoom import TileSource
from pathology.review.pages import list_page, viewer_page
from pathology.run.decisions import (
    ReviewError,
    append_decision,
    latest_decisions,
    valid_sample_id,
)
from pathology.run.layout import RunFolder
from pathology.run.qc_summary import write_qc_summary
from pathology.run.review_log import NOT_REVIEWED
from pathology.run.tables import slide_sources

log = logging.getLogger("hccbio.review")

STATIC_DIR = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
MAX_BODY = 64 * 1024
FIGURE_KEYS = ("tissue_artefacts", "detections", "regions", "density", "registration")


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
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


class ReviewState:
    """The run folder's slides and their open tile sources (opened on first use)."""

    def __init__(self, out: Path, *, reviewer: str = "") -> None:
        self.out = Path(out)
        self.reviewer = reviewer
        self.sources = slide_sources(self.out)
        self._tiles: dict[str, TileSource] = {}
        self._lock = threading.Lock()

    def known(self, sample_id: str) -> bool:
        """Whether ``sample_id`` is a valid id of one of this run's slides."""
        return valid_sample_id(sample_id) and sample_id in self.sources

    def qc(self, sample_id: str) -> dict:
        """The slide's ``qc.json`` (empty when QC has not run)."""
        path = RunFolder(self.out).slide(sample_id).qc_json
        return json.loads(path.read_text()) if path.is_file() else {}

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

    def summary(self, sample_id: str, decisions: dict) -> dict:
        """What the list and the viewer show about one slide."""
        qc = self.qc(sample_id)
        decision = decisions.get(sample_id)
        return {"sample_id": sample_id, "qc_status": qc.get("status", "no qc"),
                "flags": qc.get("flags", []), "reasons": qc.get("reasons", []),
                "decision": decision.decision if decision else NOT_REVIEWED,
                "reviewer": decision.reviewer if decision else "",
                "time": decision.time if decision else ""}

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


def _not_found() -> Response:
    return JSONResponse({"error": "not found"}, status_code=404)


def create_app(out: Path, *, reviewer: str = "", allowed_hosts: Iterable[str] = ()
               ) -> Starlette:
    """The review app over a run folder.

    Parameters
    ----------
    out
        The run folder (``OUT/slides/<id>/features.json`` names each slide file).
    reviewer
        Default reviewer name shown in the sign-off form.
    allowed_hosts
        Host names (or addresses) requests may name besides the loopback ones: the host the
        server listens on and any name given with ``--allow-host`` (:class:`HostCheck`).

    Returns
    -------
    starlette.applications.Starlette
    """
    state = ReviewState(out, reviewer=reviewer)

    def index(request: Request) -> Response:
        decisions = latest_decisions(state.out)
        return HTMLResponse(list_page([state.summary(s, decisions) for s in state.sources]))

    def api_slides(request: Request) -> Response:
        decisions = latest_decisions(state.out)
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
        summary = state.summary(sid, latest_decisions(state.out))
        return HTMLResponse(viewer_page(summary, layers=layers, figures=figures,
                                        reviewer=state.reviewer,
                                        channels=state.tiles(sid).channel_controls()))

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
                        headers={"Cache-Control": "max-age=3600"})

    def qc_file(request: Request) -> Response:
        sid, name = request.path_params["sid"], request.path_params["name"]
        if not state.known(sid) or name not in state.allowed_files(sid):
            return _not_found()
        folder = RunFolder(state.out).slide(sid).qc.resolve()
        path = (folder / name).resolve()
        if path.parent != folder or not path.is_file():
            return _not_found()
        return Response(path.read_bytes(), media_type="image/png")

    async def review(request: Request) -> Response:
        sid = request.path_params["sid"]
        if not state.known(sid):
            return _not_found()
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send JSON"}, status_code=415)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            decision = append_decision(state.out, sid, decision=str(body.get("decision", "")),
                                       reviewer=str(body.get("reviewer", "")),
                                       comment=str(body.get("comment", "")))
        except (ReviewError, ValueError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        try:
            write_qc_summary(state.out)
        except (OSError, KeyError, ValueError) as error:  # the decision itself is saved
            log.warning("qc summary not refreshed: %s", error)
        return JSONResponse({"sample_id": decision.sample_id, "decision": decision.decision,
                             "reviewer": decision.reviewer, "time": decision.time})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = Starlette(routes=[
        Route("/", index),
        Route("/api/slides", api_slides),
        Route("/slides/{sid}", viewer),
        Route("/dzi/{sid}.dzi", dzi),
        Route("/dzi/{sid}_files/{level:int}/{col:int}_{row:int}.jpeg", tile),
        Route("/qc/{sid}/{name}", qc_file),
        Route("/api/review/{sid}", review, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ], middleware=[Middleware(SecurityHeaders),
                   Middleware(HostCheck, allowed=tuple(allowed_hosts))], lifespan=lifespan,
        max_body_size=MAX_BODY)
    app.state.review = state
    return app
