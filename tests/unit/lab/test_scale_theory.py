"""Scale topologies are generated as data (registry, two bootstraps, every NAT type in proportion,
public nodes) and NAT theory gives the expected outcome of every ordered pair and method — the same
expectations the 10-node lab test checks against the real agent."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from pytest_vpstest.errors import ConfigError
from pytest_vpstest.lab.plan import make_plan
from pytest_vpstest.lab.theory import expected_matrix, peer_names
from pytest_vpstest.lab.topology import MAX_NODES, load_topology, scale_topology
from pytest_vpstest.nat_theory import expected_outcome, punch_possible
from tests.lab.test_agent_nat_theory import punch_expected

NATS = ("none", "full-cone", "address-restricted", "port-restricted", "symmetric")


@pytest.mark.parametrize("count", [10, 30, 50, 100, MAX_NODES])
def test_scale_topology_has_every_kind_in_proportion(count: int) -> None:
    topo = load_topology(f"scale:{count}")
    assert len(topo.nodes) == count and topo.name == f"scale-{count}"
    assert [n.role for n in topo.nodes[:3]] == ["registry", "bootstrap", "bootstrap"]
    assert [n.name for n in topo.nodes] == [f"saorsa-{i}" for i in range(1, count + 1)]
    kinds = Counter(n.nat for n in topo.nodes[3:])
    assert set(kinds) == set(NATS)
    # 4 NATed (one per type) to 3 public, within one cycle of rounding.
    natted = sum(v for k, v in kinds.items() if k != "none")
    assert abs(natted * 3 - kinds["none"] * 4) <= 12
    assert max(kinds[k] for k in NATS[1:]) - min(kinds[k] for k in NATS[1:]) <= 1
    assert all((n.role == "nat") == n.natted for n in topo.nodes)


def test_scale_10_has_the_full_topologys_mix() -> None:
    full = Counter((n.role, n.nat) for n in load_topology("full").nodes)
    assert Counter((n.role, n.nat) for n in scale_topology(10).nodes) == full


def test_scale_100_fits_the_addressing_plan() -> None:
    plan = make_plan(scale_topology(100), "v9a", 130)
    data = [n.public_ip for n in plan.nodes]
    mgmt = [n.mgmt_ip for n in plan.nodes]
    assert len(set(data)) == len(set(mgmt)) == 100
    assert all(ip.startswith("198.18.") or ip.startswith("198.19.") for ip in data + mgmt)
    assert plan.harness_ip not in mgmt


@pytest.mark.parametrize("spec", ["scale:9", f"scale:{MAX_NODES + 1}", "scale:", "scale:ten", "scale:-5"])
def test_bad_scale_specs_are_one_line_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology(spec)
    assert "\n" not in str(info.value) and "topology" in str(info.value)


def test_theory_agrees_with_the_ten_node_lab_expectations() -> None:
    names = {"fc": "full-cone", "ar": "address-restricted", "pr": "port-restricted", "sy1": "symmetric"}
    names |= {"sy2": "symmetric", "pub1": "none", "pub2": "none"}
    for a, b in itertools.permutations(names, 2):
        assert punch_possible(names[a], names[b]) == punch_expected(a, b), (a, b)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "src", "dst", "outcome"),
    [
        ("relay", "symmetric", "symmetric", "connects"),
        ("holepunch", "symmetric", "symmetric", "fails"),
        ("holepunch", "port-restricted", "symmetric", "fails"),
        ("holepunch", "symmetric", "address-restricted", "connects"),
        ("holepunch", "port-restricted", "port-restricted", "connects"),
        ("direct", "symmetric", "none", "connects"),
        ("direct", "none", "full-cone", "connects"),
        ("direct", "none", "symmetric", "fails"),
        ("direct", "none", "port-restricted", "depends"),
        ("direct", "full-cone", "address-restricted", "depends"),
    ],
)
def test_expected_outcome(method: str, src: str, dst: str, outcome: str) -> None:
    assert expected_outcome(method, src, dst) == outcome  # type: ignore[arg-type]


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown method 'quic'"):
        expected_outcome("quic", "none", "none")


def test_matrix_covers_every_ordered_peer_pair_and_method() -> None:
    topo = scale_topology(50)
    matrix = expected_matrix(topo)
    peers = peer_names(topo)
    assert "saorsa-1" not in peers and len(peers) == 49
    assert len(matrix) == 49 * 48 * 3
    assert all(src != dst for src, dst, _ in matrix)
    direct = Counter(v for (_, _, m), v in matrix.items() if m == "direct")
    assert set(direct) == {"connects", "fails", "depends"}
    assert all(v == "connects" for (_, _, m), v in matrix.items() if m == "relay")
