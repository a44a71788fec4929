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

    def put(self, local: Any, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


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
