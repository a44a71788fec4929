"""The second adapter in the repository (docs/examples/tcp-node): a minimal TCP node that shares no
code with the reference agent, kept green by the contract check. Two real daemons on loopback
addresses; every probe a real process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_vpstest.config import Inventory, Node, ProbeTemplates, ProjectConfig
from pytest_vpstest.fleet.contract_check import check_contract, contract_passed
from pytest_vpstest.fleet.node import plan_node
from pytest_vpstest.fleet.probes import ProbeRunner
from tests.unit.fleet.test_contract_check import LocalTransport

NODE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "tcp-node" / "tcpnode.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Inventory, int]]:
    port = free_port()
    inv = Inventory(
        nodes=(
            Node("a", "127.0.0.1", p2p_address="127.0.0.2", install_path=str(tmp_path / "a")),
            Node("b", "127.0.0.1", p2p_address="127.0.0.3", install_path=str(tmp_path / "b")),
        )
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(NODE), "run", "--node", n.name, "--listen", f"{n.p2p_address}:{port}",
             "--state", str(tmp_path / n.name)]
        )
        for n in inv.nodes
    ]
    try:
        deadline = time.monotonic() + 20
        while not all((tmp_path / n.name / "node.json").exists() for n in inv.nodes):
            assert time.monotonic() < deadline, "tcpnode daemons did not start"
            assert all(p.poll() is None for p in procs), "a tcpnode daemon exited"
            time.sleep(0.05)
        yield inv, port
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def templates(port: int) -> ProbeTemplates:
    py = f"{sys.executable} {NODE}"
    return ProbeTemplates(
        status=f"{py} status --state {{install_path}}",
        connect=f"{py} connect --peer-address {{peer_address}} --port {port} --method {{method}} "
        "--timeout {timeout}",
        throughput=f"{py} throughput --peer-address {{peer_address}} --port {port} --seconds {{seconds}}",
        crdt=None,
        reset=f"{py} reset --state {{install_path}}",
    )


def runner(inv: Inventory, port: int, tmp_path: Path) -> ProbeRunner:
    config = ProjectConfig(path=None, project="p", workspace=tmp_path)
    plans = {n.name: plan_node(n, config) for n in inv.nodes}
    return ProbeRunner(LocalTransport(), inv, templates(port), plan_for=plans.__getitem__)


@pytest.mark.parametrize("focus", ["connectivity", "throughput"])
def test_the_tcp_node_passes_the_contract_check_for_its_focuses(
    fleet: tuple[Inventory, int], tmp_path: Path, focus: str
) -> None:
    inv, port = fleet
    peers = {"a": "b", "b": "a"}
    rows = check_contract(runner(inv, port, tmp_path), ["a", "b"], peers.__getitem__, timeout=10, focus=focus)
    assert contract_passed(rows), [r for r in rows if r.status not in ("ok", "skipped")]
    by = {(r.node, r.action): r.status for r in rows}
    assert by[("a", "status")] == by[("a", "connect")] == by[("a", "reset")] == "ok"
    assert by[("a", "throughput")] == ("ok" if focus == "throughput" else "skipped")
    assert by[("a", "gossip_publish")] == "skipped"  # not needed by either focus


def test_the_tcp_node_says_ok_false_for_what_it_cannot_do_and_for_a_dead_peer(
    fleet: tuple[Inventory, int], tmp_path: Path
) -> None:
    inv, port = fleet
    probe = runner(inv, port, tmp_path)
    punch = probe.connect("a", "b", "holepunch", timeout=5)
    assert punch.valid and not punch.ok and "not implemented" in punch.reason
    status = probe.status("b")
    assert status.ok and status.get("peer_id")
    dead = ProbeRunner(LocalTransport(), inv, templates(free_port()), plan_for=probe.plan_for)
    r = dead.connect("a", "b", "direct", timeout=2)
    assert r.valid and not r.ok and "connect: 127.0.0.3" in r.stderr


def test_the_readme_config_loads() -> None:
    from pytest_vpstest.config import parse_project_config

    text = (NODE.parent / "README.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = parse_project_config(block, str(NODE.parent / "vpstest.yaml"))
    assert cfg.deploy.readiness == "status" and cfg.probes.crdt is None and cfg.probes.reset
