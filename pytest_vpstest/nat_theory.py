"""What NAT theory expects of a hole punch between two NAT types, and the rates a fleet should reach.

Pure data and functions, shared by the suites (expected failures), the criteria (default
nat-traversal thresholds per NAT pairing) and the proof (the NAT table).

A hole punch needs each side to reach the mapping the other side's NAT made towards it. A
symmetric NAT makes a new mapping (a new public port) for every destination, so the peer cannot
know the port to aim at; when the peer's own NAT only lets in packets from the exact address and
port it sent to (port-restricted or symmetric filtering), no packet ever gets through. Every other
pairing can be punched.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pytest_vpstest.nat_types import NAT_TYPES, nat_info

__all__ = [
    "EXPECTED_RATES",
    "expected_failure",
    "group_target",
    "groups",
    "may_fail",
    "split_group",
]

# Success rates a healthy implementation reaches through each NAT type (percent; nat_types is the
# source). A pairing is held to the harder of its two sides; a public node ("none") adds no difficulty.
EXPECTED_RATES: Mapping[str, float] = MappingProxyType(
    {n: nat_info(n).expected_punch_rate or 100.0 for n in NAT_TYPES}
)

_PORT_FILTERING = frozenset({"port-restricted", "symmetric"})
_FILTERING = frozenset({"address-restricted", "port-restricted", "symmetric"})


def split_group(group: str) -> tuple[str, str]:
    """``"full-cone~symmetric"`` → ``("full-cone", "symmetric")``: two NAT types joined by ``~``."""
    a, sep, b = group.partition("~")
    if not sep or not a or not b:
        raise ValueError(f"NAT group {group!r} is not two NAT types joined by '~'")
    return a, b


def expected_failure(src_nat: str, dst_nat: str, method: str = "holepunch") -> str | None:
    """Why NAT theory expects this connection to fail, or None when it should succeed.

    A relay never depends on the NATs. A direct dial into a symmetric NAT never reaches the node (its
    mappings belong to other flows); into an address- or port-restricted NAT it depends on earlier
    traffic (:func:`may_fail`); a full-cone NAT admits anyone to a mapped port.
    """
    if method == "direct":
        if dst_nat == "symmetric":
            return "a symmetric NAT admits a direct dial only on a flow the destination opened to the dialler"
        return None
    if method != "holepunch":
        return None
    pair = {src_nat, dst_nat}
    if "symmetric" in pair and pair <= _PORT_FILTERING:
        other = dst_nat if src_nat == "symmetric" else src_nat
        return (
            f"a symmetric NAT picks a new port per destination and the {other} side only admits "
            "the exact address and port it sent to"
        )
    return None


def may_fail(src_nat: str, dst_nat: str, method: str) -> str | None:
    """Why NAT theory cannot say whether this connection works (None when it can): a direct dial
    into an address- or port-restricted NAT passes only while the destination recently sent to the
    dialler, so its outcome depends on what crossed that NAT before, not on the software."""
    if method == "direct" and dst_nat in _FILTERING and dst_nat != "symmetric":
        return f"a {dst_nat} NAT admits a direct dial only after the destination sent to the dialler"
    return None


def group_target(group: str) -> float | None:
    """The default success-rate target of a NAT pairing; None when theory expects it to fail or
    a side is not a known NAT type."""
    a, b = split_group(group)
    if a not in EXPECTED_RATES or b not in EXPECTED_RATES:
        return None
    if expected_failure(a, b) is not None:
        return None
    return min(EXPECTED_RATES[a], EXPECTED_RATES[b])


def groups() -> tuple[str, ...]:
    """Every NAT pairing a fleet can have, easiest side first (as ``plugin.pairs.nat_group_key``)."""
    order = tuple(EXPECTED_RATES)
    return tuple(f"{a}~{b}" for i, a in enumerate(order) for b in order[i:] if (a, b) != ("none", "none"))
