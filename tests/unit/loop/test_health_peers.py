"""Peers as observers of node health: a node's status answer may list the peers it heard from and
how long ago (``peers_seen``); the loop's liveness machine then needs SSH, the service and a peer
(3 of 3). A node SSH reaches whose service runs but that no peer hears from any more is Suspect,
then Evicted; software without the list keeps the 2-of-2 quorum; stale sightings do not count;
the choice survives a resumed runner."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_vpstest.config import HealthConfig
from pytest_vpstest.loop import liveness as lv
from pytest_vpstest.loop.health import NodeCheck, NodeHealth, peers_seen_of

CFG = HealthConfig(check_seconds=10, suspect_after_seconds=10, evict_after_seconds=10, respawn_attempts=2,
                   peer_seen_within_seconds=5)
NAMES = ("a", "b", "c")


def check(sees: dict[str, float] | None) -> NodeCheck:
    return NodeCheck(True, True, "", True, sees=sees)


def everyone_sees(except_: str | None = None, age: float = 1.0) -> dict[str, NodeCheck]:
    return {n: check({p: age for p in NAMES if p != n and p != except_}) for n in NAMES}


def states(health: NodeHealth) -> dict[str, str]:
    return {n: type(health.state_of(n)).__name__ for n in NAMES}


@pytest.mark.parametrize(("answer", "expected"), [
    ({"ok": True, "peers_seen": [{"node": "b", "age_seconds": 2}, {"node": "c", "age_seconds": 0.5}]},
     {"b": 2.0, "c": 0.5}),
    ({"ok": True, "peers_seen": []}, {}),
    ({"ok": True, "peers": ["b"]}, None),  # no list: the software does not say
    ({"ok": True, "peers_seen": None}, None),
    ({"ok": True, "peers_seen": [{"node": "b"}, "c", {"node": "d", "age_seconds": -1},
                                 {"node": "e", "age_seconds": True}, {"node": "f", "age_seconds": 3}]},
     {"f": 3.0}),
    (None, None),
])
def test_peers_seen_of(answer: dict[str, Any] | None, expected: dict[str, float] | None) -> None:
    assert peers_seen_of(answer) == expected


def test_a_node_no_peer_hears_from_is_suspect_then_evicted_though_ssh_and_service_are_fine() -> None:
    health = NodeHealth(NAMES, CFG, 0.0)
    health.observe(0.0, everyone_sees())
    assert health.peers_counted
    assert states(health) == dict.fromkeys(NAMES, "Live")
    # c's SSH and service still answer, and c still hears a and b, but neither hears c any more.
    events = health.observe(11.0, everyone_sees(except_="c"))
    assert lv.BecameSuspect("c", 10.0) in events  # last heard at 0 (1 s ago counts as now), plus 10 s
    assert states(health) == {"a": "Live", "b": "Live", "c": "Suspect"}
    assert not health.usable("c") and health.usable("a")
    assert "no peer has heard from it lately" in health.reason("c")
    events = health.observe(21.0, everyone_sees(except_="c"))
    assert lv.NodeEvicted("c", 20.0) in events and lv.Respawn("c", 1) in events


def test_one_peer_hearing_a_node_is_enough() -> None:
    health = NodeHealth(NAMES, CFG, 0.0)
    health.observe(0.0, everyone_sees())
    checks = everyone_sees()
    checks["a"] = check({"b": 1.0})  # a no longer hears c; b still does
    for t in (5.0, 12.0, 19.0, 26.0):
        health.observe(t, checks)
    assert states(health) == dict.fromkeys(NAMES, "Live")


def test_peers_hearing_each_other_slower_than_the_checks_do_not_make_nodes_flap() -> None:
    # Sightings up to 5 s old (the software's own pace) with checks every 1 s and t1 = 2 s.
    cfg = HealthConfig(check_seconds=1, suspect_after_seconds=2, evict_after_seconds=2, respawn_attempts=2,
                       peer_seen_within_seconds=5)
    health = NodeHealth(NAMES, cfg, 0.0)
    for i in range(30):
        health.observe(float(i), everyone_sees(age=float(i % 5)))
    assert states(health) == dict.fromkeys(NAMES, "Live")
    # Beyond the allowance a sighting ages: 5 s + t1 + t2 later the node is evicted.
    events = [e for t in range(30, 40) for e in health.observe(float(t), everyone_sees(except_="c"))]
    assert lv.BecameSuspect("c", 31.0) in events and lv.NodeEvicted("c", 33.0) in events


def test_a_stale_sighting_does_not_count() -> None:
    health = NodeHealth(NAMES, CFG, 0.0)
    health.observe(0.0, everyone_sees())
    # Peers list c, but heard from it 100 s ago (stale after 20 s here): c is not heard lately.
    checks = everyone_sees()
    for n in ("a", "b"):
        checks[n] = check({p: (100.0 if p == "c" else 1.0) for p in NAMES if p != n})
    health.observe(11.0, checks)
    assert states(health)["c"] == "Suspect"


def test_a_node_whose_own_check_is_bad_is_no_observer() -> None:
    health = NodeHealth(NAMES, CFG, 0.0)
    health.observe(0.0, everyone_sees())
    checks = everyone_sees(except_="c")
    checks["a"] = NodeCheck(True, False, "service down", sees={"c": 0.0})  # its word does not count
    health.observe(11.0, checks)
    assert states(health)["c"] == "Suspect"


def test_software_without_the_list_keeps_the_two_observer_quorum() -> None:
    health = NodeHealth(NAMES, CFG, 0.0)
    for t in (0.0, 8.0, 16.0, 24.0):
        health.observe(t, {n: check(None) for n in NAMES})
    assert not health.peers_counted
    assert states(health) == dict.fromkeys(NAMES, "Live")


def test_counting_peers_survives_a_resumed_runner() -> None:
    health = NodeHealth(NAMES, CFG, 0.0)
    health.observe(0.0, everyone_sees())
    health.observe(11.0, everyone_sees(except_="c"))
    nodes = json.loads(json.dumps({n: health.record(n) for n in NAMES}))
    resumed = NodeHealth(NAMES, CFG, 12.0)
    assert resumed.restore(nodes) == []
    assert resumed.peers_counted
    assert states(resumed) == {"a": "Live", "b": "Live", "c": "Suspect"}
    # This round's checks carry no list (an answer failed): the quorum stays 3 of 3, c is not let back.
    resumed.observe(13.0, {n: check(None) for n in NAMES})
    assert states(resumed)["c"] == "Suspect"
