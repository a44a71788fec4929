"""What NAT theory (RFC 4787, no port prediction) expects of every ordered pair and method.

A pure function of the two nodes' NAT types, so a lab's measured connectivity matrix can be checked
cell by cell. Outcomes:

* ``connects`` — must connect every time;
* ``fails`` — must never connect;
* ``depends`` — decided by what crossed the destination's NAT earlier, not by the software: a direct
  dial into an address- or port-restricted NAT passes only while the destination recently sent to
  the dialling node (its filter then holds an entry for it).

The rules, for a reference agent that keeps its mappings open by talking to the bootstraps:

* ``direct`` dials the destination's registered addresses: a public or full-cone destination always
  answers (full cone admits anyone to a mapped port); a symmetric one never does (its registered
  mapping belongs to the bootstrap's flow, and its filter admits only that flow).
* ``holepunch`` succeeds unless a symmetric NAT (a fresh port per destination) meets a peer whose
  filter checks the remote port (port-restricted or symmetric).
* ``relay`` through a bootstrap always connects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pytest_vpstest.config import NatType
from pytest_vpstest.lab.topology import Topology

__all__ = ["METHODS", "Outcome", "expected_matrix", "expected_outcome", "peer_names", "punch_possible"]

Outcome = Literal["connects", "fails", "depends"]
Method = Literal["direct", "holepunch", "relay"]
METHODS: tuple[Method, ...] = ("direct", "holepunch", "relay")

# Filters that let in a packet from any port of an address the node has sent to (or from anyone).
_PORT_BLIND: frozenset[NatType] = frozenset({"none", "full-cone", "address-restricted"})


def punch_possible(a: NatType, b: NatType) -> bool:
    """Whether simultaneous-open hole punching between NAT types ``a`` and ``b`` can succeed."""
    if a != "symmetric" and b != "symmetric":
        return True
    other = b if a == "symmetric" else a
    return other in _PORT_BLIND


def expected_outcome(method: str, src: NatType, dst: NatType) -> Outcome:
    """The outcome NAT theory expects when a node behind ``src`` connects to one behind ``dst``."""
    if method == "relay":
        return "connects"
    if method == "holepunch":
        return "connects" if punch_possible(src, dst) else "fails"
    if method == "direct":
        if dst in ("none", "full-cone"):
            return "connects"
        return "fails" if dst == "symmetric" else "depends"
    raise ValueError(f"unknown method {method!r} (allowed: {', '.join(METHODS)})")


def peer_names(topology: Topology) -> tuple[str, ...]:
    """The nodes that run the software under test: every node but the registry."""
    return tuple(n.name for n in topology.nodes if n.role != "registry")


def _ordered(topology: Topology) -> Iterator[tuple[str, str]]:
    names = peer_names(topology)
    return ((a, b) for a in names for b in names if a != b)


def expected_matrix(
    topology: Topology, methods: tuple[str, ...] = METHODS
) -> dict[tuple[str, str, str], Outcome]:
    """``(src, dst, method) -> outcome`` for every ordered pair of peer nodes and every method."""
    nat = {n.name: n.nat for n in topology.nodes}
    return {
        (a, b, m): expected_outcome(m, nat[a], nat[b]) for a, b in _ordered(topology) for m in methods
    }
