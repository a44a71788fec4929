"""Batch probes: many probe requests over one control connection, answered as each finishes.

``agent probe batch`` reads request lines (JSON objects) on stdin and prints one JSON result line
per request, in the order they finish. The running agent serves them: the command opens one
control connection, sends ``{"action": "batch", "concurrency": N}`` and then the request lines; the
agent runs up to N requests at once and writes each result line as soon as it is ready.

A request line is the single-probe command's action and parameters as JSON, plus an optional
``ref`` (any JSON value, echoed) to match results to requests::

    {"ref": 1, "action": "connect", "peer": "saorsa-7", "method": "direct", "timeout": 5}
    {"ref": "g", "action": "received", "id": "saorsa-4-1a2b3c"}

A result line is the action's contract answer plus ``ref`` (when given), ``action`` and ``line``
(the request's 1-based line number). A request that does not finish within its deadline (its own
``timeout``/``seconds`` plus a grace, else ``DEFAULT_DEADLINE_S``) gets an ``"ok": false`` line
saying so; a line that is not a valid request gets an ``"ok": false`` line naming the problem;
neither holds up the other requests.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import wire
from .contract import CONTRACT_KEYS, METHODS, failure

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DEADLINE_S",
    "GRACE_S",
    "MAX_CONCURRENCY",
    "PARAMETERS",
    "BadRequest",
    "Handler",
    "parse_request",
    "run_batch",
    "serve_batch",
]

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

DEFAULT_CONCURRENCY = 64
MAX_CONCURRENCY = 1024
DEFAULT_DEADLINE_S = 10.0
# Time a request may take beyond its own timeout before the batch answers for it.
GRACE_S = 2.0
# Request keys besides ``action`` and ``ref``, per action, with the single probe's defaults.
PARAMETERS: dict[str, dict[str, Any]] = {
    "status": {},
    "connect": {"peer": None, "method": None, "timeout": 10.0},
    "publish": {"topic": "probe"},
    "received": {"id": None},
    "throughput": {"peer": None, "seconds": 5.0},
    "crdt": {"increment": 0},
}
# Every request may say ``timeout``: the seconds it has to be answered (the harness sends it).

# What the harness also says of a request's peer (the single probe's placeholders). This agent
# finds its peers by name through the registry, so it accepts these and does not use them.
_PEER_FACTS = frozenset({"peer_address", "peer_id", "peer_public_address"})


class BadRequest(ValueError):
    """A request line that is not a valid probe request."""


def _positive(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise BadRequest(f"'{key}' must be a number > 0 and at most 3600")
    return float(value)


def parse_request(line: bytes | str) -> tuple[dict[str, Any], float]:
    """The control request a batch line asks for and its deadline in seconds; BadRequest naming the
    problem otherwise. ``ref`` is not part of the request."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("a request is a JSON object with an 'action'")
    action = data.get("action")
    if action not in PARAMETERS:
        raise BadRequest(f"unknown action {action!r} (allowed: {', '.join(PARAMETERS)})")
    allowed = PARAMETERS[action]
    facts = _PEER_FACTS if "peer" in allowed else frozenset()
    unknown = sorted(set(data) - {"action", "ref", "timeout", *allowed, *facts})
    if unknown:
        raise BadRequest(f"unknown key(s) for {action}: {', '.join(unknown)}")
    request: dict[str, Any] = {"action": action}
    for key, default in allowed.items():
        value = data.get(key, default)
        if value is None:
            raise BadRequest(f"{action} needs '{key}'")
        request[key] = value
    if "peer" in request and not wire.valid_name(request["peer"]):
        raise BadRequest(f"'peer' {request['peer']!r} is not a valid node name")
    if action == "connect":
        if request["method"] not in METHODS:
            raise BadRequest(f"'method' must be one of {', '.join(METHODS)}")
        request["timeout"] = _positive(request["timeout"], "timeout")
        return request, request["timeout"] + GRACE_S
    # Other actions: answered (as failed when unfinished) by the request's own timeout, if it has one.
    answer_by = _positive(data["timeout"], "timeout") if "timeout" in data else None
    if action == "throughput":
        request["seconds"] = _positive(request["seconds"], "seconds")
        return request, answer_by if answer_by is not None else request["seconds"] + 30.0
    if action == "crdt" and (
        isinstance(request["increment"], bool)
        or not isinstance(request["increment"], int)
        or not 0 <= request["increment"] <= 10**12
    ):
        raise BadRequest("'increment' must be a non-negative integer")
    if action in ("publish", "received"):
        key = "topic" if action == "publish" else "id"
        if not isinstance(request[key], str) or not request[key]:
            raise BadRequest(f"'{key}' must be a non-empty string")
    return request, answer_by if answer_by is not None else DEFAULT_DEADLINE_S


def _ref_of(line: bytes) -> Any:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return data.get("ref") if isinstance(data, dict) else None


def _labelled(answer: dict[str, Any], action: str | None, number: int, ref: Any) -> dict[str, Any]:
    labelled = {**answer, "line": number}
    if action is not None:
        labelled["action"] = action
    if ref is not None:
        labelled["ref"] = ref
    return labelled


async def serve_batch(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler, header: dict[str, Any]
) -> None:
    """The agent's side: run the request lines arriving on ``reader`` (at most ``concurrency`` at
    once) and write each result line as it is ready; return when all are answered."""
    import asyncio

    concurrency = header.get("concurrency", DEFAULT_CONCURRENCY)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        concurrency = DEFAULT_CONCURRENCY
    slots = asyncio.Semaphore(min(concurrency, MAX_CONCURRENCY))
    tasks: set[asyncio.Task[None]] = set()

    def emit(answer: dict[str, Any]) -> None:
        writer.write(json.dumps(answer, sort_keys=True).encode() + b"\n")

    async def run(number: int, line: bytes) -> None:
        ref = _ref_of(line)
        try:
            request, deadline = parse_request(line)
        except BadRequest as exc:
            emit(_labelled({"ok": False, "error": f"bad request line {number}: {exc}"}, None, number, ref))
            return
        action = request["action"]
        known = {"method": request["method"]} if action == "connect" else {}
        async with slots:
            try:
                answer = await asyncio.wait_for(handler(request), deadline)
            except TimeoutError:
                answer = failure(action, f"did not finish within {deadline:g} s", **known)
            except ValueError as exc:
                answer = failure(action, f"bad control request: {exc}", **known)
            except Exception as exc:  # one broken request must not end the batch
                answer = failure(action, f"agent error: {type(exc).__name__}: {exc}", **known)
        emit(_labelled(answer, action, number, ref))

    number = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            line = exc.partial
        except asyncio.LimitOverrunError:
            # The rest of an overlong line is skipped; the line is answered as bad.
            number += 1
            emit({"ok": False, "line": number, "error": f"bad request line {number}: longer than the limit"})
            while True:
                try:
                    await reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as exc:
                    await reader.readexactly(exc.consumed)
            continue
        if not line:
            break
        if not line.strip():
            continue
        number += 1
        task = asyncio.get_running_loop().create_task(run(number, line))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await writer.drain()
    while tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    await writer.drain()


def run_batch(path: Path, stdin: IO[str], stdout: IO[str], concurrency: int = DEFAULT_CONCURRENCY) -> int:
    """The command's side: forward ``stdin``'s request lines to the agent at control socket ``path``
    and print its result lines as they come. Requests the agent never answered (it is not running,
    or went away) get an ``"ok": false`` line each. Exit status 0."""
    sent: dict[int, tuple[str | None, Any]] = {}
    lock = threading.Lock()

    def note(number: int, line: str) -> None:
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        action = data.get("action") if isinstance(data, dict) else None
        with lock:
            sent[number] = (action if action in CONTRACT_KEYS else None, _ref_of(line.encode()))

    def unanswered(reason: str) -> None:
        with lock:
            left = sorted(sent.items())
            sent.clear()
        for number, (action, ref) in left:
            answer = failure(action, reason) if action else {"ok": False, "error": reason}
            stdout.write(json.dumps(_labelled(answer, action, number, ref), sort_keys=True) + "\n")
        stdout.flush()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        for number, line in enumerate((ln for ln in stdin if ln.strip()), start=1):
            note(number, line)
        unanswered(f"agent not running: {path}: {exc.strerror or exc}")
        return 0

    def feed() -> None:
        try:
            sock.sendall(json.dumps({"action": "batch", "concurrency": concurrency}).encode() + b"\n")
            number = 0
            for line in stdin:
                if not line.strip():
                    continue
                number += 1
                note(number, line)
                sock.sendall(line.rstrip("\n").encode() + b"\n")
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    with sock, sock.makefile("rb") as answers:
        for raw in answers:
            text = raw.decode(errors="replace").strip()
            try:
                answer = json.loads(text)
            except ValueError:
                continue
            if isinstance(answer, dict) and isinstance(answer.get("line"), int):
                with lock:
                    sent.pop(answer["line"], None)
            stdout.write(text + "\n")
            stdout.flush()
    feeder.join(timeout=1.0)
    unanswered("agent closed the batch before answering")
    return 0
