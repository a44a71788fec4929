"""nftables rulesets of the lab: NAT routers (RFC 4787 / RFC 5382 behaviours), link loss and the
management firewalls.

Each NAT router namespace has two links, ``wan`` (towards the data bridge, or towards a carrier-grade
NAT) and ``lan`` (the NATed node's private network). The behaviours, for UDP and TCP alike:

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
inbound DNAT rules gated by dynamic sets, one per protocol, that outbound packets refresh after
translation: the set of mapped ports (EIF) or of ``remote address . mapped port`` (ADF). An entry
lives ``udp_s`` (default 120 s, RFC 4787 REQ-5) or ``tcp_s`` (default 7440 s, RFC 5382 REQ-5) after
the last outbound packet. An inbound TCP SYN let through is delivered to the node's mapped port: it
connects when the node listens there (``SO_REUSEPORT``, as TCP hole punchers do) and is answered
with a reset otherwise, as behind a real NAT.

Unsolicited packets to the router's own address are dropped in ``input``: a dropped packet's
conntrack entry is never confirmed, so it cannot later clash with (and re-port) the mapping of an
outbound flow to the same remote, which would break hole punching through port-preserving NATs.

Field conditions (:class:`RouterOptions`): shorter mapping timeouts (set timeouts plus nft ``ct
timeout`` objects for the conntrack entries), hairpinning, and random loss on a node's data link
(:func:`link_loss_ruleset`). A double NAT is two routers in a row; :func:`combined_nat` says what
the pair looks like from outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pytest_vpstest.config import NatType

__all__ = [
    "BEHAVIOUR",
    "LOSS_TABLE",
    "MAPPING_TIMEOUT_S",
    "NAT_TABLE",
    "PROTOCOLS",
    "ROUTER_SYSCTLS",
    "TCP_MAPPING_TIMEOUT_S",
    "Filtering",
    "Mapping",
    "RouterOptions",
    "combined_nat",
    "host_guard_ruleset",
    "host_table_name",
    "link_loss_ruleset",
    "node_mgmt_ruleset",
    "router_ruleset",
]

NAT_TABLE = "vpslab"
LOSS_TABLE = "vpsloss"
MAPPING_TIMEOUT_S = 120
# RFC 5382 REQ-5: an established TCP connection's mapping idles at least 2 h 4 min.
TCP_MAPPING_TIMEOUT_S = 7440
# Every NAT router: forwarding on, no IPv6, no ICMP redirects (a hairpinned packet leaves by the link
# it came in on), and conntrack does not adopt mid-stream TCP, so an expired mapping stays expired.
ROUTER_SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.lan.send_redirects": "0",
    "net.netfilter.nf_conntrack_tcp_loose": "0",
}
# The protocols whose mapping and filtering follow the NAT type (others: outbound and replies only).
PROTOCOLS: tuple[str, ...] = ("udp", "tcp")

Mapping = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]
Filtering = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]

BEHAVIOUR: dict[NatType, tuple[Mapping, Filtering]] = {
    "full-cone": ("endpoint-independent", "endpoint-independent"),
    "address-restricted": ("endpoint-independent", "address-dependent"),
    "port-restricted": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
}
_STRICTNESS: tuple[Filtering, ...] = (
    "endpoint-independent",
    "address-dependent",
    "address-and-port-dependent",
)


@dataclass(frozen=True)
class RouterOptions:
    """Field conditions of one NAT router. ``None`` timeouts keep the defaults (module docstring)."""

    udp_timeout_s: int | None = None
    tcp_timeout_s: int | None = None
    # Hairpinning: the node reaches its own mapped endpoints through the router's WAN address.
    hairpin: bool = False
    wan_ip: str | None = None

    def __post_init__(self) -> None:
        if self.hairpin and not self.wan_ip:
            raise ValueError("hairpinning needs the router's WAN address")
        for t in (self.udp_timeout_s, self.tcp_timeout_s):
            if t is not None and t < 1:
                raise ValueError(f"mapping timeout must be at least 1 s, got {t}")


def combined_nat(home: NatType, carrier: NatType) -> NatType:
    """The type a node behind ``home`` behind ``carrier`` shows outside: a mapping is
    endpoint-independent only if both are, and an inbound packet must pass both filters."""
    if home == "none":
        return carrier
    if carrier == "none":
        return home
    (m1, f1), (m2, f2) = BEHAVIOUR[home], BEHAVIOUR[carrier]
    if "address-and-port-dependent" in (m1, m2):
        return "symmetric"
    strictest = max(f1, f2, key=_STRICTNESS.index)
    return next(t for t, b in BEHAVIOUR.items() if b == ("endpoint-independent", strictest))


def router_ruleset(
    nat: NatType, lan_subnet: str, inside_ip: str, options: RouterOptions | None = None
) -> str:
    """The nft ruleset of a NAT router in front of ``inside_ip`` (on ``lan_subnet``)."""
    if nat not in BEHAVIOUR:
        raise ValueError(f"no NAT router for nat type {nat!r}")
    opts = options or RouterOptions()
    mapping, filtering = BEHAVIOUR[nat]
    timeouts = {
        "udp": opts.udp_timeout_s or MAPPING_TIMEOUT_S,
        "tcp": opts.tcp_timeout_s or TCP_MAPPING_TIMEOUT_S,
    }
    objects: list[str] = _ct_timeouts(opts)
    learn: list[str] = []
    inbound: list[str] = []
    for proto in PROTOCOLS:
        if filtering == "endpoint-independent":
            objects.append(_set(f"eif_{proto}", "inet_service", timeouts[proto]))
            learn.append(f'oifname "wan" meta l4proto {proto} update @eif_{proto} {{ {proto} sport }}')
            inbound.append(f'iifname "wan" {proto} dport @eif_{proto} dnat to {inside_ip}')
        elif filtering == "address-dependent":
            objects.append(_set(f"adf_{proto}", "ipv4_addr . inet_service", timeouts[proto]))
            learn.append(
                f'oifname "wan" meta l4proto {proto} update @adf_{proto} {{ ip daddr . {proto} sport }}'
            )
            inbound.append(f'iifname "wan" ip saddr . {proto} dport @adf_{proto} dnat to {inside_ip}')
    masquerade = "masquerade fully-random" if mapping == "address-and-port-dependent" else "masquerade"
    postrouting = [f'oifname "wan" ip saddr {lan_subnet} {masquerade}']
    forward = [
        # Mid-stream TCP without a mapping (expired) is invalid here (tcp_loose off), as in RFC 5382.
        "ct state invalid drop",
        "ct state established,related accept",
        'iifname "lan" oifname "wan" accept',
        'iifname "wan" oifname "lan" ct status dnat accept',
    ]
    if opts.hairpin:
        # Any live mapping is reachable from inside, from the sender's own mapping (RFC 4787 REQ-9).
        for proto in PROTOCOLS:
            objects.append(_set(f"hairpin_{proto}", "inet_service", timeouts[proto]))
            learn.append(f'oifname "wan" meta l4proto {proto} update @hairpin_{proto} {{ {proto} sport }}')
            inbound.append(
                f'iifname "lan" ip daddr {opts.wan_ip} {proto} dport @hairpin_{proto} dnat to {inside_ip}'
            )
        random = " fully-random" if mapping == "address-and-port-dependent" else ""
        postrouting.append(
            f'oifname "lan" ip saddr {lan_subnet} ct status dnat snat to {opts.wan_ip}{random}'
        )
        forward.append('iifname "lan" oifname "lan" ct status dnat accept')
    lines = [f"table ip {NAT_TABLE} {{", *objects]
    if opts.udp_timeout_s is not None or opts.tcp_timeout_s is not None:
        # After conntrack (-200) made the entry, before it is confirmed: the entry gets the timeouts.
        lines += _chain(
            "timeouts",
            "type filter hook prerouting priority filter; policy accept;",
            [
                f'meta l4proto {p} ct timeout set "{p}_mapping"'
                for p, t in (("udp", opts.udp_timeout_s), ("tcp", opts.tcp_timeout_s))
                if t is not None
            ],
        )
    lines += _chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", inbound)
    lines += _chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;", postrouting)
    # Priority 300: after srcnat, so the sets hold the translated (mapped) port.
    lines += _chain("learn", "type filter hook postrouting priority 300; policy accept;", learn)
    lines += _chain("forward", "type filter hook forward priority filter; policy drop;", forward)
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


def _ct_timeouts(opts: RouterOptions) -> list[str]:
    """nft ``ct timeout`` objects: how long an idle conntrack entry (the mapping itself) lives."""
    out = []
    if opts.udp_timeout_s is not None:
        t = opts.udp_timeout_s
        out.append(_ct_timeout("udp_mapping", "udp", f"unreplied : {t}, replied : {t}"))
    if opts.tcp_timeout_s is not None:
        out.append(_ct_timeout("tcp_mapping", "tcp", f"established : {opts.tcp_timeout_s}"))
    return out


def _ct_timeout(name: str, proto: str, policy: str) -> str:
    return f"  ct timeout {name} {{\n    protocol {proto}; l3proto ip;\n    policy = {{ {policy} }};\n  }}"


def link_loss_ruleset(dev: str, percent: float, table: str = LOSS_TABLE) -> str:
    """Drop ``percent`` % of the IPv4 packets arriving on ``dev``, at random.

    A netdev ingress hook: the packet is gone before routing and conntrack see it, and no sender
    gets an error (a drop in ``output`` would make ``sendto`` fail with EPERM, which a lossy wire
    never does). Loss on both directions of a link is this ruleset at both of its ends.
    """
    if not 0 < percent < 100:
        raise ValueError(f"loss must be between 0 and 100 %, got {percent}")
    # numgen gives 0..9999; drop below percent * 100 (a hundredth of a percent resolution).
    rule = f"meta protocol ip numgen random mod 10000 < {round(percent * 100)} drop"
    lines = [f"table netdev {table} {{"]
    lines += _chain(
        "ingress", f'type filter hook ingress device "{dev}" priority filter; policy accept;', [rule]
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


def _set(name: str, type_: str, timeout_s: int) -> str:
    return f"  set {name} {{\n    type {type_}; flags dynamic,timeout; timeout {timeout_s}s;\n  }}"


def _chain(name: str, header: str, rules: list[str]) -> list[str]:
    return [f"  chain {name} {{", f"    {header}", *(f"    {r}" for r in rules), "  }"]
