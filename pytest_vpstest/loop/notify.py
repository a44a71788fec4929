"""Notifications with an on-disk outbox: every event is delivered to every channel, in order, once.

An event is first written to ``<state_dir>/<project>/outbox/<seq>.json`` (atomically, numbered
in order). Each channel keeps a cursor — the last sequence number it delivered — in
``outbox/cursor-<channel>.json``, written atomically right after each successful delivery. A
channel that fails (webhook down, command exiting non-zero) keeps its cursor, so its events are
retried later, in order, by the next loop step or by the background deliverer (with backoff);
other channels go on. Files every channel has delivered are removed. A notifier started later on
the same directory (after a crash or a restart) continues from the cursors.

Channels: ``log`` (always; the runner's logger), ``webhook`` (HTTP POST of the event JSON),
``command`` (any program: the event JSON on stdin, a one-line message as its last argument),
``voice`` (``espeak-ng`` when installed, otherwise skipped with a log line) and ``dashboard``
(``notify.dashboard_url``: every state transition and notification, as JSON).

Transition events (kind ``transition``) go to the log and the dashboard only; the other kinds
(the machine's ``NOTIFY_KINDS``) go to every channel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import requests

from pytest_vpstest._files import write_text_atomic
from pytest_vpstest.config import ChannelConfig, NotifyConfig
from pytest_vpstest.redact import redact_url

__all__ = [
    "EVENT_KINDS",
    "Channel",
    "CommandChannel",
    "DeliveryError",
    "LogChannel",
    "Notifier",
    "Outbox",
    "OutboxEvent",
    "VoiceChannel",
    "WebhookChannel",
    "build_channels",
]

EventKind = Literal[
    "loop_start", "first_failure", "fix_committed", "wait", "complete", "critical", "stopped", "transition"
]
EVENT_KINDS: tuple[str, ...] = (
    "loop_start",
    "first_failure",
    "fix_committed",
    "wait",
    "complete",
    "critical",
    "stopped",
    "transition",
)

_log = logging.getLogger("pytest_vpstest.loop.notify")


class DeliveryError(Exception):
    """One delivery attempt failed; the event stays in the outbox for a later attempt."""


@dataclass(frozen=True)
class OutboxEvent:
    """One event as stored in the outbox and delivered to channels."""

    seq: int
    id: str
    project: str
    kind: str
    message: str
    time: str
    data: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "seq": self.seq,
            "id": self.id,
            "project": self.project,
            "kind": self.kind,
            "message": self.message,
            "time": self.time,
            "data": dict(self.data),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> OutboxEvent:
        return cls(
            seq=int(doc["seq"]),
            id=str(doc["id"]),
            project=str(doc["project"]),
            kind=str(doc["kind"]),
            message=str(doc["message"]),
            time=str(doc["time"]),
            data=dict(doc.get("data") or {}),
        )


class Channel(Protocol):
    """A destination for events. ``deliver`` raises DeliveryError when the event must be retried."""

    @property
    def name(self) -> str: ...

    def wants(self, event: OutboxEvent) -> bool: ...

    def deliver(self, event: OutboxEvent) -> None: ...


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Outbox:
    """The on-disk queue of one project's events and the per-channel cursors.

    Only one process writes a project's outbox: the runner holding the project's lease.
    Within that process the methods are thread-safe.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    def _event_path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}.json"

    def _seqs(self) -> list[int]:
        out = []
        for p in self.directory.glob("*.json"):
            if p.stem.isdigit():
                out.append(int(p.stem))
        return sorted(out)

    def _next_seq(self) -> int:
        counter = self.directory / "next_seq"
        stored = 1
        if counter.exists():
            try:
                stored = int(counter.read_text().strip() or "1")
            except ValueError:
                stored = 1
        seqs = self._seqs()
        return max([stored, *(s + 1 for s in seqs[-1:])])

    def append(self, project: str, kind: str, message: str, data: Mapping[str, Any] | None = None,
               *, time: str | None = None) -> OutboxEvent:
        """Persist one new event (atomically) and return it with its sequence number."""
        with self._lock:
            seq = self._next_seq()
            event = OutboxEvent(
                seq=seq,
                id=uuid.uuid4().hex,
                project=project,
                kind=kind,
                message=message,
                time=time or _now_iso(),
                data=dict(data or {}),
            )
            write_text_atomic(self._event_path(seq), json.dumps(event.to_json(), sort_keys=True) + "\n")
            # The counter survives removal of delivered files, so numbers are never reused.
            write_text_atomic(self.directory / "next_seq", f"{seq + 1}\n")
            return event

    def events_after(self, seq: int) -> list[OutboxEvent]:
        with self._lock:
            out = []
            for s in self._seqs():
                if s <= seq:
                    continue
                try:
                    doc = json.loads(self._event_path(s).read_text(encoding="utf-8"))
                except FileNotFoundError:
                    continue
                out.append(OutboxEvent.from_json(doc))
            return out

    def cursor(self, channel: str) -> int:
        path = self.directory / f"cursor-{channel}.json"
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["seq"])
        except FileNotFoundError:
            # A channel added later starts at the events not yet delivered everywhere,
            # not at the beginning of history (delivered files may already be gone).
            return 0
        except (ValueError, KeyError, json.JSONDecodeError):
            return 0

    def set_cursor(self, channel: str, seq: int) -> None:
        with self._lock:
            write_text_atomic(self.directory / f"cursor-{channel}.json", json.dumps({"seq": seq}) + "\n")

    def prune(self, channels: Sequence[str]) -> int:
        """Remove event files every listed channel has delivered; return how many."""
        with self._lock:
            if not channels:
                return 0
            low = min(self.cursor(c) for c in channels)
            removed = 0
            for s in self._seqs():
                if s <= low:
                    self._event_path(s).unlink(missing_ok=True)
                    removed += 1
            return removed

    def pending(self, channel: str) -> int:
        return len(self.events_after(self.cursor(channel)))


class LogChannel:
    """Every event as one line through a logger function (the runner's log)."""

    name = "log"

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write

    def wants(self, event: OutboxEvent) -> bool:
        return True

    def deliver(self, event: OutboxEvent) -> None:
        self._write(f"notify[{event.kind}] {event.message}")


class WebhookChannel:
    """HTTP POST of the event JSON; any non-2xx answer or network error is retried later."""

    def __init__(self, url: str, *, timeout: float = 10.0, name: str | None = None,
                 transitions: bool = False, notifications: bool = True,
                 token: Callable[[], str | None] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        # Asked at every delivery: a dashboard started after the runner writes its token later.
        self._token = token
        self.name = name or f"webhook-{_digest(url)}"
        self._transitions = transitions
        self._notifications = notifications
        self._session = requests.Session()

    def wants(self, event: OutboxEvent) -> bool:
        return self._transitions if event.kind == "transition" else self._notifications

    def deliver(self, event: OutboxEvent) -> None:
        try:
            resp = self._session.post(
                self.url,
                json=event.to_json(),
                timeout=self.timeout,
                headers=self._headers(event),
            )
        except requests.RequestException as exc:
            raise DeliveryError(f"{redact_url(self.url)}: {type(exc).__name__}") from exc
        if not 200 <= resp.status_code < 300:
            raise DeliveryError(f"{redact_url(self.url)}: HTTP {resp.status_code}")

    def _headers(self, event: OutboxEvent) -> dict[str, str]:
        headers = {"Idempotency-Key": event.id}
        token = self._token() if self._token is not None else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers


class CommandChannel:
    """Runs any program: event JSON on stdin, the one-line message as the last argument."""

    def __init__(self, command: str, *, timeout: float = 10.0) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("empty notify command")
        self.timeout = timeout
        self.name = f"command-{_digest(command)}"

    def wants(self, event: OutboxEvent) -> bool:
        return event.kind != "transition"

    def deliver(self, event: OutboxEvent) -> None:
        line = " ".join(event.message.split())
        try:
            proc = subprocess.run(
                [*self.argv, line],
                input=json.dumps(event.to_json()),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeliveryError(f"{self.argv[0]}: {exc}") from exc
        if proc.returncode != 0:
            raise DeliveryError(f"{self.argv[0]} exited {proc.returncode}")


class VoiceChannel:
    """Speaks the message with ``espeak-ng`` when it is installed; otherwise logs that it skipped."""

    name = "voice"

    def __init__(self, log: Callable[[str], None], *, timeout: float = 30.0,
                 program: str = "espeak-ng") -> None:
        self._log = log
        self.timeout = timeout
        self.program = program
        self._warned = False

    def wants(self, event: OutboxEvent) -> bool:
        return event.kind != "transition"

    def deliver(self, event: OutboxEvent) -> None:
        exe = shutil.which(self.program)
        if exe is None:
            if not self._warned:
                self._log(f"voice: {self.program} is not installed; voice notifications are skipped")
                self._warned = True
            return
        try:
            subprocess.run([exe, event.message], capture_output=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeliveryError(f"{self.program}: {exc}") from exc


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def build_channels(
    config: NotifyConfig,
    log: Callable[[str], None],
    dashboard_token: Callable[[], str | None] | None = None,
) -> list[Channel]:
    """The log channel, the configured channels and the dashboard, in that order.

    ``dashboard_token`` gives the bearer token the dashboard's POSTs carry (asked at each delivery).
    """
    channels: list[Channel] = [LogChannel(log)]
    for ch in config.channels:
        built = _build_one(ch, log)
        if built is not None:
            channels.append(built)
    if config.dashboard_url:
        channels.append(
            WebhookChannel(config.dashboard_url, name=f"dashboard-{_digest(config.dashboard_url)}",
                           transitions=True, notifications=True, token=dashboard_token)
        )
    return channels


def _build_one(ch: ChannelConfig, log: Callable[[str], None]) -> Channel | None:
    if ch.kind == "log":
        return None  # always present
    if ch.kind == "webhook" and ch.url:
        return WebhookChannel(ch.url, timeout=ch.timeout_seconds)
    if ch.kind == "command" and ch.command:
        return CommandChannel(ch.command, timeout=ch.timeout_seconds)
    if ch.kind == "voice":
        return VoiceChannel(log, timeout=max(ch.timeout_seconds, 30.0))
    return None


class Notifier:
    """Emits events into the outbox and delivers them; a failing channel never raises to the caller.

    ``emit`` only writes to disk and wakes the background deliverer (when started); ``flush``
    delivers synchronously what it can. Retries back off from ``min_backoff`` to ``max_backoff``
    seconds while any channel has undelivered events.
    """

    def __init__(
        self,
        outbox_dir: Path,
        project: str,
        channels: Sequence[Channel],
        *,
        log: Callable[[str], None] | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.outbox = Outbox(outbox_dir)
        self.project = project
        self.channels = list(channels)
        self._log = log or _log.info
        self._deliver_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._last_error: dict[str, str] = {}

    # -- writing ---------------------------------------------------------------------------
    def emit(self, kind: str, message: str, data: Mapping[str, Any] | None = None) -> OutboxEvent:
        """Persist an event; delivery happens in the background or at the next ``flush``."""
        event = self.outbox.append(self.project, kind, message, data)
        self._wake.set()
        return event

    # -- delivering ------------------------------------------------------------------------
    def flush(self) -> bool:
        """Try to deliver every pending event on every channel; True when nothing is left."""
        with self._deliver_lock:
            clean = True
            for channel in self.channels:
                if not self._drain(channel):
                    clean = False
            try:
                self.outbox.prune([c.name for c in self.channels])
            except OSError as exc:  # pruning is housekeeping; never stop the loop for it
                self._log(f"notify: could not prune outbox: {exc}")
            return clean

    def _drain(self, channel: Channel) -> bool:
        cursor = self.outbox.cursor(channel.name)
        for event in self.outbox.events_after(cursor):
            if channel.wants(event):
                try:
                    channel.deliver(event)
                except DeliveryError as exc:
                    text = str(exc)
                    if self._last_error.get(channel.name) != text:
                        self._log(f"notify: channel {channel.name} failed ({text}); will retry")
                        self._last_error[channel.name] = text
                    return False
                except Exception as exc:  # a broken channel must never stop the loop
                    self._log(f"notify: channel {channel.name} raised {type(exc).__name__}: {exc}")
                    return False
                if channel.name in self._last_error:
                    del self._last_error[channel.name]
                    self._log(f"notify: channel {channel.name} delivered again")
            self.outbox.set_cursor(channel.name, event.seq)
        return True

    def pending(self) -> dict[str, int]:
        return {c.name: self.outbox.pending(c.name) for c in self.channels}

    # -- background ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background deliverer (a daemon thread)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"notify-{self.project}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = self.min_backoff
        while not self._closing.is_set():
            clean = self.flush()
            if clean:
                backoff = self.min_backoff
                self._wake.wait()
            else:
                self._wake.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            self._wake.clear()

    def close(self, *, drain_seconds: float = 0.0) -> None:
        """Stop the background deliverer; first try for up to ``drain_seconds`` to deliver."""
        if drain_seconds > 0:
            deadline = threading.Event()
            waited = 0.0
            step = min(0.5, drain_seconds)
            while waited < drain_seconds and not self.flush():
                deadline.wait(step)
                waited += step
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
