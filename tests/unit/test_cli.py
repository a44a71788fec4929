"""The command line: every command has --help; errors are one line with a non-zero exit; start
without a terminal and without --yes says to pass --yes; status/logs/stop read the state directory
(stop records STOPPED itself when no runner is alive); nodes checks reachability in parallel."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pytest_vpstest import cli
from pytest_vpstest.config import Inventory, Node, ProjectConfig, SoakConfig
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.runner import Runner
from pytest_vpstest.records.store import StateStore
from tests.e2e.fake_runner import SlowStages

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["start", "status", "stop", "logs", "diagnose", "nodes", "demo", "lab"]


def _run(*args: str, stdin: str | None = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_vpstest.cli", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_top_level_help_lists_every_command() -> None:
    res = _run("--help")
    assert res.returncode == 0
    for c in COMMANDS:
        assert f"    {c} " in res.stdout
    assert "_runner" not in res.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: vpstest" in capsys.readouterr().out


def test_start_without_a_terminal_and_without_yes_says_to_pass_yes() -> None:
    res = _run("start", "demo", stdin="")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1
    assert "pass --yes" in res.stderr


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    res = _run("start", "--yes", "--config", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "config file not found" in res.stderr


def _finished_project(state_dir: Path, name: str = "alpha") -> None:
    cfg = ProjectConfig(path=None, project=name, workspace=state_dir,
                        soak=SoakConfig(wait_1hr_seconds=0.05, wait_6hr_seconds=0.05))
    inv = Inventory(nodes=(Node(name="n1", host="127.0.0.1"),))
    Runner(cfg, inv, state_dir, stages=SlowStages(0.0)).run()


def test_status_and_logs_of_a_finished_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _finished_project(tmp_path)
    assert cli.main(["status", "--json", "--state-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    row = doc["projects"][0]
    assert row["project"] == "alpha" and row["state"] == "COMPLETE" and row["runner_alive"] is False
    assert row["counters"]["fix_attempts"] == 1 and row["last_result"]["passed"] is True
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("PROJECT") and "COMPLETE" in table and "not running" in table
    assert cli.main(["logs", "alpha", "--state-dir", str(tmp_path), "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "WAIT_6HR -> TEST" in out and "TEST -> COMPLETE" in out and "== runner log" in out


def test_stop_without_a_runner_records_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = StateStore(tmp_path, "beta")
    lease = store.acquire()
    idle = m.initial_state("beta", datetime.now(UTC))
    state, _ = m.step(idle, m.Start(), idle.started_at)
    store.commit(lease, state.to_document(), {"from": "IDLE", "to": "SETUP"})
    store.release(lease)
    assert cli.main(["stop", "beta", "--state-dir", str(tmp_path)]) == 0
    assert "no runner was running" in capsys.readouterr().out
    doc = store.load()
    assert doc is not None and doc["state"] == "STOPPED" and doc["machine"]["stop_reason"] == "user stop"
    assert [e["to"] for e in store.transitions()] == ["SETUP", "STOPPED"]


def test_status_of_an_empty_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--state-dir", str(tmp_path / "none")]) == 0
    assert "no loops in" in capsys.readouterr().out


def test_nodes_lists_unreachable_nodes_with_one_line_causes(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "known_hosts").write_text("")
    inv = {"schema_version": 1, "known_hosts": "known_hosts", "connect_timeout": 2, "nodes": [
        {"name": "a-1", "host": "127.0.0.1", "port": 1, "role": "registry", "provider": "lab",
         "region": "here"},
        {"name": "a-4", "host": "127.0.0.1", "port": 1, "role": "nat", "nat": "full-cone"},
    ]}
    path = tmp_path / "nodes.yaml"
    path.write_text(json.dumps(inv))
    rc = cli.main(["nodes", "--nodes", str(path), "--timeout", "3"])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.startswith("VPS Nodes Status (verified ")
    assert "(Registry)" in out and "(NAT: Full Cone)" in out and "UNREACHABLE" in out
    assert "NAT Emulation Summary:" in out and "Full Cone NAT" in out


def test_diagnose_of_an_unreachable_node_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "nodes.yaml").write_text(
        "schema_version: 1\nknown_hosts: known_hosts\nconnect_timeout: 2\nnodes:\n"
        "  - {name: far-1, host: 127.0.0.1, port: 1}\n"
    )
    res = _run("diagnose", "far-1", "--nodes", str(tmp_path / "nodes.yaml"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("vpstest: error: far-1")
    assert "Traceback" not in res.stderr


def test_output_into_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    """``vpstest ... | head -1``: the reader is gone; no traceback, no "Broken pipe" error."""
    import os

    _finished_project(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before we write
    try:
        res = subprocess.run([sys.executable, "-m", "pytest_vpstest.cli", "status", "--state-dir",
                              str(tmp_path)], cwd=ROOT,
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert res.stderr == ""
    assert res.returncode == 0


def test_resume_of_a_finished_run_says_so_without_starting_a_runner(tmp_path: Path) -> None:
    _finished_project(tmp_path, "gamma")
    config = tmp_path / "gamma.yaml"
    config.write_text("project: gamma\n")
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("nodes:\n  - name: n1\n    host: 127.0.0.1\n")
    before = (tmp_path / "gamma" / "runner.log").read_text()
    res = _run("start", "--yes", "--resume", "--config", str(config), "--nodes", str(nodes),
               "--state-dir", str(tmp_path))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "nothing to resume" in res.stderr and res.stderr.count("\n") == 1
    assert "runner started" not in res.stdout
    assert not (tmp_path / "gamma" / "runner.out").exists()  # no runner process was started
    assert (tmp_path / "gamma" / "runner.log").read_text() == before
