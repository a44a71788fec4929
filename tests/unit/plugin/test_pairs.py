"""Node pairs: which nodes each suite pairs up, with categories, NAT groups and readable ids."""

from __future__ import annotations

from pytest_vpstest.config import Inventory, Node
from pytest_vpstest.plugin.pairs import (
    connectivity_pairs,
    gossip_publishers,
    group_by_nat,
    nat_group_key,
    nat_traversal_pairs,
    peer_nodes,
    throughput_pairs,
)

TEN_NODES = Inventory(
    nodes=(
        Node("saorsa-1", "h1", role="registry"),
        Node("saorsa-2", "h2", role="bootstrap"),
        Node("saorsa-3", "h3", role="bootstrap"),
        Node("saorsa-4", "h4", role="nat", nat="full-cone"),
        Node("saorsa-5", "h5", role="nat", nat="address-restricted"),
        Node("saorsa-6", "h6", role="nat", nat="port-restricted"),
        Node("saorsa-7", "h7"),
        Node("saorsa-8", "h8"),
        Node("saorsa-9", "h9"),
        Node("saorsa-10", "h10", role="nat", nat="symmetric"),
    )
)


def test_connectivity_covers_every_ordered_pair_of_ten_nodes_three_ways() -> None:
    pairs = connectivity_pairs(TEN_NODES, direct_to_nat=True)
    # 9 peer nodes (registry excluded) → 72 ordered pairs per method.
    assert len(pairs) == 72 * 3
    for category in ("direct", "nat_traversed", "relay"):
        assert sum(p.category == category for p in pairs) == 72
    assert all("saorsa-1" not in (p.src, p.dst) for p in pairs)
    assert len({p.id for p in pairs}) == len(pairs)
    assert "saorsa-4->saorsa-7[holepunch]" in {p.id for p in pairs}


def test_direct_dials_into_a_nat_are_left_out_by_default() -> None:
    pairs = connectivity_pairs(TEN_NODES)
    direct = [p for p in pairs if p.method == "direct"]
    # 5 public peers (saorsa-2, -3, -7, -8, -9), each dialled by the 8 other peers.
    assert len(direct) == 5 * 8
    assert all(p.dst_nat == "none" for p in direct)
    assert "saorsa-7->saorsa-4[direct]" not in {p.id for p in pairs}
    assert "saorsa-4->saorsa-7[direct]" in {p.id for p in pairs}
    assert sum(p.method == "holepunch" for p in pairs) == sum(p.method == "relay" for p in pairs) == 72


def test_nat_pairs_have_a_natted_side_and_skip_bootstraps() -> None:
    pairs = nat_traversal_pairs(TEN_NODES)
    assert all(p.src_nat != "none" or p.dst_nat != "none" for p in pairs)
    assert all(TEN_NODES.node(n).role not in ("bootstrap", "registry") for p in pairs for n in (p.src, p.dst))
    assert all(p.method == "holepunch" and p.category == "nat_traversed" for p in pairs)
    groups = group_by_nat(pairs)
    assert "symmetric~symmetric" not in groups  # only one symmetric node
    assert set(groups["none~symmetric"]) == {
        p
        for p in pairs
        if {p.src, p.dst} & {"saorsa-10"} and {p.src, p.dst} & {"saorsa-7", "saorsa-8", "saorsa-9"}
    }
    assert list(groups) == sorted(groups)


def test_nat_group_key_is_unordered_easiest_first() -> None:
    assert (
        nat_group_key("symmetric", "full-cone")
        == nat_group_key("full-cone", "symmetric")
        == "full-cone~symmetric"
    )
    assert nat_group_key("port-restricted", "none") == "none~port-restricted"


def test_throughput_ring_sends_and_receives_once_per_node() -> None:
    pairs = throughput_pairs(TEN_NODES)
    names = [n.name for n in peer_nodes(TEN_NODES)]
    assert len(pairs) == len(names)
    assert sorted(p.src for p in pairs) == sorted(names) == sorted(p.dst for p in pairs)
    assert len(throughput_pairs(TEN_NODES, "all")) == 72


def test_small_fleets() -> None:
    two = Inventory(nodes=(Node("a", "1"), Node("b", "2")))
    assert [p.id for p in throughput_pairs(two)] == ["a->b[direct]"]
    assert throughput_pairs(Inventory(nodes=(Node("a", "1"),))) == []
    assert connectivity_pairs(Inventory(nodes=())) == []


def test_gossip_publishers_are_spread_and_bounded() -> None:
    assert [n.name for n in gossip_publishers(TEN_NODES, 3)] == ["saorsa-2", "saorsa-5", "saorsa-8"]
    assert len(gossip_publishers(TEN_NODES, 50)) == 9
    assert gossip_publishers(Inventory(nodes=()), 2) == ()
