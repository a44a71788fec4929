"""What NAT theory (RFC 4787, no port prediction) expects of a connection between two NAT types,
and the rates a fleet should reach: the one place these rules live.

Pure data and functions, used by the suites (expected failures), the criteria (default
nat-traversal thresholds per NAT pairing), the proof (the NAT table), the lab (a scale lab's
expected matrix, ``lab/theory.py``) and the dashboard (matrix cells that differ from theory).

Each ordered pair and method has one of three outcomes (:func:`expected_outcome`):

* ``connects`` — must connect every time;
* ``fails`` — must never connect;
* ``depends`` — decided by what crossed the destination's NAT earlier, not by the software.

The rules:

* ``relay`` through a bootstrap always connects.
* ``direct`` dials the destination's advertised address: a public or full-cone destination always
  answers (full cone admits anyone to a mapped port); a symmetric one never does (its advertised
  mapping belongs to another flow, and its filter admits only that flow); an address- or
  port-restricted one answers only while it recently sent to the dialler (``depends``).
* ``holepunch`` needs each side to reach the mapping the other side's NAT made towards it. A
  symmetric NAT makes a new mapping (a new public port) for every destination, so the peer cannot
  know the port to aim at; when the peer's own NAT only lets in packets from the exact address and
  port it sent to (port-restricted or symmetric filtering), no packet ever gets through. Every other
  pairing can be punched.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

from pytest_vpstest.nat_types import NAT_TYPES, nat_info

__all__ = [
    "EXPECTED_RATES",
    "METHODS",
    "Outcome",
    "expected_failure",
    "expected_outcome",
    "group_target",
    "groups",
    "may_fail",
    "punch_possible",
    "split_group",
]

Outcome = Literal["connects", "fails", "depends"]
METHODS: tuple[str, ...] = ("direct", "holepunch", "relay")

# Success rates a healthy implementation reaches through each NAT type (percent; nat_types is the
# source). A pairing is held to the harder of its two sides; a public node ("none") adds no difficulty.
EXPECTED_RATES: Mapping[str, float] = MappingProxyType(
    {n: nat_info(n).expected_punch_rate or 100.0 for n in NAT_TYPES}
)

# Filters that let in a packet from any port of an address the node has sent to (or from anyone).
_PORT_BLIND = frozenset({"none", "full-cone", "address-restricted"})


def split_group(group: str) -> tuple[str, str]:
    """``"full-cone~symmetric"`` → ``("full-cone", "symmetric")``: two NAT types joined by ``~``."""
    a, sep, b = group.partition("~")
    if not sep or not a or not b:
        raise ValueError(f"NAT group {group!r} is not two NAT types joined by '~'")
    return a, b


def punch_possible(a: str, b: str) -> bool:
    """Whether simultaneous-open hole punching between NAT types ``a`` and ``b`` can succeed."""
    if a != "symmetric" and b != "symmetric":
        return True
    other = b if a == "symmetric" else a
    return other in _PORT_BLIND


def expected_outcome(method: str, src_nat: str, dst_nat: str) -> Outcome:
    """The outcome NAT theory expects when a node behind ``src_nat`` connects to one behind
    ``dst_nat`` by ``method``; ValueError for a method or NAT type it does not know."""
    for nat in (src_nat, dst_nat):
        if nat not in NAT_TYPES:
            raise ValueError(f"unknown NAT type {nat!r} (allowed: {', '.join(NAT_TYPES)})")
    if method == "relay":
        return "connects"
    if method == "holepunch":
        return "connects" if punch_possible(src_nat, dst_nat) else "fails"
    if method == "direct":
        if dst_nat in ("none", "full-cone"):
            return "connects"
        return "fails" if dst_nat == "symmetric" else "depends"
    raise ValueError(f"unknown method {method!r} (allowed: {', '.join(METHODS)})")


def expected_failure(src_nat: str, dst_nat: str, method: str = "holepunch") -> str | None:
    """Why NAT theory expects this connection to fail, or None when it should succeed or cannot
    tell (:func:`may_fail`) — also for a method or NAT type it does not know."""
    if _outcome(method, src_nat, dst_nat) != "fails":
        return None
    if method == "direct":
        return "a symmetric NAT admits a direct dial only on a flow the destination opened to the dialler"
    other = dst_nat if src_nat == "symmetric" else src_nat
    return (
        f"a symmetric NAT picks a new port per destination and the {other} side only admits "
        "the exact address and port it sent to"
    )


def may_fail(src_nat: str, dst_nat: str, method: str) -> str | None:
    """Why NAT theory cannot say whether this connection works (None when it can): a direct dial
    into an address- or port-restricted NAT passes only while the destination recently sent to the
    dialler, so its outcome depends on what crossed that NAT before, not on the software."""
    if _outcome(method, src_nat, dst_nat) != "depends":
        return None
    return f"a {dst_nat} NAT admits a direct dial only after the destination sent to the dialler"


def _outcome(method: str, src_nat: str, dst_nat: str) -> Outcome | None:
    try:
        return expected_outcome(method, src_nat, dst_nat)
    except ValueError:
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
