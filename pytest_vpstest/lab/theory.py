"""The outcome NAT theory expects of every ordered pair of a lab topology's peer nodes and every
method, so a lab's measured connectivity matrix can be checked cell by cell.

The rules themselves (RFC 4787, no port prediction; ``connects`` / ``fails`` / ``depends``) are
``pytest_vpstest.nat_theory``; this module applies them to a topology. They hold for a reference
agent that keeps its mappings open by talking to the bootstraps.
"""

from __future__ import annotations

from collections.abc import Iterator

from pytest_vpstest.lab.topology import Topology
from pytest_vpstest.nat_theory import METHODS, Outcome, expected_outcome

__all__ = ["expected_matrix", "peer_names"]


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
