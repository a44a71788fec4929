"""Running the dashboard: bind a socket, print the URL and token, serve with uvicorn.

``DashboardServer`` runs in a background thread (the demo and the tests); ``serve`` in the
foreground (``vpstest dashboard``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import suppress

import uvicorn

from pytest_vpstest.dashboard.app import Settings, create_app

__all__ = ["DashboardServer", "serve"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class DashboardServer:
    """A dashboard on ``settings.bind``:``port`` (0: any free port). ``url`` is known after ``start``."""

    def __init__(self, settings: Settings, port: int = 0) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._sock = _bind(settings.bind, port)
        self.port = int(self._sock.getsockname()[1])
        host = f"[{settings.bind}]" if ":" in settings.bind else settings.bind
        self.url = f"http://{host}:{self.port}/"
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="dashboard", daemon=True
        )
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the dashboard did not start")
            self._thread.join(0.02)
        return self

    def stop(self) -> None:
        self.app.state.hub.shutdown()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        with suppress(OSError):
            self._sock.close()

    def run(self) -> None:
        """Serve in this thread until interrupted."""
        self._server.run(sockets=[self._sock])


def serve(settings: Settings, port: int, say: Callable[[str], None] = print) -> None:
    server = DashboardServer(settings, port)
    say(f"dashboard: {server.url}")
    say(f"dashboard: token for Run tests / Rollback (and the runner's POSTs): {settings.token}")
    say(f"dashboard: runner POSTs go to {server.url}api/events (notify.dashboard_url)")
    server.run()
