"""Node sessions over SSH (fabric): cached connections, strict host keys, fan-out, registry queries.

One :class:`NodeSession` per node holds one fabric ``Connection`` opened on first use and
reused for every later command, upload and download. Host keys are always checked against
a ``known_hosts`` file (the inventory's, else the user's); an unknown or changed key is
refused, never added. A node that cannot be reached raises :class:`UnreachableNodeError`
whose message is one line: the node, the address(es) tried and the cause.

:class:`SessionPool` caches sessions per process and runs a function on many nodes in a
bounded thread pool, returning per-node results or per-node errors; :class:`Pool` is what the
rest of the harness asks of it. Service managers live in ``fleet.services``.

Every remote command is a shell string built with :func:`quote_command` or ``shlex.quote``.
The :class:`Session` protocol is the seam: unit tests give the pool a fake session factory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import secrets
import shlex
import socket
import string
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import fabric
import paramiko
import requests
from invoke.exceptions import CommandTimedOut
from paramiko.ssh_exception import NoValidConnectionsError

from pytest_vpstest.config import Inventory, Node, RegistryAccess
from pytest_vpstest.errors import ConfigError, NodeError, UnreachableNodeError
from pytest_vpstest.fleet.stream import ChannelStream

__all__ = [
    "CommandResult",
    "NodeSession",
    "Pool",
    "Session",
    "SessionFactory",
    "SessionPool",
    "known_hosts_path",
    "query_registry",
    "quote_command",
]

T = TypeVar("T")

# Environment marker of a command run with a timeout (found again to kill it when it times out).
_RUN_ENV = "VPSTEST_RUN"


@dataclass(frozen=True)
class CommandResult:
    """What one remote command did. ``exit_code`` is None when it timed out."""

    node: str
    command: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def summary(self) -> str:
        """One line for errors and logs: exit status and the last line of stderr (or stdout)."""
        status = "timed out" if self.timed_out else f"exit {self.exit_code}"
        tail = _last_line(self.stderr) or _last_line(self.stdout)
        return f"{status}: {tail}" if tail else status


class Session(Protocol):
    """What deploy, probes and the CLI need from a node session (the seam for fakes)."""

    @property
    def node(self) -> Node: ...

    def run(self, command: str, *, timeout: float | None = None, check: bool = False) -> CommandResult: ...

    def put(self, local: Path | str, remote: str) -> None: ...

    def get(self, remote: str, local: Path | str) -> None: ...

    def close(self) -> None: ...


SessionFactory = Callable[[Node, Inventory], Session]


class Pool(Protocol):
    """What the harness needs of a pool of node sessions: :class:`SessionPool`, or a plugin's own
    (the ``pytest_vpstest_make_pool`` hook), or a test's."""

    def session(self, name: str) -> Session:
        """The cached session of node ``name``."""
        ...

    def run(
        self, name: str, command: str, timeout: float | None = None, *, check: bool = False
    ) -> CommandResult: ...

    def fan_out(
        self, names: Iterable[str], fn: Callable[[Session], T], *, parallelism: int = 8
    ) -> dict[str, T | NodeError]:
        """``{name: fn(session) or the NodeError it raised}`` for every node, in parallel."""
        ...

    def close_all(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Command quoting


def quote_command(template: str, /, **values: object) -> str:
    """Fill ``{name}`` placeholders of ``template`` with shell-quoted values.

    Every placeholder must be a plain name given in ``values`` (no attribute access, index,
    conversion or format spec); ``{{`` and ``}}`` are literal braces. Unknown placeholders and
    None values raise :class:`ConfigError` naming the placeholder and the allowed names.
    """
    allowed = tuple(sorted(values))
    out: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"malformed command template {template!r}: {exc}") from None
    for literal, field, spec, conversion in parsed:
        out.append(literal)
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ConfigError(
                f"placeholder {{{field}}} in {template!r} must be a plain name", allowed=allowed
            )
        if field not in values:
            raise ConfigError(f"unknown placeholder {{{field}}} in {template!r}", allowed=allowed)
        value = values[field]
        if value is None:
            raise ConfigError(f"placeholder {{{field}}} in {template!r} has no value")
        out.append(shlex.quote(str(value)))
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Sessions


def known_hosts_path(inventory: Inventory) -> Path:
    """The known_hosts file used for strict host-key checking."""
    if inventory.known_hosts is not None:
        return inventory.known_hosts
    return Path.home() / ".ssh" / "known_hosts"


class _QuietKillRemote(fabric.runners.Remote):  # type: ignore[misc]
    """fabric's remote runner, whose timeout kill (closing the channel, from invoke's timer
    thread) never raises: when the transport is already closing, an exception there would only
    be lost in that thread; the command's own result says what happened."""

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            super().kill()


class NodeSession:
    """One node's SSH session: a fabric Connection opened lazily and reused.

    Thread-safe: opening is serialised; commands from several threads share the transport
    as separate channels.
    """

    def __init__(self, node: Node, inventory: Inventory) -> None:
        self._node = node
        self._inventory = inventory
        self._lock = threading.Lock()
        # fabric keeps one SFTP client per connection; transfers from several threads take turns.
        self._sftp_lock = threading.Lock()
        self._conn: fabric.Connection | None = None
        self._address: str | None = None
        self.connects = 0  # how many SSH connections this session has opened (caching is visible)

    @property
    def node(self) -> Node:
        return self._node

    @property
    def address(self) -> str | None:
        """The address the open connection went to (host or fallback_ip), None before connecting."""
        return self._address

    @property
    def connected(self) -> bool:
        return self._conn is not None and bool(self._conn.is_connected)

    def connect(self) -> None:
        """Open the connection now (otherwise the first command opens it)."""
        self._connection()

    def run(self, command: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        """Run ``command`` (a shell string, already quoted) and return its result.

        Output is captured, never echoed. A non-zero exit is a result, not an error, unless
        ``check``; then it raises :class:`NodeError` with the exit status and last stderr line.
        A command still running after ``timeout`` seconds gives ``timed_out=True``, and its
        processes on the node are killed (found by an environment marker; Linux ``/proc``).
        """
        conn = self._connection()
        started = time.monotonic()
        marker = f"{_RUN_ENV}={secrets.token_hex(8)}" if timeout is not None else None
        # With a timeout the command carries a marker in its environment, so what is left of it
        # on the node can be found and killed (closing the channel does not stop it).
        wire = f"export {marker}; {command}" if marker else command
        try:
            res = conn.run(wire, hide=True, warn=True, in_stream=False, timeout=timeout)
            if timeout is not None and res.exited == -1 and time.monotonic() - started >= timeout:
                # invoke decides "timed out" by its timer thread having ended; the channel it
                # closes can end the command a moment before that thread does.
                raise CommandTimedOut(res, timeout=int(timeout))
            if res.exited == -1 and not conn.is_connected:
                # paramiko reports -1 when the connection died before an exit status came.
                raise EOFError("the SSH connection closed before the command finished")
            result = CommandResult(
                node=self._node.name,
                command=command,
                exit_code=int(res.exited),
                stdout=str(res.stdout),
                stderr=str(res.stderr),
                duration=time.monotonic() - started,
            )
        except CommandTimedOut as exc:
            if marker:
                self._kill_marked(marker)
            result = CommandResult(
                node=self._node.name,
                command=command,
                exit_code=None,
                stdout=str(exc.result.stdout),
                stderr=str(exc.result.stderr),
                duration=time.monotonic() - started,
                timed_out=True,
            )
        except (paramiko.SSHException, EOFError, OSError) as exc:
            address = self._address
            self._drop()  # the next command reconnects
            raise NodeError(
                self._node.name,
                f"connection lost running {_short(command)}: {_cause(exc)}",
                address=address,
            ) from None
        if check and not result.ok:
            raise NodeError(
                self._node.name, f"{_short(command)} failed ({result.summary()})", address=self._address
            )
        return result

    def open_stream(self, command: str) -> ChannelStream:
        """Start ``command`` (already quoted) on its own channel of the cached connection, with
        stdin open: lines go in with ``send`` while its output is read line by line (stderr
        merged into stdout). For commands that answer many requests, such as a probe batch."""
        conn = self._connection()
        try:
            channel = conn.transport.open_session()
            channel.set_combine_stderr(True)
            channel.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            address = self._address
            self._drop()
            raise NodeError(
                self._node.name, f"cannot start {_short(command)}: {_cause(exc)}", address=address
            ) from None
        return ChannelStream(channel)

    def _kill_marked(self, marker: str) -> None:
        """Best effort: KILL every process on the node whose environment holds ``marker``."""
        sweep = (
            f"for f in $(grep -lsaF {shlex.quote(marker)} /proc/[0-9]*/environ); do "
            'p=${f#/proc/}; kill -KILL "${p%/environ}" 2>/dev/null; done; true'
        )
        with contextlib.suppress(Exception):
            self._connection().run(sweep, hide=True, warn=True, in_stream=False, timeout=15)

    def put(self, local: Path | str, remote: str) -> None:
        """Upload the local file to the remote path (SFTP)."""
        conn = self._connection()
        try:
            with self._sftp_lock:
                conn.put(str(local), remote=remote)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise NodeError(
                self._node.name, f"upload {local} -> {remote} failed: {_cause(exc)}", address=self._address
            ) from None

    def get(self, remote: str, local: Path | str) -> None:
        """Download the remote file to the local path (SFTP)."""
        conn = self._connection()
        try:
            with self._sftp_lock:
                conn.get(remote, local=str(local))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise NodeError(
                self._node.name, f"download {remote} -> {local} failed: {_cause(exc)}", address=self._address
            ) from None

    def close(self) -> None:
        with self._lock:
            self._drop_locked()

    # -- internals ------------------------------------------------------------------------

    def _connection(self) -> fabric.Connection:
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return self._conn
            self._drop_locked()
            self._conn, self._address = self._open()
            self.connects += 1
            return self._conn

    def _drop(self) -> None:
        with self._lock:
            self._drop_locked()

    def _drop_locked(self) -> None:
        if self._conn is not None:
            # Closing a broken transport may fail; it is gone either way.
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None
        self._address = None

    def _open(self) -> tuple[fabric.Connection, str]:
        node, inv = self._node, self._inventory
        addresses = [node.host] + ([node.fallback_ip] if node.fallback_ip else [])
        failures: list[str] = []
        for address in addresses:
            conn = self._make_connection(address)
            try:
                conn.open()
            except Exception as exc:
                _quiet_close(conn)
                failures.append(f"{address}:{node.port} {_describe_connect_failure(exc, address, inv)}")
                continue
            _no_delay(conn)
            return conn, address
        tried = ", ".join(f"{a}:{node.port}" for a in addresses)
        raise UnreachableNodeError(node.name, "unreachable: " + "; ".join(failures), address=tried)

    def _make_connection(self, address: str) -> fabric.Connection:
        node, inv = self._node, self._inventory
        timeout = float(inv.connect_timeout)
        connect_kwargs: dict[str, Any] = {
            # fabric truncates connect_timeout to int; paramiko takes float seconds here.
            "timeout": timeout,
            "banner_timeout": timeout,
            "auth_timeout": timeout,
        }
        identity = node.identity_file or (str(inv.identity_file) if inv.identity_file else None)
        if identity:
            connect_kwargs.update(key_filename=[identity], allow_agent=False, look_for_keys=False)
        # ~/.ssh/config is not read: what the inventory says is what is used.
        config = fabric.Config(
            overrides={"load_ssh_configs": False, "runners": {"remote": _QuietKillRemote}}
        )
        conn = fabric.Connection(
            address, user=node.user, port=node.port, config=config, connect_kwargs=connect_kwargs
        )
        client: paramiko.SSHClient = conn.client
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        kh = known_hosts_path(inv)
        if kh.exists():
            client.load_system_host_keys(str(kh))
        return conn


def _no_delay(conn: fabric.Connection) -> None:
    # Small SSH packets (channel open, exec, exit status) otherwise wait on Nagle and the
    # peer's delayed ACK: ~40 ms per command instead of ~3 ms.
    sock = getattr(conn.transport, "sock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _quiet_close(conn: fabric.Connection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _describe_connect_failure(exc: BaseException, address: str, inv: Inventory) -> str:
    """One phrase naming why a connection attempt failed (never a traceback)."""
    kh = known_hosts_path(inv)
    if isinstance(exc, paramiko.BadHostKeyException):
        return f"host key mismatch for {address} (known_hosts: {kh})"
    if isinstance(exc, NoValidConnectionsError):
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        if codes <= {errno.ECONNREFUSED}:
            return "connection refused"
        return _cause(next(iter(exc.errors.values())))
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication failed ({_cause(exc)})"
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        if not kh.exists():
            return f"host key of {address} cannot be checked: known_hosts {kh} does not exist"
        return f"host key of {address} not in known_hosts ({kh})"
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"timed out after {inv.connect_timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {address} ({exc.strerror})"
    if isinstance(exc, paramiko.SSHException) and (
        # paramiko gives up on a silent server with "No existing session" or a banner error.
        "no existing session" in str(exc).lower() or "banner" in str(exc).lower()
    ):
        return f"timed out after {inv.connect_timeout:g} s waiting for the SSH handshake"
    if isinstance(exc, paramiko.SSHException) and "timeout" in str(exc).lower():
        return f"timed out after {inv.connect_timeout:g} s ({_cause(exc)})"
    return _cause(exc)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = _last_line(str(exc))
    return text or type(exc).__name__


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _short(command: str, limit: int = 80) -> str:
    one = " ".join(command.split())
    return repr(one if len(one) <= limit else one[: limit - 1] + "…")


# ---------------------------------------------------------------------------------------------
# Pool


class SessionPool:
    """Thread-safe cache of node sessions (one per node per process) with bounded fan-out."""

    def __init__(self, inventory: Inventory, *, session_factory: SessionFactory = NodeSession) -> None:
        self.inventory = inventory
        self._factory = session_factory
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def session(self, name: str) -> Session:
        """The cached session of node ``name`` (created, not yet connected, on first use)."""
        with self._lock:
            existing = self._sessions.get(name)
            if existing is not None:
                return existing
            try:
                node = self.inventory.node(name)
            except KeyError:
                raise NodeError(
                    name, f"not in the inventory (nodes: {', '.join(self.inventory.names)})"
                ) from None
            created = self._factory(node, self.inventory)
            self._sessions[name] = created
            return created

    def run(
        self, name: str, command: str, timeout: float | None = None, *, check: bool = False
    ) -> CommandResult:
        return self.session(name).run(command, timeout=timeout, check=check)

    def fan_out(
        self, names: Iterable[str], fn: Callable[[Session], T], *, parallelism: int = 8
    ) -> dict[str, T | NodeError]:
        """Call ``fn(session)`` for every node, at most ``parallelism`` at a time.

        Returns ``{name: result}`` in the order of ``names``; a node whose call raised gets a
        :class:`NodeError` instead (other exception types are wrapped in one, so one node's
        failure never hides the others' results).
        """
        order = list(dict.fromkeys(names))
        if not order:
            return {}

        def call(name: str) -> T | NodeError:
            try:
                return fn(self.session(name))
            except NodeError as exc:
                return exc
            except Exception as exc:
                err = NodeError(name, f"{type(exc).__name__}: {_cause(exc)}")
                err.__cause__ = exc
                return err

        workers = max(1, min(parallelism, len(order)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vps-fan-out") as pool:
            results = list(pool.map(call, order))
        return dict(zip(order, results, strict=True))

    def close_all(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.close()

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()


# ---------------------------------------------------------------------------------------------
# Registry

# Proxies from the environment are ignored on both paths: the registry is reached directly.
_REGISTRY_GET = (
    "import sys, urllib.request\n"
    "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
    "with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as r:\n"
    "    sys.stdout.write(r.read().decode('utf-8'))\n"
)


def query_registry(
    pool: Pool, registry: RegistryAccess, *, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The peers registered with the registry (``GET <url>/api/peers``).

    Directly over HTTP when ``registry.via_node`` is None, else by a small ``python3`` HTTP
    GET run on that node over SSH. Accepts a JSON list of objects or ``{"peers": [...]}``.
    Raises :class:`NodeError` (node = ``via_node`` or "registry") when there is no usable answer.
    """
    url = registry.url.rstrip("/") + "/api/peers"
    where = registry.via_node or "registry"
    if registry.via_node is None:
        try:
            with requests.Session() as http:
                http.trust_env = False
                response = http.get(url, timeout=timeout)
                response.raise_for_status()
                text = response.text
        except requests.RequestException as exc:
            raise NodeError(where, f"registry query failed: {_cause(exc)}", address=url) from None
    else:
        command = f"python3 -c {shlex.quote(_REGISTRY_GET)} {shlex.quote(url)} {shlex.quote(str(timeout))}"
        result = pool.run(registry.via_node, command, timeout=timeout + 5)
        if not result.ok:
            raise NodeError(where, f"registry query {url} failed ({result.summary()})")
        text = result.stdout
    return _parse_peers(text, where, url)


def _parse_peers(text: str, where: str, url: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise NodeError(where, f"registry {url} returned invalid JSON: {_short(text)}") from None
    if isinstance(data, dict) and isinstance(data.get("peers"), list):
        data = data["peers"]
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
        raise NodeError(where, f"registry {url} returned no peer list: {_short(text)}")
    return list(data)
