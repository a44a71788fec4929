"""Node health survives a crashed runner: a real runner process (``tests.e2e.fake_runner --health``)
is killed with SIGKILL after a node was respawned, and again after it Failed; after each ``--resume``
the node's liveness goes on where it was — its respawn attempts count on, and a Failed node stays
Failed even when its checks are good again (a fresh machine would make it Live)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_crash_resume import _spawn, _state

pytestmark = pytest.mark.e2e


def _set(path: Path, **spec: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, path)


def _node(state_dir: Path, name: str = "n1") -> dict[str, Any]:
    doc = _state(state_dir) or {}
    node: dict[str, Any] = (doc.get("nodes") or {}).get(name) or {}
    return node


def _until(state_dir: Path, proc: Any, what: str, ok: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = _node(state_dir)
        if ok(node):
            return node
        assert proc.poll() is None, f"runner exited early: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"n1 never {what}: {_node(state_dir)}")


def _kill(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)


def _events_since(state_dir: Path, mark: int) -> list[dict[str, Any]]:
    doc = _state(state_dir) or {}
    events: list[dict[str, Any]] = doc["runner"]["health_events"][mark:]
    return [e for e in events if e["node"] == "n1"]


def test_liveness_goes_on_after_sigkill_and_resume(tmp_path: Path) -> None:
    checks = tmp_path / "checks.json"
    _set(checks)
    args = ("--stage-seconds", "0.1", "--wait-seconds", "300", "--health", str(checks))
    proc = _spawn(tmp_path, *args)
    try:
        _until(tmp_path, proc, "went Live in the wait",
               lambda n: n.get("health") == "Live" and (_state(tmp_path) or {})["state"] == "WAIT_1HR")
        # The agent dies; the respawn restarts it, but it stays dead: Provisioning after attempt 1.
        _set(checks, n1="dead")
        _until(tmp_path, proc, "was respawned once", lambda n: n.get("respawns") == 1)
        _kill(proc)

        _set(checks, respawn="ok")  # good again
        mark = len((_state(tmp_path) or {})["runner"]["health_events"])
        proc = _spawn(tmp_path, *args, "--resume")
        _until(tmp_path, proc, "came back Live", lambda n: n.get("health") == "Live")
        _set(checks, n1="dead")
        node = _until(tmp_path, proc, "was respawned again", lambda n: n.get("respawns") == 2)
        # The attempt count went on: the respawn after the resume was the second of two, not a first.
        respawning = [e["reason"] for e in _events_since(tmp_path, mark) if e["to"] == "Respawning"]
        assert respawning == ["attempt 2"], respawning
        assert node["liveness"]["attempts"] == 2
        # Live once more, silent once more: no attempt left → Failed.
        _set(checks)
        _until(tmp_path, proc, "came back Live", lambda n: n.get("health") == "Live")
        _set(checks, n1="dead")
        node = _until(tmp_path, proc, "Failed", lambda n: n.get("health") == "Failed")
        assert "2 respawn attempt(s) used of 2" in node["health_reason"]
        _kill(proc)

        _set(checks)  # its checks are good again, but Failed is final
        mark = len((_state(tmp_path) or {})["runner"]["health_events"])
        proc = _spawn(tmp_path, *args, "--resume")
        checked = _node(tmp_path).get("health_checked")
        _until(tmp_path, proc, "checked after the resume",
               lambda n: n.get("health_checked") not in (None, checked))
        time.sleep(1.0)  # several more rounds
        node = _node(tmp_path)
        assert node["health"] == "Failed", node
        assert node["respawns"] == 2
        assert _events_since(tmp_path, mark) == []
        assert _node(tmp_path, "n2")["health"] == "Live"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
