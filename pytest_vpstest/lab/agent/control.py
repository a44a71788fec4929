"""The control socket: one JSON request line in, one JSON response line out (unix stream socket).

Requests are ``{"action": NAME, ...arguments}``; the running node answers with the probe
contract's JSON object for that action. A first line ``{"action": "batch", ...}`` turns the
connection into a batch instead: request lines in, result lines out as each finishes (``batch.py``).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

from .paths import MAX_SOCKET_PATH

__all__ = ["MAX_REQUEST", "AgentNotRunning", "AlreadyRunning", "Handler", "request", "start_server"]


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024


class AgentNotRunning(Exception):
    """No agent answers on the control socket."""


class AlreadyRunning(Exception):
    """Another live agent owns the control socket."""


def _check_length(path: Path) -> None:
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        raise OSError(f"control socket path too long ({len(str(path))} > {MAX_SOCKET_PATH} bytes): {path}")


def _in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def start_server(path: Path, handler: Handler) -> asyncio.AbstractServer:
    """Listen on ``path``; a stale socket file from a dead agent is replaced."""
    # Imported here: the probe side of this module runs once per probe, and asyncio is a third
    # of a probe's start-up time.
    import asyncio

    _check_length(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if _in_use(path):
            raise AlreadyRunning(f"another agent is running with control socket {path}")
        path.unlink()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            batch: dict[str, Any] | None = None
            try:
                request = json.loads(line[:MAX_REQUEST])
                if not isinstance(request, dict) or not isinstance(request.get("action"), str):
                    raise ValueError("request must be an object with an 'action'")
                if request["action"] == "batch":
                    batch = request
                    response = {}
                else:
                    response = await handler(request)
            except ValueError as exc:
                response = {"ok": False, "error": f"bad control request: {exc}"}
            except Exception as exc:  # one broken request must never take the agent down
                import logging  # the agent's side only: a probe's start-up stays lean

                logging.getLogger("control").exception("control request failed")
                response = {"ok": False, "error": f"agent error: {type(exc).__name__}: {exc}"}
            if batch is not None:
                from .batch import serve_batch

                await serve_batch(reader, writer, handler, batch)
                return
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(serve, path=str(path))
    # Only the agent's own user may drive it.
    path.chmod(0o600)
    return server


def request(path: Path, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request to the agent at ``path`` and return its answer."""
    if not path.exists():
        raise AgentNotRunning(f"no control socket at {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise AgentNotRunning(f"{path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps(payload).encode() + b"\n")
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    finally:
        sock.close()
    answer = json.loads(b"".join(chunks))
    if not isinstance(answer, dict):
        raise ValueError("agent answered with something other than a JSON object")
    return answer
