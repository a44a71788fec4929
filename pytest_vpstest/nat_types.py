"""What the harness knows about a NAT type: its name, its rank, its labels, its expected punch rate.

The one place to name a NAT type. The inventory and the lab topologies accept the names in
``NAT_TYPES``; the suites group NAT pairs easiest type first (the tuple's order); the CLI and the
interview show the labels. The lab's routers (``lab/nat.py``) implement the behaviour each name
promises. The reference agent ships to nodes without the harness and keeps its own list of the names
it may report (``lab/agent/registry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["NAT_TYPES", "NatInfo", "NatType", "nat_info", "nat_rank"]

NatType = Literal["none", "full-cone", "address-restricted", "port-restricted", "symmetric"]


@dataclass(frozen=True)
class NatInfo:
    """How a NAT type is shown, and the hole-punching success rate expected through it."""

    label: str  # "Full Cone"
    short: str  # "Full Cone" (tables)
    difficulty: str  # "Easy", "Medium", "Hard"
    expected_punch_rate: float | None  # percent; None: nothing to punch through


_INFO: dict[NatType, NatInfo] = {
    "none": NatInfo("No NAT", "Public", "None", None),
    "full-cone": NatInfo("Full Cone", "Full Cone", "Easy", 95.0),
    "address-restricted": NatInfo("Address Restricted", "Addr Restr", "Medium", 85.0),
    "port-restricted": NatInfo("Port Restricted", "Port Restr", "Medium", 85.0),
    "symmetric": NatInfo("Symmetric", "Symmetric", "Hard", 70.0),
}

# Easiest to traverse first: NAT-pair names put the easier type first ("none~symmetric").
NAT_TYPES: tuple[NatType, ...] = tuple(_INFO)


def nat_info(nat: NatType) -> NatInfo:
    return _INFO[nat]


def nat_rank(nat: str) -> int:
    """Position in ``NAT_TYPES`` (easiest first); unknown names sort last."""
    return NAT_TYPES.index(nat) if nat in NAT_TYPES else len(NAT_TYPES)
