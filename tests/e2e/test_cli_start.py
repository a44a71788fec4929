"""`vpstest start --yes` with a real config file: detached in the background (the command returns,
the runner goes on in its own session and records its result) and in the foreground; a fleet with no
reachable node stops at SETUP with the documented reason, and `status` shows it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "nodes.yaml").write_text(
        "schema_version: 1\nknown_hosts: known_hosts\nconnect_timeout: 3\nnodes:\n"
        "  - {name: far-1, host: 127.0.0.1, port: 1, role: test}\n"
        "  - {name: far-2, host: 127.0.0.1, port: 1, role: test}\n"
    )
    (tmp_path / "vpstest.yaml").write_text(
        f"project: unreachable\nworkspace: {tmp_path}\ninventory: nodes.yaml\n"
        f"state_dir: {tmp_path / 'state'}\n"
        "focus: connectivity\ncriteria: all-pass\nproof: logs\n"
        "build: {command: 'true'}\n"
    )
    return tmp_path


def _vpstest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_vpstest.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def _state(project: Path) -> dict:
    path = project / "state" / "unreachable" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_start_in_the_background_returns_and_the_runner_records_its_result(project: Path) -> None:
    res = _vpstest("start", "--yes", "--config", "vpstest.yaml", cwd=project)
    assert res.returncode in (0, 1), res.stderr
    assert "runner" in res.stdout and "pid" in res.stdout
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _state(project).get("state") != "STOPPED":
        time.sleep(0.2)
    doc = _state(project)
    assert doc["state"] == "STOPPED"
    assert "only 0 of 2 nodes reachable at SETUP" in doc["machine"]["stop_reason"]
    assert doc["nodes"]["far-1"]["status"] == "offline"
    st = _vpstest("status", "--json", "--config", "vpstest.yaml", cwd=project)
    row = json.loads(st.stdout)["projects"][0]
    assert row["state"] == "STOPPED" and row["runner_alive"] is False


def test_start_in_the_foreground_prints_progress(project: Path) -> None:
    res = _vpstest("start", "unreachable", "connectivity", "all-pass", "logs", "--yes", "--foreground",
                   "--config", "vpstest.yaml", cwd=project)
    assert res.returncode == 1
    assert "IDLE -> SETUP" in res.stdout and "SETUP -> STOPPED" in res.stdout
    assert "far-1: unreachable" in res.stdout
    assert "vpstest: unreachable: STOPPED (only 0 of 2 nodes reachable" in res.stdout
