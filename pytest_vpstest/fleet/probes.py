"""The probe contract: action → command template → run on a node → one JSON object → ProbeResult.

A probe never raises out of a suite for a bad answer: a timeout, no output, output that is not
exactly one JSON object, or a JSON object missing the action's required keys is a *failed
attempt* that keeps the exact command, exit code and raw stdout/stderr as evidence.

``{timeout}`` has one meaning for every action: the seconds the command has to print its answer.
Work not finished by then is to be answered as failed (``ok: false``). The harness waits
``{timeout}`` plus ``grace`` (for the transport) before it calls the attempt timed out, and keeps the
number in :attr:`ProbeResult.timeout` so a late answer can be told apart (``vpstest contract check``).

Seams: the node transport is anything with ``run(node, command, timeout)`` returning an object
with the attributes of ``remote.CommandResult``; each node's placeholder values come from its
:class:`~pytest_vpstest.fleet.node.NodePlan`; per-node concurrency goes through a
:class:`NodeSlots` (threads in one process, or lock files shared by xdist workers).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from pytest_vpstest.config import Inventory, ProbeTemplates, ProjectConfig
from pytest_vpstest.errors import ConfigError
from pytest_vpstest.fleet.node import NodePlan, plan_node
from pytest_vpstest.fleet.remote import quote_command

__all__ = [
    "ACTIONS",
    "REQUIRED_KEYS",
    "CommandOutcome",
    "NodeSlots",
    "ProbeResult",
    "ProbeRunner",
    "Transport",
    "parse_output",
]

REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "status": ("ok", "node", "addresses"),
    "connect": ("ok", "method", "path", "rtt_ms", "error"),
    "gossip_publish": ("ok", "message_id"),
    "gossip_received": ("ok", "received", "latency_ms", "duplicates"),
    "throughput": ("ok", "bytes", "seconds", "mbps"),
    "crdt": ("ok", "value", "digest"),
    "subscribe": ("ok",),
    "reset": ("ok",),
}
ACTIONS: tuple[str, ...] = tuple(REQUIRED_KEYS)


class CommandOutcome(Protocol):
    """What a transport returns for one command (``remote.CommandResult``)."""

    @property
    def exit_code(self) -> int | None: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...
    @property
    def duration(self) -> float: ...
    @property
    def timed_out(self) -> bool: ...


class Transport(Protocol):
    """Runs a shell command on a named node (``remote.SessionPool``)."""

    def run(self, name: str, command: str, timeout: float) -> CommandOutcome: ...


@dataclass(frozen=True)
class ProbeResult:
    """One probe attempt. ``ok`` is true only when the answer was valid and said ``"ok": true``."""

    action: str
    node: str
    command: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    data: Mapping[str, Any] | None = None
    error: str | None = None
    # The command could not be run on the node at all (SSH connection failed or was lost).
    transport_error: bool = False
    # The {timeout} the command was given: the seconds it had to print its answer.
    timeout: float | None = None

    @property
    def late(self) -> bool:
        """It answered, but after its ``{timeout}`` (within the transport's grace)."""
        return self.timeout is not None and not self.timed_out and self.duration > self.timeout

    @property
    def valid(self) -> bool:
        """The node answered with one JSON object holding every required key."""
        return self.data is not None and self.error is None

    @property
    def ok(self) -> bool:
        return self.valid and self.data is not None and self.data.get("ok") is True

    def get(self, key: str, default: Any = None) -> Any:
        return default if self.data is None else self.data.get(key, default)

    @property
    def reason(self) -> str:
        """Why this attempt failed, in one line ('' when it succeeded)."""
        if self.error:
            return self.error
        if self.data is not None and self.data.get("ok") is not True:
            err = self.data.get("error")
            return f"probe said ok=false{': ' + str(err) if err else ''}"
        return ""

    def to_json(self) -> dict[str, Any]:
        """Every field, for the run's shared matrix file (``from_json`` reads it back)."""
        return {
            "action": self.action,
            "node": self.node,
            "command": self.command,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration": self.duration,
            "timed_out": self.timed_out,
            "data": None if self.data is None else dict(self.data),
            "error": self.error,
            "transport_error": self.transport_error,
            "timeout": self.timeout,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ProbeResult:
        return cls(
            action=str(doc["action"]),
            node=str(doc["node"]),
            command=str(doc["command"]),
            exit_code=doc.get("exit_code"),
            stdout=str(doc.get("stdout", "")),
            stderr=str(doc.get("stderr", "")),
            duration=float(doc.get("duration", 0.0)),
            timed_out=bool(doc.get("timed_out", False)),
            data=doc.get("data"),
            error=doc.get("error"),
            transport_error=bool(doc.get("transport_error", False)),
            timeout=None if doc.get("timeout") is None else float(doc["timeout"]),
        )

    def evidence(self, limit: int = 4000) -> dict[str, Any]:
        """The exact command and raw output, for reports (output truncated to ``limit`` chars)."""
        return {
            "action": self.action,
            "node": self.node,
            "command": self.command,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "duration": round(self.duration, 3),
            "stdout": self.stdout[-limit:],
            "stderr": self.stderr[-limit:],
            "error": self.reason,
        }


def parse_output(action: str, stdout: str) -> tuple[dict[str, Any] | None, str | None]:
    """Exactly one JSON object in ``stdout`` (log lines around it are tolerated) → (data, error)."""
    text = stdout.strip()
    if not text:
        return None, "no output"
    objects: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            objects.append(value)
    if not objects:
        try:
            whole = json.loads(text)
        except ValueError as exc:
            return None, f"invalid JSON: {exc}"
        if not isinstance(whole, dict):
            return None, f"expected a JSON object, got {type(whole).__name__}"
        objects.append(whole)
    if len(objects) > 1:
        return None, f"expected one JSON object, got {len(objects)}"
    data = objects[0]
    missing = [k for k in REQUIRED_KEYS.get(action, ("ok",)) if k not in data]
    if missing:
        return None, f"missing keys {', '.join(missing)} in {action} answer"
    if not isinstance(data.get("ok"), bool):
        return None, "key 'ok' is not a boolean"
    return data, None


# --------------------------------------------------------------------------------------------
# Per-node concurrency


class NodeSlots:
    """At most ``per_node`` probes touch one node at a time.

    With a ``lock_dir`` the bound holds across processes (xdist workers of one run share the
    run directory): slot *i* of node *n* is an ``fcntl`` lock on ``<lock_dir>/<n>.<i>.lock``.
    """

    def __init__(self, per_node: int = 4, lock_dir: Path | None = None, poll: float = 0.01) -> None:
        self.per_node = max(1, per_node)
        self.lock_dir = lock_dir
        self.poll = poll
        self._local: dict[str, threading.BoundedSemaphore] = {}
        self._guard = threading.Lock()
        if lock_dir is not None:
            lock_dir.mkdir(parents=True, exist_ok=True)

    def _sem(self, node: str) -> threading.BoundedSemaphore:
        with self._guard:
            return self._local.setdefault(node, threading.BoundedSemaphore(self.per_node))

    @contextlib.contextmanager
    def hold(self, *nodes: str) -> Iterator[None]:
        """Hold a slot on each node (sorted order, so two holders never wait on each other)."""
        with contextlib.ExitStack() as stack:
            for node in sorted(set(nodes)):
                stack.enter_context(self._hold_one(node))
            yield

    @contextlib.contextmanager
    def _hold_one(self, node: str) -> Iterator[None]:
        sem = self._sem(node)
        sem.acquire()
        try:
            if self.lock_dir is None:
                yield
                return
            handle = self._file_slot(node)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
        finally:
            sem.release()

    def _file_slot(self, node: str) -> IO[bytes]:
        assert self.lock_dir is not None
        while True:
            for i in range(self.per_node):
                handle = open(self.lock_dir / f"{node}.{i}.lock", "ab")  # noqa: SIM115 - held past this call
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                return handle
            time.sleep(self.poll)


# --------------------------------------------------------------------------------------------


@dataclass
class ProbeRunner:
    """Runs probe actions on nodes through a transport, with per-node concurrency bounded."""

    transport: Transport
    inventory: Inventory
    templates: ProbeTemplates
    # The node's plan (fleet.node.plan_node): {bin}, {install_path}, {log_dir}, {p2p_address}.
    plan_for: Callable[[str], NodePlan]
    slots: NodeSlots = field(default_factory=NodeSlots)
    default_timeout: float = 10.0
    # Extra seconds allowed to the transport beyond the probe's own --timeout.
    grace: float = 5.0
    # Seconds past the transport's own limit after which the harness stops waiting for a transport
    # that does not return (a stalled management link): the attempt is timed out, the call abandoned.
    watchdog_slack: float = 2.0
    # Each node's peer_id from its status answer (the plugin fills it at session start): {peer_id}.
    identities: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_project(
        cls,
        transport: Transport,
        inventory: Inventory,
        config: ProjectConfig,
        *,
        artifact: Path | None = None,
        **options: Any,
    ) -> ProbeRunner:
        """A runner for ``config``'s templates whose node paths come from ``fleet.node.plan_node``
        (``artifact``: the deployed file, else the config's build artifact); ``options`` are fields."""
        if artifact is None and config.build and config.build.artifact:
            artifact = config.workspace / config.build.artifact
        return cls(
            transport=transport,
            inventory=inventory,
            templates=config.probes,
            plan_for=lambda name: plan_node(inventory.node(name), config, artifact),
            **options,
        )

    def template(self, action: str) -> str:
        """The action's template; '' for an optional action the config leaves out."""
        if action not in REQUIRED_KEYS:
            raise KeyError(f"unknown probe action {action!r} (allowed: {', '.join(ACTIONS)})")
        value: str | None = getattr(self.templates, action)
        return value or ""

    def has(self, action: str) -> bool:
        """Whether the config gives a template for ``action`` (optional ones may be absent)."""
        return bool(self.template(action))

    def node_values(self, node: str) -> dict[str, object]:
        return {
            **self.plan_for(node).placeholders(),
            "registry": self.inventory.registry.url if self.inventory.registry else "",
            "bootstrap": ",".join(self.inventory.bootstrap),
        }

    def run(
        self,
        action: str,
        node: str,
        *,
        timeout: float | None = None,
        hold: tuple[str, ...] = (),
        **values: object,
    ) -> ProbeResult:
        """Run one probe attempt; never raises for a bad answer (see the module docstring)."""
        limit = float(timeout if timeout is not None else self.default_timeout)
        if not self.has(action):
            return ProbeResult(
                action, node, "", None, "", "", 0.0, error=f"no template for probes.{action}", timeout=limit
            )
        # {timeout} is always the limit itself: the answer is due then (see the module docstring).
        fill = self.node_values(node) | values | {"timeout": _num_text(limit)}
        try:
            command = quote_command(self.template(action), **fill)
        except ConfigError as exc:
            return ProbeResult(
                action, node, self.template(action), None, "", "", 0.0, error=str(exc), timeout=limit
            )
        start = time.monotonic()
        with self.slots.hold(node, *hold):
            try:
                outcome = self._run_bounded(node, command, limit + self.grace)
            except Exception as exc:  # a transport failure is a failed attempt, not a crash
                return ProbeResult(
                    action,
                    node,
                    command,
                    None,
                    "",
                    "",
                    time.monotonic() - start,
                    error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                    transport_error=True,
                    timeout=limit,
                )
        data: Mapping[str, Any] | None = None
        if outcome.timed_out:
            error: str | None = f"timed out after {limit + self.grace:g}s"
        else:
            data, error = parse_output(action, outcome.stdout)
            if error is not None and outcome.exit_code not in (0, None):
                error = f"exit {outcome.exit_code}, {error}"
        return ProbeResult(
            action,
            node,
            command,
            outcome.exit_code,
            outcome.stdout,
            outcome.stderr,
            outcome.duration,
            outcome.timed_out,
            data,
            error,
            timeout=limit,
        )

    def _run_bounded(self, node: str, command: str, limit: float) -> CommandOutcome:
        """``transport.run`` that comes back by ``limit + watchdog_slack`` whatever the link does."""
        box: list[CommandOutcome | BaseException] = []
        done = threading.Event()

        def call() -> None:
            try:
                box.append(self.transport.run(node, command, limit))
            except BaseException as exc:  # handed to the caller below
                box.append(exc)
            finally:
                done.set()

        threading.Thread(target=call, name=f"probe-{node}", daemon=True).start()
        if not done.wait(limit + self.watchdog_slack):
            return _Abandoned(limit + self.watchdog_slack)
        result = box[0]
        if isinstance(result, BaseException):
            raise result
        return result

    # Convenience wrappers, one per action of the contract.
    def status(self, node: str, timeout: float | None = None) -> ProbeResult:
        return self.run("status", node, timeout=timeout)

    def connect(self, node: str, peer: str, method: str, timeout: float | None = None) -> ProbeResult:
        return self.run(
            "connect",
            node,
            timeout=timeout,
            hold=(peer,),
            method=method,
            **self.peer_values(peer),
        )

    def peer_values(self, peer: str) -> dict[str, object]:
        """{peer}, {peer_address}, {peer_id} and {peer_public_address} of a peer ('' when unknown)."""
        return {
            "peer": peer,
            "peer_address": self.plan_for(peer).p2p_address,
            "peer_id": self.identities.get(peer, ""),
            "peer_public_address": self.inventory.node(peer).reachable_address,
        }

    def publish(self, node: str, topic: str, timeout: float | None = None) -> ProbeResult:
        return self.run("gossip_publish", node, timeout=timeout, topic=topic)

    def received(self, node: str, message_id: str, timeout: float | None = None) -> ProbeResult:
        return self.run("gossip_received", node, timeout=timeout, message_id=message_id)

    def throughput(self, node: str, peer: str, seconds: float, timeout: float | None = None) -> ProbeResult:
        limit = timeout if timeout is not None else seconds + self.default_timeout
        return self.run(
            "throughput",
            node,
            timeout=limit,
            hold=(peer,),
            seconds=_num_text(seconds),
            **self.peer_values(peer),
        )

    def crdt(self, node: str, amount: int, timeout: float | None = None) -> ProbeResult:
        return self.run("crdt", node, timeout=timeout, amount=amount)

    def subscribe(self, node: str, topic: str, timeout: float | None = None) -> ProbeResult:
        return self.run("subscribe", node, timeout=timeout, topic=topic)

    def reset(self, node: str, timeout: float | None = None) -> ProbeResult:
        return self.run("reset", node, timeout=timeout)


@dataclass(frozen=True)
class _Abandoned:
    """The outcome of a transport call the harness stopped waiting for."""

    duration: float
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = "the management link did not return within the probe's limit"
    timed_out: bool = True


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
