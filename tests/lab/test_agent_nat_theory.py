"""The reference agent over the full netns lab follows NAT theory, exercised through the probe contract.

A lab with every NAT type (two symmetric NATs, so symmetric ↔ symmetric can be tried) runs one agent
in each test node's namespace, registered with the lab's registry and both bootstraps. Between every
ordered pair: direct reaches public and full-cone nodes and never a symmetric node's registered
mapping; hole punching succeeds between cone-type NATs and public nodes, and symmetric ↔ full-cone /
address-restricted / public, fails symmetric ↔ symmetric and symmetric ↔ port-restricted (no port
prediction), and a successful punch always ends on a direct path; relay succeeds everywhere. Gossip
floods to every node, behind every NAT, and the replicated counter converges. Finally the zipapp,
uploaded over real SSH and run by the plain-process service manager, outlives the session that
started it, finds its home without arguments and answers probes over SSH until it is stopped.
"""

from __future__ import annotations

import itertools
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest import lab as lab_api
from pytest_vpstest.config import load_inventory, parse_project_config
from pytest_vpstest.fleet.node import plan_node
from pytest_vpstest.fleet.remote import SessionPool
from pytest_vpstest.fleet.services import service_manager
from pytest_vpstest.lab.agent import build as agent_build
from pytest_vpstest.lab.topology import parse_topology
from tests.lab.conftest import Lab, netns_skip_reason, requires_netns, worker_prefix

pytestmark = [pytest.mark.lab, requires_netns]

# One lab per xdist worker and per tagged test session (worker_prefix): never a shared prefix.
PREFIX = worker_prefix("vpa")
TOPOLOGY = """
schema_version: 1
name: nat-theory
nodes:
  - {name: reg, role: registry, nat: none}
  - {name: bs1, role: bootstrap, nat: none}
  - {name: bs2, role: bootstrap, nat: none}
  - {name: fc, role: nat, nat: full-cone}
  - {name: ar, role: nat, nat: address-restricted}
  - {name: pr, role: nat, nat: port-restricted}
  - {name: sy1, role: nat, nat: symmetric}
  - {name: sy2, role: nat, nat: symmetric}
  - {name: pub1, role: test, nat: none}
  - {name: pub2, role: test, nat: none}
"""
NAT = {
    "fc": "full-cone",
    "ar": "address-restricted",
    "pr": "port-restricted",
    "sy1": "symmetric",
    "sy2": "symmetric",
    "pub1": "none",
    "pub2": "none",
}
NODES = list(NAT)
ORDERED = list(itertools.permutations(NODES, 2))
AGENT = [sys.executable, "-m", "pytest_vpstest.lab.agent"]


def punch_expected(a: str, b: str) -> bool:
    """RFC 4787 theory without port prediction: a symmetric NAT's new port per destination is only
    reachable by a peer that accepts packets from any port (EIF, ADF) or has no NAT at all."""
    kinds = {NAT[a], NAT[b]}
    if "symmetric" not in kinds:
        return True
    other = (kinds - {"symmetric"}) or {"symmetric"}
    return other <= {"none", "full-cone", "address-restricted"}


def pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


@dataclass
class Agents:
    lab: Lab
    homes: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]]

    def ns(self, name: str) -> str:
        ns = self.lab.node(name).ns
        assert ns is not None
        return ns

    def probe(self, name: str, *args: str, timeout: float = 60) -> dict[str, Any]:
        done = self.lab.in_ns(
            self.ns(name),
            [*AGENT, "probe", *args, "--json", "--home", str(self.homes[name])],
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr
        [line] = done.stdout.strip().splitlines()
        answer = json.loads(line)
        assert isinstance(answer, dict)
        return answer

    def wait_until(self, check: Any, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    if reason := netns_skip_reason():
        pytest.skip(reason)
    where = tmp_path_factory.mktemp("lab-agent")
    record = lab_api.up(parse_topology(TOPOLOGY), "netns", PREFIX, where)
    running = Lab(record=record, dir=where)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    homes: dict[str, Path] = {}
    try:
        registry = next(s.bind for s in record.services if s.kind == "registry")
        bootstraps = ",".join(sorted(s.bind for s in record.services if s.kind == "bootstrap"))
        for name in NODES:
            node = running.node(name)
            homes[name] = where / "agents" / name
            homes[name].mkdir(parents=True)
            log = open(where / f"agent-{name}.log", "wb")  # noqa: SIM115 - handed to the process
            procs[name] = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    str(node.ns),
                    *AGENT,
                    "run",
                    "--node",
                    name,
                    "--bind",
                    node.data_ip,
                    "--registry",
                    f"http://{registry}",
                    "--bootstrap",
                    bootstraps,
                    "--home",
                    str(homes[name]),
                ],
                stdout=log,
                stderr=log,
            )
            log.close()
        agents = Agents(running, homes, procs)

        def meshed() -> bool:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            assert not dead, f"agents exited: {dead} (logs in {where})"
            return all(set(agents.probe(n, "status")["peers"] or ()) >= set(NODES) - {n} for n in NODES)

        agents.wait_until(meshed, "every agent registered and seeing the others")
        yield agents
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        lab_api.down(PREFIX, where)


def test_agents_learn_their_mapped_addresses(agents: Agents) -> None:
    for name in NODES:
        status = agents.probe(name, "status")
        node = agents.lab.node(name)
        assert status["addresses"] == [f"{node.data_ip}:9000"]
        assert status["mapped"].split(":")[0] == node.public_ip, status
        expected = {"none": "none", "symmetric": "symmetric"}.get(NAT[name], "cone")
        assert status["nat"] == expected, status


@pytest.mark.parametrize("pair", [p for p in ORDERED if NAT[p[1]] in ("none", "full-cone")], ids=pair_id)
def test_direct_reaches_public_and_full_cone_nodes(agents: Agents, pair: tuple[str, str]) -> None:
    answer = agents.probe(pair[0], "connect", "--peer", pair[1], "--method", "direct", "--timeout", "5")
    assert (answer["ok"], answer["path"]) == (True, "direct"), answer


@pytest.mark.parametrize("pair", [p for p in ORDERED if NAT[p[1]] == "symmetric"], ids=pair_id)
def test_direct_never_reaches_a_symmetric_node(agents: Agents, pair: tuple[str, str]) -> None:
    answer = agents.probe(pair[0], "connect", "--peer", pair[1], "--method", "direct", "--timeout", "1.5")
    assert answer["ok"] is False and answer["path"] is None and "no answer" in answer["error"], answer


@pytest.mark.parametrize("pair", ORDERED, ids=pair_id)
def test_holepunch_follows_nat_theory(agents: Agents, pair: tuple[str, str]) -> None:
    answer = agents.probe(pair[0], "connect", "--peer", pair[1], "--method", "holepunch", "--timeout", "3")
    assert answer["method"] == "holepunch"
    if punch_expected(*pair):
        assert (answer["ok"], answer["path"], answer["error"]) == (True, "direct", None), answer
        assert answer["rtt_ms"] > 0
    else:
        assert (answer["ok"], answer["path"]) == (False, None), answer
        # It tried for part of its {timeout} of 3 s, keeping the rest to answer in time.
        assert "hole punch" in answer["error"] and "within 2.4 s" in answer["error"], answer


@pytest.mark.parametrize("pair", ORDERED, ids=pair_id)
def test_relay_works_between_every_pair(agents: Agents, pair: tuple[str, str]) -> None:
    answer = agents.probe(pair[0], "connect", "--peer", pair[1], "--method", "relay", "--timeout", "5")
    assert (answer["ok"], answer["path"]) == (True, "relayed"), answer


def test_theory_table_is_what_the_issue_states() -> None:
    assert (
        not punch_expected("sy1", "sy2")
        and not punch_expected("sy1", "pr")
        and not punch_expected("pr", "sy2")
    )
    assert all(punch_expected("sy1", x) for x in ("fc", "ar", "pub1"))
    assert all(punch_expected(a, b) for a, b in itertools.permutations(["fc", "ar", "pr", "pub1"], 2))


def test_gossip_from_behind_a_symmetric_nat_reaches_everyone(agents: Agents) -> None:
    message_id = agents.probe("sy2", "publish", "--topic", "lab")["message_id"]
    others = [n for n in NODES if n != "sy2"]
    agents.wait_until(
        lambda: all(agents.probe(n, "received", "--id", message_id)["received"] for n in others),
        "gossip delivery to every node",
    )
    duplicates = [agents.probe(n, "received", "--id", message_id)["duplicates"] for n in others]
    assert sum(duplicates) > 0  # flooding over a mesh delivers copies, and they are counted


def test_counter_converges_across_all_nat_types(agents: Agents) -> None:
    start = agents.probe("pub1", "crdt", "--increment", "0")["value"]
    for n, name in enumerate(NODES, start=1):
        agents.probe(name, "crdt", "--increment", str(n))
    total = start + sum(range(1, len(NODES) + 1))

    def converged() -> bool:
        answers = [agents.probe(n, "crdt", "--increment", "0") for n in NODES]
        return len({a["digest"] for a in answers}) == 1 and answers[0]["value"] == total

    agents.wait_until(converged, "counter convergence")


def test_throughput_from_a_nated_node_to_a_public_node(agents: Agents) -> None:
    answer = agents.probe("pr", "throughput", "--peer", "pub1", "--seconds", "1")
    assert answer["ok"] is True and answer["bytes"] > 0 and answer["mbps"] > 1, answer


def test_zipapp_agent_under_the_process_service_manager(agents: Agents, tmp_path: Path) -> None:
    pyz = agent_build.build_zipapp(Path(agent_build.__file__).parent, tmp_path / "agent.pyz")
    inventory = load_inventory(agents.lab.dir / "inventory.yaml")
    node = next(n for n in inventory.nodes if n.name == "bs2")  # public, and no agent of the matrix on it
    # Where deploy would put it: the one plan of a node's paths.
    config = parse_project_config(
        "project: natlab\nmodules: {agent: {binary: agent.pyz}}\n"
        "deploy: {install_path: /opt/vpstest/, start_command: unused}\n"
    )
    plan = plan_node(node, config)
    install, log_dir, binary = plan.install_path, plan.log_dir, plan.binary
    registry = next(s.bind for s in agents.lab.record.services if s.kind == "registry")
    bootstraps = ",".join(sorted(s.bind for s in agents.lab.record.services if s.kind == "bootstrap"))
    command = (
        f"{binary} run --node svc-bs2 --bind {node.p2p_address} --registry http://{registry} "
        f"--bootstrap {bootstraps}"
    )
    with SessionPool(inventory) as pool:
        session = pool.session("bs2")
        session.run(f"mkdir -p {shlex.quote(install)}", check=True)
        session.put(pyz, binary)
        session.run(f"chmod 755 {shlex.quote(binary)}", check=True)
        started = service_manager(session, install_path=install, log_dir=log_dir).start(
            "vpstest-agent", command
        )
        assert started.running, started
    with SessionPool(inventory) as pool:  # a new SSH session: the agent outlived the first one
        session = pool.session("bs2")
        manager = service_manager(session, install_path=install, log_dir=log_dir)
        try:
            assert manager.status("vpstest-agent").running

            def ask(*args: str) -> dict[str, Any]:
                command = shlex.join([binary, "probe", *args, "--json"])
                result = session.run(command, timeout=60, check=True)
                answer = json.loads(result.stdout)
                assert isinstance(answer, dict)
                return answer

            agents.wait_until(
                lambda: ask("status").get("registered") is True, "the service agent registering"
            )
            answer = ask("connect", "--peer", "pub1", "--method", "holepunch", "--timeout", "3")
            assert (answer["ok"], answer["path"]) == (True, "direct"), answer
            assert "registered with" in manager.logs("vpstest-agent")
        finally:
            manager.stop("vpstest-agent")
        assert not manager.status("vpstest-agent").running
        assert ask("status")["error"].startswith("agent not running:")
