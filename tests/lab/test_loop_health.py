"""Node health in the real loop, on the lab (network namespaces, real sshd, the reference agent):

* an agent killed during WAIT is respawned by the runner (through its service manager) and the next
  checkpoint passes;
* an agent killed in the middle of TEST (its SSH still working) is noticed within that run: its
  remaining pairs are skipped as "node unhealthy", its pairs are out of the rates, and the loop does
  not enter FIX;
* a node whose data link is cut (SSH over the management network and its service still fine) is
  no longer heard by any peer — the agents report whom they hear (``peers_seen``) — and is Suspect;
  the other nodes, heard by each other at the agents' own pace, never leave Live;
* a node whose sshd is stopped before the run: its pairs are skipped as "node unhealthy", the verdict
  is judged on the rest and the loop never enters FIX;
* nodes whose tests the config disables or leaves to the dashboard's Run tests (``manual``) are never
  tested by the loop: their tests skip with that reason;
* six of ten nodes unreachable: the run stops, naming each node and the cause.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest import lab as lab_api
from pytest_vpstest.config import load_inventory, load_project_config
from pytest_vpstest.demo import BROKEN_LINE, GOOD_LINE, create_workspace
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.project_files import request_stop
from pytest_vpstest.loop.runner import Runner
from pytest_vpstest.records.store import StateStore

from .conftest import Lab, netns_skip_reason, worker_prefix

pytestmark = pytest.mark.lab

# Registry, one bootstrap and three public test nodes: every pair connects when all are healthy,
# and any three of the four peers still make a complete matrix.
FIVE_NODES = """schema_version: 1
name: health
nodes:
  - {name: saorsa-1, role: registry, nat: none}
  - {name: saorsa-2, role: bootstrap, nat: none}
  - {name: saorsa-3, role: test, nat: none}
  - {name: saorsa-4, role: test, nat: none}
  - {name: saorsa-5, role: test, nat: none}
"""
SERVICE = "vdemo-agent"


@pytest.fixture(scope="module")
def health_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if reason := netns_skip_reason():
        pytest.skip(reason)
    prefix = worker_prefix("vhl")
    where = tmp_path_factory.mktemp(f"lab-{prefix}")
    topo = where / "health.yaml"
    topo.write_text(FIVE_NODES)
    record = lab_api.up(str(topo), "netns", prefix, where)
    try:
        yield Lab(record=record, dir=where)
    finally:
        lab_api.down(prefix, where)


def _workspace(tmp: Path, lab: Lab, *, wait_1hr: float | None) -> Path:
    """The demo workspace without its planted defect, with short waits and fast health checks."""
    ws = tmp / "ws"
    config = create_workspace(ws, prefix=lab.record.prefix, project="health")
    node = ws / "agent" / "node.py"
    node.write_text(node.read_text().replace(BROKEN_LINE, GOOD_LINE))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qam", "undo"],
                   cwd=ws, check=True)
    text = config.read_text()
    text = text.replace(f'inventory: "lab:{lab.record.prefix}"', f"inventory: {lab.dir / 'inventory.yaml'}")
    text = text.replace("    attempts: 2\n", "    attempts: 1\n")
    soak = (f"  wait_1hr: true\n  wait_6hr: false\n  wait_1hr_seconds: {wait_1hr}\n" if wait_1hr
            else "  wait_1hr: false\n  wait_6hr: false\n")
    text = text.replace("  wait_1hr: true\n  wait_6hr: true\n", soak)
    text = text.replace("  wait_1hr_seconds: 5\n  wait_6hr_seconds: 10\n", "")
    text += ("\nhealth:\n  check_seconds: 2\n  suspect_after_seconds: 2\n  evict_after_seconds: 2\n"
             "  respawn_attempts: 2\n")
    config.write_text(text)
    return config


def _run(config_path: Path, lab: Lab) -> tuple[m.RunState, Runner]:
    config = load_project_config(config_path)
    inventory = load_inventory(lab.dir / "inventory.yaml")
    lines: list[str] = []
    runner = Runner(config, inventory, config.workspace / ".vpstest", out=lines.append, fix_retry_seconds=1.0)
    try:
        final = runner.run()
    finally:
        _stop_agents(lab)
    print("\n".join(lines[-60:]))
    return final, runner


def _stop_agents(lab: Lab) -> None:
    for n in lab.record.nodes:
        if n.role != "registry":
            pid_file = f"/opt/vpstest/run/{SERVICE}.pid"
            command = f"p=$(cat {pid_file} 2>/dev/null) && kill -9 -$p 2>/dev/null; rm -f {pid_file}; true"
            lab.ssh(n.name, command, check=False)


def _transitions(runner: Runner) -> list[str]:
    return [e["to"] for e in StateStore(runner.state_dir, runner.project).transitions()]


def _sshd_pid(lab: Lab, name: str) -> int:
    return int((lab.dir / "run" / f"sshd-{name}.pid").read_text().strip())


def test_an_agent_killed_during_wait_is_respawned_and_the_next_checkpoint_passes(
    health_lab: Lab, tmp_path: Path
) -> None:
    config = _workspace(tmp_path, health_lab, wait_1hr=30)
    state = tmp_path / "ws" / ".vpstest" / "health" / "state.json"
    victim = "saorsa-4"
    killed = threading.Event()

    def kill_in_wait() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                doc = json.loads(state.read_text())
            except (OSError, ValueError):
                doc = {}
            if doc.get("state") == "WAIT_1HR":
                health_lab.ssh(victim, f"kill -9 -$(cat /opt/vpstest/run/{SERVICE}.pid)")
                killed.set()
                return
            if doc.get("state") in ("STOPPED", "COMPLETE", "FIX"):
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_in_wait, daemon=True)
    watcher.start()
    final, runner = _run(config, health_lab)
    watcher.join(5)
    assert killed.is_set(), "the run never reached WAIT_1HR"
    assert final.state is m.State.COMPLETE, final.stop_reason
    assert _transitions(runner) == ["SETUP", "BUILD", "DEPLOY", "TEST", "WAIT_1HR", "TEST", "COMPLETE"]
    doc = StateStore(runner.state_dir, runner.project).load()
    assert doc is not None
    events = [e for e in doc["runner"]["health_events"] if e["node"] == victim]
    went = [e["to"] for e in events]
    assert "Respawning" in went and went[-1] == "Live", events
    assert doc["nodes"][victim]["respawns"] >= 1
    # The respawn happened during the wait, before the second checkpoint ran.
    checkpoints = doc["runner"]["checkpoints"]
    assert [c["passed"] for c in checkpoints] == [True, True]
    respawned_at = next(e["time"] for e in events if e["to"] == "Respawning")
    assert respawned_at <= checkpoints[1]["time"]
    log = (runner.dir / "runner.log").read_text()
    assert f"node {victim}: Evicted -> Respawning" in log


def test_nodes_with_tests_disabled_or_manual_are_never_tested_by_the_loop(
    health_lab: Lab, tmp_path: Path
) -> None:
    config = _workspace(tmp_path, health_lab, wait_1hr=None)
    config.write_text(
        config.read_text() + "\ndashboard:\n  node_tests:\n    saorsa-4: disabled\n    saorsa-5: manual\n"
    )
    final, runner = _run(config, health_lab)
    assert final.state is m.State.COMPLETE, final.stop_reason
    assert "FIX" not in _transitions(runner)
    doc = StateStore(runner.state_dir, runner.project).load()
    assert doc is not None
    results = json.loads(Path(doc["runner"]["last_results"]).read_text())
    assert results["skipped_nodes"] == {
        "saorsa-4": "tests disabled for node saorsa-4",
        "saorsa-5": "tests run manually for node saorsa-5",
    }
    assert results["unhealthy"] == {}
    tested = {n for p in results["pairs"] for n in (p["from"], p["to"])}
    assert tested == {"saorsa-2", "saorsa-3"}, tested
    assert results["tests"]["skipped"] == 30  # every pair with saorsa-4 or -5: 10 of 12, x 3 methods
    assert results["tests"]["failed"] == 0
    log = (runner.dir / "runner.log").read_text()
    reasons = "tests disabled for node saorsa-4; tests run manually for node saorsa-5"
    assert f"leaving out 2 node(s): {reasons}" in log


def test_an_agent_killed_during_test_is_noticed_within_the_run_and_the_loop_does_not_fix(
    health_lab: Lab, tmp_path: Path
) -> None:
    config = _workspace(tmp_path, health_lab, wait_1hr=None)
    # More attempts per pair, so the matrix is still running when the agent is killed.
    config.write_text(config.read_text().replace("    attempts: 1\n", "    attempts: 8\n"))
    runs = tmp_path / "ws" / ".vpstest" / "health" / "runs"
    victim = "saorsa-4"
    killed: list[int] = []

    def kill_mid_matrix() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            for progress in runs.glob("*/matrix/progress.json"):
                try:
                    phases = json.loads(progress.read_text())["phases"]
                except (OSError, ValueError, KeyError):
                    continue
                done = sum(p["done"] for p in phases)
                if done >= 40 and not all(p["finished"] for p in phases):
                    health_lab.ssh(victim, f"kill -9 -$(cat /opt/vpstest/run/{SERVICE}.pid)")
                    killed.append(done)
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_mid_matrix, daemon=True)
    watcher.start()
    final, runner = _run(config, health_lab)
    watcher.join(5)
    assert killed, "the matrix never ran"
    assert "FIX" not in _transitions(runner), final.stop_reason
    doc = StateStore(runner.state_dir, runner.project).load()
    assert doc is not None
    results = json.loads(Path(doc["runner"]["last_results"]).read_text())
    assert results["unhealthy"][victim].startswith(f"agent not answering on {victim}"), results["unhealthy"]
    assert results["tests"]["skipped"] > 0
    assert not any(victim in (p["from"], p["to"]) for p in results["pairs"]), "its pairs are in the rates"
    assert all(f["cause"] == "infrastructure" and victim in f["nodes"] for f in results["failed_tests"])
    # Judged on the rest: a failure with the dead agent is not a software failure (tests.failed counts
    # none), the other nodes' pairs all connected, so the run passes and the loop completes.
    assert results["tests"]["failed"] == 0
    assert results["tests"]["infrastructure_failed"] == len(results["failed_tests"])
    assert final.state is m.State.COMPLETE, final.stop_reason


def test_a_node_no_peer_hears_is_suspect_while_ssh_and_its_service_are_fine(
    health_lab: Lab, tmp_path: Path
) -> None:
    config = _workspace(tmp_path, health_lab, wait_1hr=240)
    # The agents re-register every 5 s: a sighting up to 12 s old means the peer is there.
    config.write_text(config.read_text() + "  peer_seen_within_seconds: 12\n")
    state_dir = tmp_path / "ws" / ".vpstest"
    state = state_dir / "health" / "state.json"
    victim, ns = "saorsa-3", f"{health_lab.record.prefix}-saorsa-3"
    seen: dict[str, Any] = {}

    def cut_then_stop() -> None:
        deadline = time.monotonic() + 400
        try:
            while time.monotonic() < deadline:
                try:
                    doc = json.loads(state.read_text())
                except (OSError, ValueError):
                    doc = {}
                nodes = doc.get("nodes") or {}
                if doc.get("state") in ("STOPPED", "COMPLETE"):
                    return
                if "cut" not in seen and doc.get("state") == "WAIT_1HR" and all(
                    (e.get("liveness") or {}).get("observers") == ["ssh", "service", "peers"]
                    for n, e in nodes.items() if n != "saorsa-1"
                ):
                    assert health_lab.in_ns(ns, ["ip", "link", "set", "eth0", "down"]).returncode == 0
                    seen["cut"] = time.monotonic()
                entry = nodes.get(victim) or {}
                if "cut" in seen and "no peer has heard from it lately" in str(entry.get("health_reason")):
                    seen["entry"] = entry
                    seen["after"] = time.monotonic() - seen["cut"]
                    return
                time.sleep(0.2)
        finally:
            health_lab.in_ns(ns, ["ip", "link", "set", "eth0", "up"])
            request_stop(state_dir, "health")

    watcher = threading.Thread(target=cut_then_stop, daemon=True)
    watcher.start()
    final, runner = _run(config, health_lab)
    watcher.join(5)
    assert "cut" in seen, "the loop never counted the peers' reports in its wait"
    assert "entry" in seen, "the node no peer hears was never found out"
    entry = seen["entry"]
    assert entry["ssh"] is True and entry["service"] is True, entry
    assert entry["health"] in ("Suspect", "Evicted", "Respawning", "Provisioning"), entry
    print(f"found out {seen['after']:.1f} s after the cut")
    assert final.state is m.State.STOPPED and final.stop_reason == "user stop"
    doc = StateStore(runner.state_dir, runner.project).load()
    assert doc is not None
    others = [e for e in doc["runner"]["health_events"] if e["node"] != victim and e["from"] == "Live"]
    assert others == [], f"healthy nodes flapped: {others}"


def test_a_node_with_sshd_stopped_is_skipped_as_unhealthy_and_the_loop_does_not_fix(
    health_lab: Lab, tmp_path: Path
) -> None:
    config = _workspace(tmp_path, health_lab, wait_1hr=None)
    victim = "saorsa-5"
    # Runs after the test above on the module's lab; the lab is removed after this test.
    os.kill(_sshd_pid(health_lab, victim), signal.SIGTERM)
    final, runner = _run(config, health_lab)
    path = _transitions(runner)
    assert "FIX" not in path
    assert final.state is m.State.COMPLETE, final.stop_reason
    doc = StateStore(runner.state_dir, runner.project).load()
    assert doc is not None
    assert doc["nodes"][victim]["health"] != "Live"
    results = json.loads(Path(doc["runner"]["last_results"]).read_text())
    assert victim in results["unhealthy"]
    assert not any(victim in (p["from"], p["to"]) for p in results["pairs"]), "the unhealthy node was tested"
    assert results["tests"]["skipped"] >= 18  # every pair with saorsa-5: 3 peers x 2 directions x 3 methods
    assert results["tests"]["failed"] == 0


def test_six_of_ten_unreachable_stop_the_run_naming_each_node(tmp_path: Path) -> None:
    if reason := netns_skip_reason():
        pytest.skip(reason)
    prefix = worker_prefix("vhx")
    where = tmp_path / "lab"
    where.mkdir()
    record = lab_api.up("full", "netns", prefix, where)
    try:
        lab = Lab(record=record, dir=where)
        config = _workspace(tmp_path, lab, wait_1hr=None)
        victims = ["saorsa-3", "saorsa-4", "saorsa-5", "saorsa-7", "saorsa-8", "saorsa-10"]
        for name in victims:
            os.kill(_sshd_pid(lab, name), signal.SIGTERM)
        cfg = load_project_config(config)
        runner = Runner(cfg, load_inventory(where / "inventory.yaml"), cfg.workspace / ".vpstest")
        final = runner.run()
    finally:
        lab_api.down(prefix, where)
    assert final.state is m.State.STOPPED
    reason = final.stop_reason or ""
    assert reason.startswith("only 4 of 10 nodes reachable"), reason
    for name in victims:
        assert f"{name} (" in reason, f"{name} not named in: {reason}"
    assert _transitions(runner) == ["SETUP", "STOPPED"]
