"""The dashboard's web application (Starlette): page, JSON views, event streams, actions.

Routes (all values reach the page as JSON and are put into it as text, never as markup):

- ``GET /``, ``/static/*``: the page and its script and style, served from the package (no CDN);
- ``GET /api/overview``, ``/api/projects/{p}``, ``/api/projects/{p}/history``,
  ``/api/projects/{p}/nodes/{n}``: the views;
- ``GET /api/stream``: server-sent events, ``changed`` (a project's files changed) and ``event``
  (a runner's POST);
- ``GET /api/projects/{p}/log``: server-sent log lines, the runner's log or a node's test output;
- ``GET /projects/{p}/proof/{name}``, ``/projects/{p}/runs/{id}``, ``/projects/{p}/files/{path}``:
  the proof rendered, a history run, results and logs;
- ``POST /api/events``: the runner's notifications (bearer token);
- ``POST /api/projects/{p}/nodes/{n}/run-tests`` and ``.../rollback``: the actions (bearer token).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pytest_vpstest.config import ProjectConfig
from pytest_vpstest.dashboard import files
from pytest_vpstest.dashboard.actions import ActionRunner
from pytest_vpstest.dashboard.hub import Hub
from pytest_vpstest.dashboard.markdown import render_markdown
from pytest_vpstest.dashboard.reader import StateReader
from pytest_vpstest.errors import VpsTestError
from pytest_vpstest.records.store import is_safe_identifier

__all__ = ["CSP", "Settings", "create_app"]

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# pytest-html reports carry their own inline script: shown sandboxed, in an origin of their own.
_REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:"
)
_FILE_SUFFIXES = {
    ".json": "application/json",
    ".html": "text/html",
    ".log": "text/plain",
    ".md": "text/plain",
    ".txt": "text/plain",
    ".jsonl": "text/plain",
}
_MAX_EVENT_BYTES = 1 << 20


@dataclass
class Settings:
    """How the dashboard runs: where the state is, the token, the bind address (for host checks)."""

    state_dir: Path
    token: str
    configs: Mapping[str, ProjectConfig] = field(default_factory=dict)
    bind: str = "127.0.0.1"
    poll_interval: float = 0.2
    clock: Callable[[], float] = time.time


class _SecurityHeaders:
    """CSP, nosniff and no-referrer on every response (a second wall behind the escaping)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        report = scope.get("path", "").endswith(".html") and "/files/" in scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", (_REPORT_CSP if report else CSP).encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: Settings) -> Starlette:
    reader = StateReader(settings.state_dir, settings.configs)
    hub = Hub(settings.state_dir, reader.projects, settings.poll_interval)
    actions = ActionRunner(settings.state_dir, hub.changed)

    def authorised(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), settings.token.encode()
        )

    def project_of(request: Request) -> str:
        project = request.path_params["project"]
        if not is_safe_identifier(project) or project not in reader.projects():
            raise _NotFound(f"no project {project!r} in {settings.state_dir}")
        return str(project)

    async def in_thread(call: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(call)

    # -- pages -------------------------------------------------------------------------------
    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def overview(request: Request) -> Response:
        return JSONResponse(await in_thread(lambda: reader.overview(settings.clock())))

    async def project(request: Request) -> Response:
        p = project_of(request)
        return JSONResponse(await in_thread(lambda: reader.project_view(p, settings.clock())))

    async def history(request: Request) -> Response:
        p = project_of(request)
        return JSONResponse(await in_thread(lambda: reader.history_charts(p)))

    async def node(request: Request) -> Response:
        p = project_of(request)
        n = request.path_params["node"]
        view = await in_thread(lambda: reader.node_view(p, n, settings.clock()))
        return JSONResponse(view) if view is not None else _error(404, f"no node {n!r} in {p}")

    async def proof(request: Request) -> Response:
        p = project_of(request)
        name = request.path_params["name"]
        path = reader.project_dir(p) / name
        if (
            not (name.startswith("proof-") and name.endswith(".md") and is_safe_identifier(name))
            or not path.is_file()
        ):
            return _error(404, f"no proof {name!r} in {p}")
        body = render_markdown(path.read_text(encoding="utf-8", errors="replace"))
        return HTMLResponse(_page(f"{p}: {name}", body))

    async def run_page(request: Request) -> Response:
        p = project_of(request)
        run_id = request.path_params["run_id"]
        detail = await in_thread(lambda: reader.run_detail(p, run_id))
        if detail is None:
            return _error(404, f"no run {run_id!r} in {p}")
        body = "<pre>" + html.escape(json.dumps(detail, indent=2, default=str)) + "</pre>"
        return HTMLResponse(_page(f"{p}: run {run_id}", body))

    async def project_file(request: Request) -> Response:
        p = project_of(request)
        rel = request.path_params["path"]
        base = reader.project_dir(p).resolve()
        path = (base / rel).resolve()
        kind = _FILE_SUFFIXES.get(path.suffix)
        if kind is None or not path.is_relative_to(base) or not path.is_file() or "/dashboard/" in f"/{rel}":
            return _error(404, f"no file {rel!r} in {p}")
        return FileResponse(path, media_type=kind)

    # -- streams -----------------------------------------------------------------------------
    async def stream(request: Request) -> Response:
        queue = hub.subscribe()

        async def frames() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\nevent: hello\ndata: {}\n\n"
                while True:
                    try:
                        frame = await asyncio.wait_for(queue.get(), timeout=15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if not frame:  # the server is stopping
                        return
                    yield frame
            finally:
                hub.unsubscribe(queue)

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def log_stream(request: Request) -> Response:
        p = project_of(request)
        n = request.query_params.get("node")
        if n:
            run = files.latest_test_run(reader.project_dir(p), n)
            if run is None:
                return _error(404, f"no test run of {n!r} in {p}")
            path = Path(run["dir"]) / "output.log"
        else:
            path = reader.project_dir(p) / "runner.log"
        async def gone() -> bool:
            return hub.closing or await request.is_disconnected()

        return StreamingResponse(_follow(path, gone), media_type="text/event-stream")

    # -- writes ------------------------------------------------------------------------------
    async def runner_event(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "runner POSTs need 'Authorization: Bearer <dashboard token>'")
        body = await request.body()
        if len(body) > _MAX_EVENT_BYTES:
            return _error(413, "event larger than 1 MB")
        try:
            event = json.loads(body)
        except ValueError:
            return _error(400, "event body is not JSON")
        if not isinstance(event, dict) or not isinstance(event.get("project"), str):
            return _error(400, "event must be a JSON object with a 'project' string")
        hub.publish("event", {k: event.get(k) for k in ("project", "kind", "message", "time", "seq")})
        hub.publish("changed", {"project": event["project"]})
        return JSONResponse({"ok": True})

    def _action_target(request: Request) -> tuple[ProjectConfig, Any, str]:
        p = project_of(request)
        n = request.path_params["node"]
        pf = reader.project_files(p)
        if pf.config is None or pf.inventory is None:
            raise VpsTestError(f"{p}: the project's config and inventory are not known (pass --config)")
        return pf.config, pf.inventory, n

    async def run_tests(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "run tests needs the dashboard token")
        config, inventory, n = _action_target(request)
        run_dir = actions.run_tests(config, inventory, n)
        return JSONResponse({"ok": True, "run": run_dir.name}, status_code=202)

    async def rollback(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "rollback needs the dashboard token")
        config, inventory, n = _action_target(request)
        after = None
        if config.dashboard.tests_mode(n) == "auto":

            def after() -> None:
                with contextlib.suppress(VpsTestError):
                    actions.run_tests(config, inventory, n)

        actions.rollback(config, inventory, n, after=after)
        return JSONResponse({"ok": True}, status_code=202)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.start()
        try:
            yield
        finally:
            await hub.stop()

    middleware = [Middleware(_SecurityHeaders)]
    if settings.bind in ("127.0.0.1", "localhost", "::1"):
        # A page on another site cannot reach a loopback dashboard through DNS rebinding.
        middleware.append(
            Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]"])
        )
    app = Starlette(
        routes=[
            Route("/", index),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/api/overview", overview),
            Route("/api/stream", stream),
            Route("/api/events", runner_event, methods=["POST"]),
            Route("/api/projects/{project}", project),
            Route("/api/projects/{project}/history", history),
            Route("/api/projects/{project}/log", log_stream),
            Route("/api/projects/{project}/nodes/{node}", node),
            Route("/api/projects/{project}/nodes/{node}/run-tests", run_tests, methods=["POST"]),
            Route("/api/projects/{project}/nodes/{node}/rollback", rollback, methods=["POST"]),
            Route("/projects/{project}/proof/{name}", proof),
            Route("/projects/{project}/runs/{run_id}", run_page),
            Route("/projects/{project}/files/{path:path}", project_file),
        ],
        middleware=middleware,
        exception_handlers={_NotFound: _not_found, VpsTestError: _refused},
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.state.reader = reader
    app.state.actions = actions
    return app


class _NotFound(Exception):
    pass


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, str(exc))


async def _refused(request: Request, exc: Exception) -> Response:
    return _error(409, str(exc))


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<link rel='stylesheet' href='/static/dashboard.css'></head>"
        f"<body class='doc'><p><a href='/'>&larr; dashboard</a></p>{body}</body></html>"
    )


async def _follow(
    path: Path, disconnected: Callable[[], Awaitable[bool]], backlog: int = 200, interval: float = 0.2
) -> AsyncIterator[bytes]:
    """SSE ``line`` events: the last ``backlog`` lines of ``path``, then each new line as it is written."""
    yield b"retry: 1000\n\n"
    offset = 0
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        lines = data.split(b"\n")
        tail = lines[-backlog - 1 :]
        offset = len(data) - len(tail[-1])  # an unfinished last line is sent once complete
        for line in tail[:-1]:
            yield _line_frame(line)
    partial = b""
    idle = 0.0
    while not await disconnected():
        try:
            size = path.stat().st_size
        except OSError:
            size = offset
        if size < offset:  # replaced or truncated: start again from its beginning
            offset, partial = 0, b""
        if size > offset:
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read(size - offset)
            offset = size
            *complete, partial = (partial + chunk).split(b"\n")
            for line in complete:
                yield _line_frame(line)
            idle = 0.0
        else:
            idle += interval
            if idle >= 15:
                yield b": keep-alive\n\n"
                idle = 0.0
        await asyncio.sleep(interval)


def _line_frame(line: bytes) -> bytes:
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    return b"event: line\ndata: " + json.dumps(text).encode() + b"\n\n"
