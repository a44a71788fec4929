"""nftables rulesets of the lab: NAT routers (RFC 4787 behaviours) and the management firewalls.

Each NAT router namespace has two links, ``wan`` (on the data bridge) and ``lan`` (the NATed node's
private network). The behaviours, in RFC 4787 terms:

==================  ==============================  ==========================================
type                mapping                         filtering
==================  ==============================  ==========================================
full-cone           endpoint-independent (EIM)      endpoint-independent (EIF)
address-restricted  endpoint-independent (EIM)      address-dependent (ADF)
port-restricted     endpoint-independent (EIM)      address-and-port-dependent (APDF)
symmetric           address-and-port-dependent      address-and-port-dependent (APDF)
==================  ==============================  ==========================================

How: conntrack masquerade keeps the source port when it can, which gives EIM, and lets in only
replies from the exact remote address and port, which gives APDF. ``masquerade fully-random`` picks
a new port per conntrack entry, that is per remote address and port: APDM. EIF and ADF are explicit
inbound DNAT rules gated by dynamic sets that outbound packets refresh after translation: the set of
mapped ports (EIF) or of ``remote address . mapped port`` (ADF), each entry living 120 s (RFC 4787
REQ-5 asks for at least two minutes).

Unsolicited packets to the router's own address are dropped in ``input``: a dropped packet's
conntrack entry is never confirmed, so it cannot later clash with (and re-port) the mapping of an
outbound flow to the same remote, which would break hole punching through port-preserving NATs.
"""

from __future__ import annotations

from typing import Literal

from pytest_vpstest.config import NatType

__all__ = [
    "BEHAVIOUR",
    "MAPPING_TIMEOUT_S",
    "NAT_TABLE",
    "Filtering",
    "Mapping",
    "host_guard_ruleset",
    "host_table_name",
    "node_mgmt_ruleset",
    "router_ruleset",
]

NAT_TABLE = "vpslab"
MAPPING_TIMEOUT_S = 120

Mapping = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]
Filtering = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]

BEHAVIOUR: dict[NatType, tuple[Mapping, Filtering]] = {
    "full-cone": ("endpoint-independent", "endpoint-independent"),
    "address-restricted": ("endpoint-independent", "address-dependent"),
    "port-restricted": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
}


def router_ruleset(nat: NatType, lan_subnet: str, inside_ip: str) -> str:
    """The nft ruleset of a NAT router in front of ``inside_ip`` (on ``lan_subnet``)."""
    if nat not in BEHAVIOUR:
        raise ValueError(f"no NAT router for nat type {nat!r}")
    mapping, filtering = BEHAVIOUR[nat]
    sets: list[str] = []
    learn: list[str] = []
    inbound: list[str] = []
    if filtering == "endpoint-independent":
        sets.append(_set("eif", "inet_service"))
        learn.append('oifname "wan" meta l4proto udp update @eif { udp sport }')
        inbound.append(f'iifname "wan" udp dport @eif dnat to {inside_ip}')
    elif filtering == "address-dependent":
        sets.append(_set("adf", "ipv4_addr . inet_service"))
        learn.append('oifname "wan" meta l4proto udp update @adf { ip daddr . udp sport }')
        inbound.append(f'iifname "wan" ip saddr . udp dport @adf dnat to {inside_ip}')
    masquerade = "masquerade fully-random" if mapping == "address-and-port-dependent" else "masquerade"
    lines = [f"table ip {NAT_TABLE} {{", *sets]
    lines += _chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", inbound)
    lines += _chain(
        "postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
        [f'oifname "wan" ip saddr {lan_subnet} {masquerade}'],
    )
    # Priority 300: after srcnat, so the sets hold the translated (mapped) port.
    lines += _chain("learn", "type filter hook postrouting priority 300; policy accept;", learn)
    lines += _chain(
        "forward",
        "type filter hook forward priority filter; policy drop;",
        [
            "ct state established,related accept",
            'iifname "lan" oifname "wan" accept',
            'iifname "wan" oifname "lan" ct status dnat accept',
        ],
    )
    lines += _chain(
        "input",
        "type filter hook input priority filter; policy accept;",
        [
            'iifname "wan" ct state established,related accept',
            'iifname "wan" drop',
        ],
    )
    lines.append("}")
    return "\n".join(lines) + "\n"


def node_mgmt_ruleset(harness_ip: str, ssh_port: int = 22) -> str:
    """A node's firewall: its ``mgmt`` link carries only SSH from the harness, nothing else."""
    lines = [f"table inet {NAT_TABLE} {{"]
    lines += _chain(
        "input",
        "type filter hook input priority filter; policy accept;",
        [
            f'iifname "mgmt" ip saddr {harness_ip} tcp dport {ssh_port} accept',
            'iifname "mgmt" drop',
        ],
    )
    lines += _chain(
        "output",
        "type filter hook output priority filter; policy accept;",
        [
            f'oifname "mgmt" ip daddr {harness_ip} tcp sport {ssh_port} accept',
            'oifname "mgmt" drop',
        ],
    )
    lines.append("}")
    return "\n".join(lines) + "\n"


def host_table_name(prefix: str) -> str:
    return f"{prefix}_lab"


def host_guard_ruleset(prefix: str) -> str:
    """Root namespace: never forward to or from a management link; accept from one only replies."""
    links = f'"{prefix}-m*"'
    lines = [f"table inet {host_table_name(prefix)} {{"]
    lines += _chain(
        "forward",
        "type filter hook forward priority filter - 10; policy accept;",
        [
            f"iifname {links} drop",
            f"oifname {links} drop",
        ],
    )
    lines += _chain(
        "input",
        "type filter hook input priority filter - 10; policy accept;",
        [
            f"iifname {links} ct state established,related accept",
            f"iifname {links} drop",
        ],
    )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _set(name: str, type_: str) -> str:
    return f"  set {name} {{\n    type {type_}; flags dynamic,timeout; timeout {MAPPING_TIMEOUT_S}s;\n  }}"


def _chain(name: str, header: str, rules: list[str]) -> list[str]:
    return [f"  chain {name} {{", f"    {header}", *(f"    {r}" for r in rules), "  }"]
