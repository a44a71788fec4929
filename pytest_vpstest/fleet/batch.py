"""Probe batches: one command per node answers many probe requests (the contract's ``batch``).

The ``probes.batch`` template starts one command on a node that reads **request lines** on stdin
and prints one **result line** per request as each finishes, in any order. A request line is a
JSON object: ``ref`` (echoed in the result, to match the two), ``action`` and the single probe's
parameters (:data:`REQUESTS`)::

    {"ref": 7, "action": "connect", "peer": "saorsa-7", "method": "holepunch", "timeout": 3}

A result line is the action's contract answer (the keys of ``probes.REQUIRED_KEYS``) plus ``ref``;
other keys are kept as evidence, and output lines that are not JSON objects with a known ``ref``
are ignored. A :class:`BatchLane` keeps one such command open per node and feeds it requests as
the engine hands them out, so attempts with a cool-off between them still share one command.

Each answer becomes a :class:`~pytest_vpstest.fleet.probes.ProbeResult` judged exactly as a single
probe's stdout is (``probes.parse_output``); its evidence names the batch command and the request.
A command that ends (or a connection that breaks) before answering makes every open request a
failed attempt saying so; the next request starts the command again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from pytest_vpstest.fleet.probes import ProbeResult, parse_output

__all__ = ["REQUESTS", "BatchLane", "Stream", "batch_request"]

# What a request says of its peer besides the name (the same values as the single probe's
# placeholders: '' when unknown).
_PEER = {"peer_address": "peer_address", "peer_id": "peer_id", "peer_public_address": "peer_public_address"}

# Contract action -> (the request's action, {request key: the probe's placeholder}).
# Every request carries ``timeout``: as for a single probe, the seconds it has to be answered.
REQUESTS: dict[str, tuple[str, dict[str, str]]] = {
    "status": ("status", {"timeout": "timeout"}),
    "connect": ("connect", {"peer": "peer", **_PEER, "method": "method", "timeout": "timeout"}),
    "gossip_publish": ("publish", {"topic": "topic", "timeout": "timeout"}),
    "gossip_received": ("received", {"id": "message_id", "timeout": "timeout"}),
    "throughput": ("throughput", {"peer": "peer", **_PEER, "seconds": "seconds", "timeout": "timeout"}),
    "crdt": ("crdt", {"increment": "amount", "timeout": "timeout"}),
}

# Lines of other output kept for a failed attempt's evidence.
_TAIL_LINES = 20


class Stream(Protocol):
    """A command with open stdin and line-read output (``remote.ChannelStream``, or a test's)."""

    def send(self, text: str) -> None: ...
    def close_input(self) -> None: ...
    def readline(self) -> str: ...
    def exit_code(self) -> int | None: ...
    def close(self) -> None: ...


Done = Callable[[ProbeResult], None]


def batch_request(action: str, ref: int, values: dict[str, Any]) -> dict[str, Any]:
    """The request line (as a dict) for one probe of the contract."""
    if action not in REQUESTS:
        raise KeyError(f"probe action {action!r} has no batch request")
    name, keys = REQUESTS[action]
    request: dict[str, Any] = {"ref": ref, "action": name}
    for key, placeholder in keys.items():
        request[key] = values[placeholder]
    return request


class BatchLane:
    """One node's batch command, opened on first use, fed requests one line at a time."""

    def __init__(self, node: str, command: str, open_stream: Callable[[str], Stream]) -> None:
        self.node = node
        self.command = command
        self._open = open_stream
        self._lock = threading.Lock()
        self._stream: Stream | None = None
        self._pending: dict[int, tuple[str, str, float, float | None, Done]] = {}
        self._next_ref = 1
        self._other: list[str] = []
        self.starts = 0  # how many times the command was started (one per lane when all is well)

    def submit(self, action: str, values: dict[str, Any], done: Done) -> None:
        """Send one request; ``done`` gets its result (from the reader thread, or at once when the
        command cannot be started)."""
        with self._lock:
            ref = self._next_ref
            self._next_ref += 1
            line = json.dumps(batch_request(action, ref, values), sort_keys=True)
            evidence = f"{self.command} <<< {line}"
            limit = _number(values.get("timeout"))
            try:
                stream = self._stream_locked()
                self._pending[ref] = (action, evidence, time.monotonic(), limit, done)
                stream.send(line + "\n")
                return
            except Exception as exc:  # the node is gone: this request is a failed attempt
                self._pending.pop(ref, None)
                self._stream = None
                reason = f"batch command not started: {type(exc).__name__}: {exc}".splitlines()[0]
        done(ProbeResult(action, self.node, evidence, None, "", "", 0.0, error=reason, timeout=limit))

    def close(self) -> None:
        """End the batch: close its stdin (the command answers what is open, then exits)."""
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close_input()

    # -- internals ------------------------------------------------------------------------
    def _stream_locked(self) -> Stream:
        if self._stream is None:
            self._stream = self._open(self.command)
            self.starts += 1
            self._other = []
            threading.Thread(
                target=self._read, args=(self._stream,), name=f"vps-batch-{self.node}", daemon=True
            ).start()
        return self._stream

    def _read(self, stream: Stream) -> None:
        while True:
            try:
                line = stream.readline()
            except Exception:  # a broken connection ends the output like EOF
                line = ""
            if not line:
                break
            self._answer(line)
        code = stream.exit_code()
        stream.close()
        with self._lock:
            if self._stream is stream:
                self._stream = None
            left, self._pending = self._pending, {}
            tail = "".join(self._other[-_TAIL_LINES:])
        status = f"exit {code}" if code is not None else "connection closed"
        for action, evidence, sent, limit, done in left.values():
            done(
                ProbeResult(
                    action,
                    self.node,
                    evidence,
                    code,
                    "",
                    tail,
                    time.monotonic() - sent,
                    error=f"batch command ended ({status}) before answering",
                    timeout=limit,
                )
            )

    def _answer(self, line: str) -> None:
        ref = _ref_of(line)
        with self._lock:
            entry = self._pending.pop(ref, None) if ref is not None else None
            if entry is None:
                self._other.append(line)
                del self._other[:-_TAIL_LINES]
                return
        action, evidence, sent, limit, done = entry
        data, error = parse_output(action, line)
        elapsed = time.monotonic() - sent
        result = ProbeResult(action, self.node, evidence, 0, line, "", elapsed, data=data, error=error)
        done(replace(result, timeout=limit))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ref_of(line: str) -> int | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    ref = value.get("ref") if isinstance(value, dict) else None
    return ref if isinstance(ref, int) and not isinstance(ref, bool) else None
