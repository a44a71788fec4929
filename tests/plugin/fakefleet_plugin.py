"""Test-only pytest plugin: a fleet whose nodes are this machine.

Installed with ``-p fakefleet_plugin`` by the plugin tests. It answers the plugin's
``pytest_vpstest_make_pool`` hook with a real ``remote.SessionPool`` whose sessions run each
command locally through ``sh -c`` (the seam remote.py offers), and it builds/deploys by
recording each call in a counter file, so tests can prove build and deploy ran once.
The probe templates of the test config point at ``fakeagent.sh`` (next to the config), whose
answers are a pure function of (node, peer, method): the expected numbers are known.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from pytest_vpstest.config import Inventory, Node
from pytest_vpstest.errors import UnreachableNodeError
from pytest_vpstest.fleet.remote import CommandResult, SessionPool


class LocalSession:
    def __init__(self, node: Node, inventory: Inventory) -> None:
        self._node = node

    @property
    def node(self) -> Node:
        return self._node

    def run(self, command: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        if self._node.name in os.environ.get("FAKE_UNREACHABLE", "").split(","):
            raise UnreachableNodeError(self._node.name, "connection refused")
        if "iperf3" in command:  # this fake fleet has no iperf3
            return CommandResult(self._node.name, command, 127, "", "iperf3: not found", 0.0)
        start = time.monotonic()
        try:
            p = subprocess.run(
                ["sh", "-c", command],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=os.environ | {"FAKE_NODE": self._node.name},
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return CommandResult(self._node.name, command, None, out, "", time.monotonic() - start, True)
        return CommandResult(
            self._node.name, command, p.returncode, p.stdout, p.stderr, time.monotonic() - start
        )

    def open_stream(self, command: str) -> LocalStream:
        return LocalStream(command, self._node.name)

    def put(self, local: Any, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalStream:
    """A local command with open stdin, read line by line (the batch seam of ``NodeSession``)."""

    def __init__(self, command: str, node: str) -> None:
        self._proc = subprocess.Popen(
            ["sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ | {"FAKE_NODE": node},
        )

    def send(self, text: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(text)
        self._proc.stdin.flush()

    def close_input(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()

    def readline(self) -> str:
        assert self._proc.stdout is not None
        return self._proc.stdout.readline()

    def exit_code(self) -> int | None:
        return self._proc.poll()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def _count(name: str) -> None:
    counter = Path(os.environ["FAKE_FLEET_DIR"]) / f"{name}.calls"
    with open(counter, "a", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()}\n")


def pytest_vpstest_make_pool(inventory: Inventory, project_config: Any) -> SessionPool:
    return SessionPool(inventory, session_factory=LocalSession)


def pytest_vpstest_build(run: Any) -> dict[str, Any]:
    _count("build")
    time.sleep(0.3)  # long enough for a second worker to arrive and wait on the lock
    if os.environ.get("FAKE_BUILD_FAIL"):
        return {"ok": False, "errors": ["src/main.rs:3:5: error[E0425]: cannot find value `x`"]}
    return {"ok": True, "artifact": str(Path(os.environ["FAKE_FLEET_DIR"]) / "agent.bin")}


def pytest_vpstest_deploy(run: Any, pool: Any, artifact: str | None) -> dict[str, Any]:
    _count("deploy")
    time.sleep(0.3)
    failed = {n: "start: refused" for n in os.environ.get("FAKE_DEPLOY_FAIL", "").split(",") if n}
    deployed = {n.name: {"bin": "/opt/fake/agent"} for n in run.inventory.nodes if n.name not in failed}
    return {"ok": len(deployed) * 2 >= len(run.inventory.nodes), "deployed": deployed, "failed": failed}


def pytest_vpstest_fetch_logs(run: Any, pool: Any, node: str) -> str:
    return f"log of {node}\n"
