"""The reference agent's real answers — successes and failures, every action — conform to the
contract's JSON Schemas (real agents, registry and bootstrap as processes on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_vpstest.fleet.contract import validate
from tests.unit.lab.test_agent_nodes import AGENT, Cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(AGENT, base=73)
    try:
        for name in ("s1", "s2"):
            c.start_node(name)
        c.wait_mesh()
        yield c
    finally:
        c.close()


def _conforms(action: str, answer: dict[str, object]) -> None:
    assert validate(action, answer) == [], f"{action}: {answer}"


def test_status_conforms(cluster: Cluster) -> None:
    answer = cluster.probe("s1", "status")
    assert answer["ok"] is True
    _conforms("status", answer)
    # The peers it heard from, by name and age: the meshed peer is there, recently.
    seen = {p["node"]: p["age_seconds"] for p in answer["peers_seen"]}
    assert "s2" in seen and 0 <= seen["s2"] < 60 and "s1" not in seen


@pytest.mark.parametrize("method", ["direct", "holepunch", "relay"])
def test_connect_conforms(cluster: Cluster, method: str) -> None:
    answer = cluster.probe("s1", "connect", "--peer", "s2", "--method", method, "--timeout", "5")
    assert answer["ok"] is True, answer
    _conforms("connect", answer)
    failed = cluster.probe("s1", "connect", "--peer", "ghost", "--method", method, "--timeout", "1")
    assert failed["ok"] is False
    _conforms("connect", failed)


def test_gossip_and_counter_conform(cluster: Cluster) -> None:
    published = cluster.probe("s1", "publish", "--topic", "t")
    assert published["ok"] is True
    _conforms("gossip_publish", published)
    message_id = str(published["message_id"])
    cluster.wait_until(
        lambda: bool(cluster.ask("s2", action="received", id=message_id)["received"]), "gossip delivery"
    )
    _conforms("gossip_received", cluster.probe("s2", "received", "--id", message_id))
    _conforms("gossip_received", cluster.probe("s2", "received", "--id", "s9-unknown"))
    _conforms("crdt", cluster.probe("s1", "crdt", "--increment", "2"))


def test_throughput_conforms(cluster: Cluster) -> None:
    answer = cluster.probe("s2", "throughput", "--peer", "s1", "--seconds", "0.3")
    assert answer["ok"] is True, answer
    _conforms("throughput", answer)
