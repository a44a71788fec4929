"""The peer registry: a small HTTP service (threaded ``http.server``), bound to one address.

Endpoints:

- ``GET /health`` → ``{"ok": true, "peers": N}``
- ``GET /api/peers`` → ``{"peers": [{"name", "addresses", "mapped", "nat", "last_seen", "age_seconds",
  ...}]}`` sorted by name; ``last_seen`` is Unix time in seconds.
- ``POST /api/peers`` with ``{"name", "addresses": ["host:port", ...], "mapped": "host:port" | null,
  "nat": str?, "mapped_by": {bootstrap: "host:port"}?}`` → ``{"ok": true, "peer": {...}}``;
  400 ``{"ok": false, "error": ...}`` on bad input.
- ``DELETE /api/peers/<name>`` → ``{"ok": true, "removed": bool}``
- ``POST /api/events`` (any JSON object; the loop's dashboard endpoint) and ``GET /api/events``
  → ``{"events": [...]}``, the most recent ``MAX_EVENTS`` kept.

With ``--data FILE`` the peers are persisted atomically (temp file + rename, ``schema_version``)
and reloaded on start.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from . import wire
from .wire import Addr

__all__ = [
    "MAX_ADDRESSES",
    "MAX_BODY",
    "MAX_EVENTS",
    "NAT_LABELS",
    "SCHEMA_VERSION",
    "BadRequest",
    "RegistryState",
    "make_server",
    "serve",
    "validate_registration",
]

log = logging.getLogger("registry")

MAX_BODY = 64 * 1024
MAX_EVENTS = 1000
MAX_ADDRESSES = 16
SCHEMA_VERSION = 1
NAT_LABELS = ("none", "full-cone", "address-restricted", "port-restricted", "symmetric", "cone", "unknown")


class BadRequest(ValueError):
    """A request the registry refuses, with the reason for the client."""


def _check_addr(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a 'host:port' string")
    try:
        wire.parse_addr(value)
    except ValueError as exc:
        raise BadRequest(f"{what}: {exc}") from None
    return value


def validate_registration(body: object) -> dict[str, Any]:
    """The peer record a registration body describes; raises BadRequest naming the bad field."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    allowed = {"name", "addresses", "mapped", "nat", "mapped_by", "version", "started_at"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    name = body.get("name")
    if not wire.valid_name(name):
        raise BadRequest("name must match [A-Za-z0-9][A-Za-z0-9._-]* (at most 64 characters)")
    addresses = body.get("addresses")
    if not isinstance(addresses, list) or not addresses or len(addresses) > MAX_ADDRESSES:
        raise BadRequest(f"addresses must be a list of 1-{MAX_ADDRESSES} 'host:port' strings")
    record: dict[str, Any] = {
        "name": name,
        "addresses": [_check_addr(a, "addresses[]") for a in addresses],
        "mapped": None,
        "nat": "unknown",
        "mapped_by": {},
    }
    mapped = body.get("mapped")
    if mapped is not None:
        record["mapped"] = _check_addr(mapped, "mapped")
    nat = body.get("nat", "unknown")
    if nat not in NAT_LABELS:
        raise BadRequest(f"nat must be one of {', '.join(NAT_LABELS)}")
    record["nat"] = nat
    mapped_by = body.get("mapped_by", {})
    if not isinstance(mapped_by, dict) or len(mapped_by) > MAX_ADDRESSES:
        raise BadRequest("mapped_by must be an object of bootstrap → 'host:port'")
    record["mapped_by"] = {
        _check_addr(k, "mapped_by key"): _check_addr(v, "mapped_by value") for k, v in mapped_by.items()
    }
    for key in ("version", "started_at"):
        if key in body:
            value = body[key]
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise BadRequest(f"{key} must be a string or number")
            record[key] = value
    return record


class RegistryState:
    """Peers and events, shared by the request threads (one lock)."""

    def __init__(self, data_file: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._peers: dict[str, dict[str, Any]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._event_seq = 0
        self._data_file = data_file
        if data_file is not None and data_file.exists():
            self._load(data_file)

    def _load(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text())
            peers = saved["peers"]
            if not isinstance(peers, list):
                raise TypeError("peers is not a list")
            for peer in peers:
                record = validate_registration(
                    {k: v for k, v in peer.items() if k not in ("last_seen", "age_seconds")}
                )
                record["last_seen"] = float(peer.get("last_seen", 0))
                self._peers[record["name"]] = record
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable registry data %s: %s", path, exc)

    def _save(self) -> None:
        if self._data_file is None:
            return
        tmp = self._data_file.with_name(self._data_file.name + ".tmp")
        payload = {"schema_version": SCHEMA_VERSION, "peers": list(self._peers.values())}
        with open(tmp, "w") as fh:
            json.dump(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._data_file)

    def register(self, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            stored = {**record, "last_seen": time.time()}
            self._peers[record["name"]] = stored
            self._save()
            return dict(stored)

    def remove(self, name: str) -> bool:
        with self._lock:
            removed = self._peers.pop(name, None) is not None
            if removed:
                self._save()
            return removed

    def peers(self) -> list[dict[str, Any]]:
        now = time.time()
        with self._lock:
            return [
                {**p, "age_seconds": round(max(0.0, now - p["last_seen"]), 3)}
                for _, p in sorted(self._peers.items())
            ]

    def count(self) -> int:
        with self._lock:
            return len(self._peers)

    def add_event(self, event: dict[str, Any]) -> int:
        with self._lock:
            self._event_seq += 1
            self._events.append({"seq": self._event_seq, "received_at": time.time(), "event": event})
            return self._event_seq

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)


class _Handler(BaseHTTPRequestHandler):
    server: _RegistryServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _read_json(self) -> object:
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            raise BadRequest("a JSON body with Content-Length is required")
        length = int(length_text)
        if length > MAX_BODY:
            raise BadRequest(f"body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        state = self.server.state
        if path == "/health":
            self._send(200, {"ok": True, "peers": state.count()})
        elif path == "/api/peers":
            self._send(200, {"peers": state.peers()})
        elif path == "/api/events":
            self._send(200, {"events": state.events()})
        else:
            self._send(404, {"ok": False, "error": f"no such endpoint: GET {path or '/'}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        state = self.server.state
        try:
            if path == "/api/peers":
                record = state.register(validate_registration(self._read_json()))
                self._send(200, {"ok": True, "peer": record})
            elif path == "/api/events":
                event = self._read_json()
                if not isinstance(event, dict):
                    raise BadRequest("an event must be a JSON object")
                self._send(200, {"ok": True, "seq": state.add_event(event)})
            else:
                self._send(404, {"ok": False, "error": f"no such endpoint: POST {path or '/'}"})
        except BadRequest as exc:
            self._send(400, {"ok": False, "error": str(exc)})

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        prefix = "/api/peers/"
        if path.startswith(prefix) and wire.valid_name(path[len(prefix) :]):
            self._send(200, {"ok": True, "removed": self.server.state.remove(path[len(prefix) :])})
        else:
            self._send(404, {"ok": False, "error": f"no such endpoint: DELETE {path or '/'}"})


class _RegistryServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 resets connections when a fleet's agents start together.
    request_queue_size = 256
    state: RegistryState


class _RegistryServer6(_RegistryServer):
    address_family = socket.AF_INET6


def make_server(bind: Addr, data_file: Path | None = None) -> _RegistryServer:
    """A registry HTTP server bound to ``bind`` (not yet serving)."""
    server = (_RegistryServer6 if ":" in bind[0] else _RegistryServer)(bind, _Handler)
    server.state = RegistryState(data_file)
    return server


def serve(bind: Addr, data_file: Path | None = None) -> int:
    """Serve the registry on ``bind`` until SIGTERM/SIGINT."""
    server = make_server(bind, data_file)

    def _stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() blocks until serve_forever returns, so it must run off the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    host, port = server.server_address[:2]
    log.info("registry listening on http://%s", wire.format_addr((str(host), int(port))))
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    log.info("registry stopped")
    return 0
