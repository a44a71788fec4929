"""Node pairs for the suites: which nodes talk to which, by what method, under which category.

Pure functions of the inventory. Ids are readable and stable (``saorsa-4->saorsa-7[holepunch]``)
so a failing pair can be rerun with ``-k`` or by node id.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_vpstest.config import Inventory, NatType, Node
from pytest_vpstest.nat_types import nat_rank
from pytest_vpstest.suite import CATEGORY_OF, METHODS, Category, Method

__all__ = [
    "Pair",
    "connectivity_pairs",
    "gossip_publishers",
    "group_by_nat",
    "nat_group_key",
    "nat_traversal_pairs",
    "peer_nodes",
    "throughput_pairs",
]



@dataclass(frozen=True)
class Pair:
    """An ordered pair: ``src`` opens a connection (or a stream) to ``dst`` using ``method``."""

    src: str
    dst: str
    method: Method = "direct"
    src_nat: NatType = "none"
    dst_nat: NatType = "none"

    @property
    def category(self) -> Category:
        return CATEGORY_OF[self.method]

    @property
    def nat_group(self) -> str:
        """The unordered NAT-type pair, e.g. ``full-cone~symmetric``."""
        return nat_group_key(self.src_nat, self.dst_nat)

    @property
    def id(self) -> str:
        return f"{self.src}->{self.dst}[{self.method}]"


def nat_group_key(a: str, b: str) -> str:
    first, second = sorted((a, b), key=lambda n: (nat_rank(n), n))
    return f"{first}~{second}"


def peer_nodes(inventory: Inventory, *, include_bootstraps: bool = True) -> tuple[Node, ...]:
    """Nodes that take part in P2P tests: everything but the registry (monitoring only)."""
    return tuple(
        n for n in inventory.nodes if n.role != "registry" and (include_bootstraps or n.role != "bootstrap")
    )


def _ordered(nodes: tuple[Node, ...]) -> list[tuple[Node, Node]]:
    return [(a, b) for a in nodes for b in nodes if a.name != b.name]


def connectivity_pairs(
    inventory: Inventory, methods: tuple[Method, ...] = METHODS, *, direct_to_nat: bool = False
) -> list[Pair]:
    """Every ordered pair of peer nodes (bootstraps included) × every method.

    A direct dial into a NATed node is left out unless ``direct_to_nat``: whether it connects
    depends only on what crossed that NAT earlier (a mapping and its filter state), so its rate
    would measure the order the tests ran in, not the software. Hole punching covers those pairs.
    """
    return [
        Pair(a.name, b.name, m, a.nat, b.nat)
        for a, b in _ordered(peer_nodes(inventory))
        for m in methods
        if direct_to_nat or m != "direct" or b.nat == "none"
    ]


def nat_traversal_pairs(inventory: Inventory) -> list[Pair]:
    """Ordered hole-punch pairs where at least one side is behind a NAT.

    Bootstraps are the rendezvous of a punch, so they are not punched to themselves.
    """
    nodes = peer_nodes(inventory, include_bootstraps=False)
    return [
        Pair(a.name, b.name, "holepunch", a.nat, b.nat)
        for a, b in _ordered(nodes)
        if a.nat != "none" or b.nat != "none"
    ]


def group_by_nat(pairs: list[Pair]) -> dict[str, list[Pair]]:
    """Pairs keyed by their NAT-type pair, keys in a stable order."""
    groups: dict[str, list[Pair]] = {}
    for p in pairs:
        groups.setdefault(p.nat_group, []).append(p)
    return dict(sorted(groups.items()))


def throughput_pairs(inventory: Inventory, mode: str = "ring") -> list[Pair]:
    """Pairs measured for throughput.

    ``ring``: each peer node streams to the next one (n pairs, every node sends and receives once);
    ``all``: every ordered pair (n·(n−1) pairs, slow on a big fleet).
    """
    nodes = peer_nodes(inventory)
    if mode == "all":
        return [Pair(a.name, b.name, "direct", a.nat, b.nat) for a, b in _ordered(nodes)]
    if len(nodes) < 2:
        return []
    if len(nodes) == 2:
        a, b = nodes
        return [Pair(a.name, b.name, "direct", a.nat, b.nat)]
    return [
        Pair(a.name, b.name, "direct", a.nat, b.nat)
        for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True)
    ]


def gossip_publishers(inventory: Inventory, count: int = 2) -> tuple[Node, ...]:
    """The nodes that publish in the gossip suite: spread over the peer list, NATed ones included."""
    nodes = peer_nodes(inventory)
    if not nodes:
        return ()
    count = max(1, min(count, len(nodes)))
    step = len(nodes) / count
    return tuple(nodes[int(i * step)] for i in range(count))
