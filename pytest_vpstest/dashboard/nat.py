"""What NAT theory expects of a connection attempt, to mark matrix cells that differ from it.

Pure. ``None`` means theory makes no prediction (an unknown method or NAT type).

- direct: reaches public and full-cone listeners (a NAT that forwards any sender), nothing else;
- hole punching: works unless one side is symmetric and the other symmetric or port-restricted
  (no port prediction);
- relay: always works.
"""

from __future__ import annotations

__all__ = ["expected"]

_KNOWN = {"none", "full-cone", "address-restricted", "port-restricted", "symmetric"}


def expected(method: str, dialer_nat: str, listener_nat: str) -> bool | None:
    """Whether ``method`` from a node behind ``dialer_nat`` to one behind ``listener_nat`` should connect."""
    if dialer_nat not in _KNOWN or listener_nat not in _KNOWN:
        return None
    if method == "relay":
        return True
    if method == "direct":
        return listener_nat in ("none", "full-cone")
    if method in ("hole_punch", "hole-punch", "holepunch", "punch"):
        pair = {dialer_nat, listener_nat}
        return not ("symmetric" in pair and pair <= {"symmetric", "port-restricted"})
    return None
