"""The demo, the README's main job: its workspace builds, carries the planted relay defect as a commit,
and its fixer repairs and commits it; and, as root with network namespaces, `vpstest demo` runs the
whole loop against the lab (TEST fails, FIX commits, soak checkpoints pass, COMPLETE), prints where the
evidence is, and leaves no lab behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_vpstest.demo import BROKEN_LINE, GOOD_LINE, create_workspace
from tests.lab.conftest import worker_prefix

ROOT = Path(__file__).resolve().parents[2]


def _git_log(ws: Path) -> list[str]:
    out = subprocess.run(["git", "log", "--format=%s"], cwd=ws, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_demo_workspace_builds_and_its_fixer_repairs_the_planted_defect(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    config = create_workspace(ws)
    assert config == ws / "vpstest.yaml"
    assert "inventory: \"lab:vdemo\"" in config.read_text()
    assert _git_log(ws) == ["relay: check the sender of forwarded datagrams",
                            "agent: import the reference node"]
    node = (ws / "agent" / "node.py").read_text()
    assert BROKEN_LINE in node and GOOD_LINE not in node
    build = subprocess.run([sys.executable, "build.py"], cwd=ws, capture_output=True, text=True, timeout=60)
    assert build.returncode == 0, build.stderr
    assert (ws / "dist" / "agent.pyz").stat().st_size > 1000
    brief = tmp_path / "brief.md"
    brief.write_text("| 3 | n1×3 | `ERROR node: relay: dropped forwarded datagram from saorsa-<n>` |\n")
    fix = subprocess.run([sys.executable, "fixer.py", str(brief)], cwd=ws, capture_output=True,
                         text=True, timeout=60)
    assert fix.returncode == 0, fix.stdout + fix.stderr
    assert "1 line(s) mention relay" in fix.stdout
    assert _git_log(ws)[0] == "fix: handle datagrams relayed by a bootstrap again"
    assert GOOD_LINE in (ws / "agent" / "node.py").read_text()
    again = subprocess.run([sys.executable, "fixer.py", str(brief)], cwd=ws, capture_output=True, text=True)
    assert again.returncode == 1 and "nothing to fix" in again.stdout
    check = subprocess.run([sys.executable, "build.py", "--check"], cwd=ws, capture_output=True, text=True)
    assert check.returncode == 0


def test_demo_refuses_a_non_empty_workspace(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("mine")
    from pytest_vpstest.errors import VpsTestError

    with pytest.raises(VpsTestError, match="not empty"):
        create_workspace(tmp_path)


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the demo's netns lab needs root"
    from pytest_vpstest.lab.netns import netns_available

    ok, why = netns_available()
    if not ok:
        return f"network namespaces unavailable: {why}"
    return None


@pytest.mark.lab
@pytest.mark.e2e
@pytest.mark.slow
def test_vpstest_demo_end_to_end(tmp_path: Path) -> None:
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    ws = tmp_path / "demo"
    # Its own lab prefix and any free port: the demo test runs beside other labs and dashboards.
    prefix = worker_prefix("vdm")
    from pytest_vpstest import lab

    lab.down(prefix)  # what a killed earlier run of this test left (the demo would reuse a lab that is up)
    argv = ["demo", "--workspace", str(ws), "--prefix", prefix, "--dashboard-port", "0"]
    res = subprocess.run([sys.executable, "-m", "pytest_vpstest.cli", *argv],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    out = res.stdout
    expected = ("IDLE -> SETUP -> BUILD -> DEPLOY -> TEST -> FIX -> BUILD -> DEPLOY -> TEST -> WAIT_1HR "
                "-> TEST -> WAIT_6HR -> TEST -> COMPLETE")
    assert f"path:          {expected}" in out
    project = ws / ".vpstest" / "demo-agent"
    state = json.loads((project / "state.json").read_text())
    assert state["state"] == "COMPLETE"
    assert [c["message"] for c in state["commits"]] == ["fix: handle datagrams relayed by a bootstrap again"]
    assert state["counters"]["test_count"] == 4 and state["test_results"]["passed"] is True
    brief = (project / "fix" / "1" / "brief.md").read_text()
    assert "connectivity.relay.rate" in brief and "relay: dropped forwarded datagram" in brief
    proofs = list(project.glob("proof-*.md"))
    assert proofs and "Result:" in proofs[0].read_text()
    assert list((project / "runs").glob("*/report.html"))
    assert (project / "logs").is_dir() and any((project / "logs").iterdir())
    for label in ("proof:", "state file:", "HTML report:", "node logs:"):
        assert label in out
    assert not lab.inventory_path(prefix).exists()  # the lab was taken down again
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not [n for n in ns if n.startswith(f"{prefix}-")]


def test_a_bad_demo_prefix_is_one_error_line_before_anything_is_made(tmp_path: Path) -> None:
    ws = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "pytest_vpstest.cli", "demo", "--workspace", str(ws),
                          "--prefix", "Bad Prefix"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and not ws.exists()
    assert len(res.stderr.strip().splitlines()) == 1 and "prefix" in res.stderr, res.stderr
