"""The matrix engine on the full 10-node lab with the reference agent, over real SSH: the
connectivity suite measured once with single probes (one cached connection per node, probes as
concurrent channels) and once through the agent's batch command (one per node), and both matrices
are what NAT theory expects in every cell (``pytest_vpstest.lab.theory``). The gossip suite through
the batch command too, with its single-probe templates broken on purpose: every publish, poll and
CRDT probe is a batch request, and every message reaches every node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.lab.theory import expected_matrix
from pytest_vpstest.lab.topology import load_topology
from tests.lab.conftest import Lab, lab_fixture

pytestmark = [pytest.mark.lab, pytest.mark.slow]

lab = lab_fixture("v9e", "full")

# Successes take well under 100 ms on the lab; 3 s leaves room for a loaded machine.
CONFIG = """\
project: labmatrix
workspace: {ws}
state_dir: {ws}/state
modules:
  agent: {{binary: agent.pyz}}
build:
  command: {python} -m pytest_vpstest.lab.agent.build dist/agent.pyz
  artifact: dist/agent.pyz
  timeout_seconds: 120
deploy:
  install_path: /opt/vpstest/
  service_prefix: v9e
  start_command: >-
    {{bin}} run --node {{node}} --bind {{p2p_address}} --registry {{registry}} --bootstrap {{bootstrap}}
  registration_timeout_seconds: 30
probes:
{batch}
tests:
  connectivity: {{attempts: 2, timeout_seconds: 3, direct_to_nat: true, success_criteria: {{relay: 100}}}}
"""


def write_config(ws: Path, batch: bool) -> Path:
    line = '  batch: "{bin} probe batch"' if batch else '  status: "{bin} probe status --json"'
    path = ws / ("batch.yaml" if batch else "single.yaml")
    path.write_text(textwrap.dedent(CONFIG.format(ws=ws, python=sys.executable, batch=line)))
    return path


@pytest.fixture(scope="module")
def workspace(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("matrix-ws")


def run_connectivity(
    lab: Lab, config: Path, *args: str, focus: str = "connectivity"
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = config.with_suffix(".results.json")
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "--pyargs",
        "pytest_vpstest.suites",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-q",
        f"--vps-config={config}",
        f"--vps-nodes={lab.dir / 'inventory.yaml'}",
        f"--vps-results-json={out}",
        f"--vps-focus={focus}",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if k != "VPSTEST_RUNNER_TOKEN"}
    proc = subprocess.run(argv, cwd=config.parent, capture_output=True, text=True, timeout=900, env=env)
    assert out.exists(), proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def against_theory(doc: dict[str, Any]) -> list[str]:
    expected = expected_matrix(load_topology("full"))
    rows = {(r["from"], r["to"], r["method"]): r for r in doc["pairs"] if r["suite"] == "connectivity"}
    assert set(rows) == set(expected)
    wrong = []
    for cell, outcome in sorted(expected.items()):
        row = rows[cell]
        if outcome == "connects" and row["success"] != row["attempts"]:
            wrong.append(f"{cell}: expected to connect, {row['success']}/{row['attempts']}")
        if outcome == "fails" and row["success"] != 0:
            wrong.append(f"{cell}: expected to fail, {row['success']}/{row['attempts']}")
    return wrong


def test_single_probes_over_one_connection_per_node_follow_nat_theory(lab: Lab, workspace: Path) -> None:
    proc, doc = run_connectivity(lab, write_config(workspace, batch=False))
    assert doc["tests"]["failed"] == 0, proc.stdout[-4000:]
    assert against_theory(doc) == []
    assert "vpstest connectivity: " in proc.stdout and " probes, " in proc.stdout


def test_the_agents_batch_command_gives_the_same_matrix(lab: Lab, workspace: Path) -> None:
    proc, doc = run_connectivity(
        lab,
        write_config(workspace, batch=True),
        "--vps-skip-build",
        "--vps-skip-deploy",
        "--vps-proof=all-evidence",
    )
    assert doc["tests"]["failed"] == 0, proc.stdout[-4000:]
    assert against_theory(doc) == []
    # Failed attempts carry the batch command and the request line as their evidence.
    run_dir = next((workspace / "state" / "labmatrix" / "runs").glob("*/evidence/connections.json"))
    failures = json.loads(run_dir.read_text())["failed_attempts"]
    assert failures and all(" probe batch <<< {" in f["command"] for f in failures)


# Single gossip probes would fail: these templates exit 1 without an answer.
BROKEN_SINGLE_GOSSIP = """\
  gossip_publish: "false {topic}"
  gossip_received: "false {message_id}"
  crdt: "false {amount}"
"""


def test_gossip_and_crdt_go_through_the_agents_batch_command(lab: Lab, workspace: Path) -> None:
    config = write_config(workspace, batch=True)
    text = config.read_text().replace("probes:\n", "probes:\n" + BROKEN_SINGLE_GOSSIP)
    text = text.replace("tests:\n", "tests:\n  gossip: {timeout_seconds: 10, publishers: 3}\n")
    gossip_config = config.with_name("gossip.yaml")
    gossip_config.write_text(text)
    proc, doc = run_connectivity(
        lab, gossip_config, "--vps-skip-build", "--vps-skip-deploy", "-rA", focus="gossip"
    )
    assert doc["tests"]["passed"] == 4 and doc["tests"]["failed"] == 0, proc.stdout[-4000:]
    gossip = doc["test_results"]["suites"]["gossip"]
    peers = 9  # the full lab's nodes but the registry
    assert gossip["messages"] == 3 and gossip["expected"] == gossip["delivered"] == 3 * (peers - 1)
    assert gossip["crdt"]["converged"] is True and gossip["crdt"]["nodes"] == peers
    assert "vpstest gossip: " in proc.stdout and " probes, " in proc.stdout
