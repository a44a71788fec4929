"""Real runner processes killed with SIGKILL in every state and started again: the transitions log
ends complete, without a duplicate or a gap, the state file is never corrupt, no commit or test result
is lost; two runners started at once on one project: one runs, the other exits naming the holder;
``vpstest status/stop/logs`` work against a real background runner."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_vpstest.loop.runner import CHILD_MARKER
from pytest_vpstest.records.store import StateStore

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FULL_PATH = ["SETUP", "BUILD", "DEPLOY", "TEST", "FIX", "BUILD", "DEPLOY", "TEST", "WAIT_1HR", "TEST",
             "WAIT_6HR", "TEST", "COMPLETE"]


def _spawn(state_dir: Path, *extra: str, project: str = "crashy") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.fake_runner", str(state_dir), "--project", project, *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _state(state_dir: Path, project: str = "crashy") -> dict | None:
    path = state_dir / project / "state.json"
    try:
        return json.loads(path.read_text())  # must always parse: atomic replace
    except FileNotFoundError:
        return None


def _wait_for(state_dir: Path, target: str, proc: subprocess.Popen[str], *, nth_test: int | None = None,
              timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = _state(state_dir)
        finished_tests = len((doc or {}).get("runner", {}).get("checkpoints") or [])
        if doc and doc["state"] == target and (nth_test is None or finished_tests == nth_test):
            return
        assert proc.poll() is None, f"runner exited early: {proc.communicate()}"
        time.sleep(0.02)
    raise AssertionError(f"runner never reached {target}")


def _check_log(state_dir: Path, project: str = "crashy") -> list[str]:
    entries = StateStore(state_dir, project).transitions()
    raw = (state_dir / project / "transitions.jsonl").read_text().splitlines()
    assert len(raw) == len(entries)  # every line is complete JSON
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert len({e["id"] for e in entries}) == len(entries)
    for a, b in itertools.pairwise(entries):
        assert a["to"] == b["from"]
    return [e["to"] for e in entries]


def test_sigkill_in_every_state_then_resume(tmp_path: Path) -> None:
    kills = [("SETUP", None), ("BUILD", None), ("DEPLOY", None), ("TEST", 0), ("FIX", None),
             ("TEST", 1), ("WAIT_1HR", None), ("TEST", 2), ("WAIT_6HR", None), ("TEST", 3)]
    first = True
    for target, nth in kills:
        proc = _spawn(tmp_path, "--stage-seconds", "0.6", "--wait-seconds", "1.5",
                      *([] if first else ["--resume"]))
        first = False
        _wait_for(tmp_path, target, proc, nth_test=nth)
        time.sleep(0.15)  # into the middle of the stage
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        _check_log(tmp_path)
    proc = _spawn(tmp_path, "--stage-seconds", "0.1", "--wait-seconds", "1.5", "--resume")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "final: COMPLETE" in out
    assert _check_log(tmp_path) == FULL_PATH
    doc = _state(tmp_path)
    assert doc is not None
    assert [c["message"] for c in doc["commits"]] == ["fix 1"]
    # Four TESTs finished, and the four the kills cut off count too.
    assert len(doc["runner"]["checkpoints"]) == 4
    assert doc["counters"]["test_count"] == 4 + sum(1 for target, _ in kills if target == "TEST")
    assert doc["test_results"]["passed"] is True
    log = (tmp_path / "crashy" / "runner.log").read_text()
    assert log.count("resuming crashy in") == len(kills)
    # The TEST children of the killed runners were ended by their successors; none is left.
    assert "process(es) left by a previous runner" in log
    assert _marked_processes(tmp_path / "crashy") == []


def _marked_processes(project_dir: Path) -> list[int]:
    marker = f"{CHILD_MARKER}={project_dir.resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_two_runners_at_once_one_is_refused(tmp_path: Path) -> None:
    a = _spawn(tmp_path, "--stage-seconds", "0.3", "--wait-seconds", "30")
    b = _spawn(tmp_path, "--stage-seconds", "0.3", "--wait-seconds", "30")
    try:
        deadline = time.monotonic() + 30
        while a.poll() is None and b.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        loser, winner = (a, b) if a.poll() is not None else (b, a)
        _, err = loser.communicate(timeout=10)
        assert loser.returncode == 2
        assert err.count("\n") == 1 and f"already being run by pid {winner.pid}" in err
        assert winner.poll() is None
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=20)
    doc = _state(tmp_path)
    assert doc is not None and doc["state"] == "STOPPED"
    assert doc["machine"]["stop_reason"] == "user stop"


def _vpstest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_vpstest.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=90)


def test_cli_status_logs_and_stop_on_a_waiting_runner(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "--stage-seconds", "0.1", "--wait-seconds", "3600")
    try:
        _wait_for(tmp_path, "WAIT_1HR", proc)
        st = _vpstest("status", "--json", "--state-dir", str(tmp_path))
        assert st.returncode == 0, st.stderr
        row = json.loads(st.stdout)["projects"][0]
        assert row["project"] == "crashy" and row["state"] == "WAIT_1HR" and row["runner_alive"] is True
        assert row["wait_until"] and row["counters"]["test_count"] == 2
        text = _vpstest("status", "--state-dir", str(tmp_path)).stdout
        assert "crashy" in text and "WAIT_1HR" in text and f"alive (pid {proc.pid})" in text
        t0 = time.monotonic()
        stop = _vpstest("stop", "crashy", "--state-dir", str(tmp_path))
        assert stop.returncode == 0, stop.stderr
        assert time.monotonic() - t0 < 60  # not the hour the wait would last
        assert "STOPPED" in stop.stdout
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    doc = _state(tmp_path)
    assert doc is not None and doc["state"] == "STOPPED" and doc["machine"]["stop_reason"] == "user stop"
    logs = _vpstest("logs", "crashy", "--state-dir", str(tmp_path), "-n", "50")
    assert logs.returncode == 0
    assert "WAIT_1HR -> STOPPED" in logs.stdout and "user stop" in logs.stdout
    again = _vpstest("stop", "crashy", "--state-dir", str(tmp_path))
    assert again.returncode == 0 and "already STOPPED" in again.stdout
    missing = _vpstest("stop", "nope", "--state-dir", str(tmp_path))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no project 'nope'" in missing.stderr


def test_ctrl_c_during_a_stage_stops_gracefully(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "--stage-seconds", "0.2", "--wait-seconds", "30", "--long-stage", "build")
    _wait_for(tmp_path, "BUILD", proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert time.monotonic() - t0 < 60  # the 600 s stage was interrupted, not waited for
    assert proc.returncode == 1 and "final: STOPPED" in out, err
    assert "Traceback" not in err
    assert _check_log(tmp_path) == ["SETUP", "BUILD", "STOPPED"]
    doc = _state(tmp_path)
    assert doc is not None and doc["machine"]["stop_reason"] == "user stop"
    assert StateStore(tmp_path, "crashy").holder() is None  # the lease was released
