"""Sessions behind the ``remote.Session`` seam for unit tests (no SSH).

``LocalSession`` runs each command with ``sh -c`` on this machine and copies files for put/get,
so deploy and service-manager code run their real shell commands against temp directories.
``fail`` lets a test make chosen operations fail. ``ScriptedSession`` only records commands and
answers from a function, for code whose commands cannot run here (systemctl).

Use with a pool: ``SessionPool(inventory, session_factory=local_session_factory())``.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pytest_vpstest.config import Inventory, Node
from pytest_vpstest.errors import NodeError, UnreachableNodeError
from pytest_vpstest.fleet.remote import CommandResult, SessionFactory

# fail(node, operation, argument) -> an exception to raise, or None to proceed.
# operation: "connect" | "run" | "put" | "get"; argument: the command or remote path.
FailHook = Callable[[str, str, str], Exception | None]


class LocalSession:
    """Runs commands locally: a stand-in node whose filesystem is this machine's."""

    def __init__(self, node: Node, inventory: Inventory, *, fail: FailHook | None = None) -> None:
        self._node = node
        self._fail = fail
        self.commands: list[str] = []
        # Every operation in order: ("run", command) | ("put", remote) | ("get", remote).
        self.ops: list[tuple[str, str]] = []
        self.closed = False
        self._lock = threading.Lock()

    @property
    def node(self) -> Node:
        return self._node

    def _check(self, operation: str, argument: str) -> None:
        if self._fail is None:
            return
        exc = self._fail(self._node.name, "connect", "")
        if exc is None:
            exc = self._fail(self._node.name, operation, argument)
        if exc is not None:
            raise exc

    def run(self, command: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        with self._lock:
            self.commands.append(command)
            self.ops.append(("run", command))
        self._check("run", command)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                ["sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            return CommandResult(
                self._node.name,
                command,
                None,
                _text(exc.stdout),
                _text(exc.stderr),
                time.monotonic() - started,
                True,
            )
        result = CommandResult(
            self._node.name, command, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started
        )
        if check and not result.ok:
            raise NodeError(self._node.name, f"{command!r} failed ({result.summary()})")
        return result

    def put(self, local: Path | str, remote: str) -> None:
        self.ops.append(("put", remote))
        self._check("put", remote)
        try:
            shutil.copyfile(local, remote)
        except OSError as exc:
            raise NodeError(self._node.name, f"upload {local} -> {remote} failed: {exc.strerror}") from None

    def get(self, remote: str, local: Path | str) -> None:
        self.ops.append(("get", remote))
        self._check("get", remote)
        try:
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise NodeError(self._node.name, f"download {remote} -> {local} failed: {exc.strerror}") from None

    def close(self) -> None:
        self.closed = True


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def local_session_factory(fail: FailHook | None = None) -> SessionFactory:
    """A pool session factory making :class:`LocalSession` objects (remembered in ``.sessions``)."""
    sessions: dict[str, LocalSession] = {}

    def make(node: Node, inventory: Inventory) -> LocalSession:
        session = LocalSession(node, inventory, fail=fail)
        sessions[node.name] = session
        return session

    make.sessions = sessions  # type: ignore[attr-defined]
    return make


def unreachable(node: str) -> UnreachableNodeError:
    """The error a real session raises for a node whose SSH port refuses connections."""
    return UnreachableNodeError(node, "unreachable: 127.0.0.1:22 connection refused", address="127.0.0.1:22")


class ScriptedSession:
    """Records commands and answers each from ``answer(command) -> (exit_code, stdout)``."""

    def __init__(self, node: Node, answer: Callable[[str], tuple[int, str]] | None = None) -> None:
        self._node = node
        self._answer = answer or (lambda _command: (0, ""))
        self.commands: list[str] = []
        self.uploads: list[tuple[str, str]] = []

    @property
    def node(self) -> Node:
        return self._node

    def run(self, command: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        self.commands.append(command)
        code, out = self._answer(command)
        result = CommandResult(self._node.name, command, code, out, "", 0.0)
        if check and not result.ok:
            raise NodeError(self._node.name, f"{command!r} failed ({result.summary()})")
        return result

    def put(self, local: Path | str, remote: str) -> None:
        self.uploads.append((str(local), remote))

    def get(self, remote: str, local: Path | str) -> None:
        raise NodeError(self._node.name, f"download {remote} not scripted")

    def close(self) -> None:
        pass
