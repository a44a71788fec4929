"""The addressing and naming plan of a netns lab: a pure function of topology, prefix and subnet.

Names (everything carries the prefix, so ``lab down`` can find it after a crash)::

    <prefix>-inet          namespace of the data network ("the internet"), bridge ``br0`` inside
    <prefix>-mgmt          management router: link ``harness`` to the root namespace, ``n<N>`` to node N
    <prefix>-<node>        a node's namespace
    <prefix>-r-<node>      the NAT router in front of a NATed node
    <prefix>-c-<node>      the carrier-grade NAT router in front of that router (double NAT only)
    <prefix>-m0            the root namespace's one link into the lab (to ``harness`` in ``<prefix>-mgmt``)

Addresses (node N is the node's 1-based position in the topology)::

    198.18.0.N/24          data address of public node N, or WAN address of node N's outermost router
    198.19.N.1/24          router N's LAN side; 198.19.N.2 is the NATed node's data address
    198.19.M.N/32          node N's management address (point-to-point to 198.19.M.253)
    198.19.M.253           the management router, on ``harness`` and on every ``n<N>``
    198.19.M.254           the harness (root namespace, ``<prefix>-m0``); 198.19.M.0/24 routes via .253

Every link has a fixed MAC address (:func:`mac`) and every neighbour entry is static, so the lab adds
no entry to the kernel's neighbour (ARP) table, which all namespaces share and whose garbage-collection
limit (``gc_thresh3``, 1024 by default) a 50-node lab of learnt entries would overflow.

A NATed node with a carrier-grade NAT (``carrier_nat``) has a second router, ``<prefix>-c-<node>``,
between its own router and the data bridge: the carrier's WAN is ``198.18.0.N`` (the node's public
address), the segment between the two routers is ``198.18.N.0/24`` (carrier ``.1``, node's router ``.2``).
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass

from pytest_vpstest.errors import ConfigError
from pytest_vpstest.lab.topology import LabNode, Topology

__all__ = [
    "AGENT_PORT",
    "BOOTSTRAP_PORT",
    "DATA_PREFIXLEN",
    "DATA_SUBNET",
    "DEFAULT_PREFIX",
    "HARNESS_HOST",
    "MAC_KINDS",
    "MGMT_OCTETS",
    "MGMT_ROUTER_HOST",
    "PREFIX_RE",
    "REGISTRY_PORT",
    "RESERVED_NODE_NAMES",
    "SSH_PORT",
    "LabPlan",
    "NodePlan",
    "check_prefix",
    "choose_mgmt_octet",
    "mac",
    "make_plan",
    "preferred_mgmt_octet",
]

DATA_SUBNET = "198.18.0.0/24"
DATA_PREFIXLEN = 24
HARNESS_HOST = 254
MGMT_ROUTER_HOST = 253
# Namespace names a node may not take: the lab's own namespaces are <prefix>-inet and <prefix>-mgmt.
RESERVED_NODE_NAMES = ("inet", "mgmt")
# Management /24s are 198.19.M.0 with M in this range (NAT LANs use 198.19.1-120.0).
MGMT_OCTETS = range(128, 254)
DEFAULT_PREFIX = "vps"
PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,4}\Z")

# Ports of the lab's infrastructure services.
REGISTRY_PORT = 8080
BOOTSTRAP_PORT = 3478
AGENT_PORT = 9000
SSH_PORT = 22


def check_prefix(prefix: str) -> str:
    """A prefix is 1-5 lowercase letters/digits, starting with a letter (IFNAMSIZ leaves 15)."""
    if not PREFIX_RE.match(prefix):
        raise ConfigError(
            f"lab prefix {prefix!r} must be 1-5 lowercase letters or digits starting with a letter",
            key="prefix",
        )
    return prefix


def preferred_mgmt_octet(prefix: str) -> int:
    """The first management /24 tried for ``prefix`` (200 for the default, spread for others)."""
    if prefix == DEFAULT_PREFIX:
        return 200
    return MGMT_OCTETS.start + zlib.crc32(prefix.encode()) % len(MGMT_OCTETS)


def choose_mgmt_octet(prefix: str, taken: list[ipaddress.IPv4Network]) -> int:
    """The first management /24 (from the prefix's preferred one, wrapping) overlapping no route in
    ``taken``."""
    start = preferred_mgmt_octet(prefix)
    span = len(MGMT_OCTETS)
    for i in range(span):
        octet = MGMT_OCTETS.start + (start - MGMT_OCTETS.start + i) % span
        net = ipaddress.IPv4Network(f"198.19.{octet}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return octet
    raise ConfigError("no free management subnet in 198.19.128.0/17", key="prefix")


# The second octet of every lab MAC address says which end of which link it is (first octet 02:
# locally administered, unicast); the last two octets are the node number.
MAC_KINDS = {
    "data": 1,  # public node's eth0, router's wan or carrier's wan: the station on the data bridge
    "lan-router": 2,
    "lan-node": 3,
    "mgmt-node": 4,  # node side of the management link
    "mgmt-port": 5,  # the management router's n<N>
    "mgmt-up": 6,  # the management router's link to the root namespace
    "mgmt-root": 7,  # the root namespace's <prefix>-m0
    "carrier-lan": 8,  # double NAT: the carrier router's lan
    "router-wan": 9,  # double NAT: the node's router's wan (on the carrier's segment)
}


def mac(kind: str, number: int = 0) -> str:
    """The fixed MAC address of one end of a lab link (``kind`` from :data:`MAC_KINDS`)."""
    return f"02:76:{MAC_KINDS[kind]:02x}:00:{number >> 8:02x}:{number & 0xFF:02x}"


@dataclass(frozen=True)
class NodePlan:
    node: LabNode
    number: int
    ns: str
    data_ip: str
    mgmt_ip: str
    mgmt_port: str
    router_ns: str | None = None
    wan_ip: str | None = None
    lan_router_ip: str | None = None
    # Double NAT only: the carrier router's namespace and LAN address, and the node's router's WAN.
    carrier_ns: str | None = None
    carrier_lan_ip: str | None = None
    router_wan_ip: str | None = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def public_ip(self) -> str:
        """The address other nodes see: the router's WAN address for a NATed node."""
        return self.wan_ip or self.data_ip


@dataclass(frozen=True)
class LabPlan:
    prefix: str
    topology: Topology
    mgmt_octet: int
    nodes: tuple[NodePlan, ...]

    @property
    def inet_ns(self) -> str:
        return f"{self.prefix}-inet"

    @property
    def harness_ip(self) -> str:
        return f"198.19.{self.mgmt_octet}.{HARNESS_HOST}"

    @property
    def mgmt_router_ip(self) -> str:
        return f"198.19.{self.mgmt_octet}.{MGMT_ROUTER_HOST}"

    @property
    def mgmt_ns(self) -> str:
        return f"{self.prefix}-mgmt"

    @property
    def mgmt_root_if(self) -> str:
        """The root namespace's only link into the lab."""
        return f"{self.prefix}-m0"

    @property
    def mgmt_subnet(self) -> str:
        return f"198.19.{self.mgmt_octet}.0/24"

    @property
    def namespaces(self) -> tuple[str, ...]:
        names = [self.inet_ns, self.mgmt_ns]
        for n in self.nodes:
            if n.carrier_ns:
                names.append(n.carrier_ns)
            if n.router_ns:
                names.append(n.router_ns)
            names.append(n.ns)
        return tuple(names)

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def registry(self) -> NodePlan:
        return next(n for n in self.nodes if n.node.role == "registry")

    @property
    def bootstraps(self) -> tuple[NodePlan, ...]:
        return tuple(n for n in self.nodes if n.node.role == "bootstrap")


def make_plan(topology: Topology, prefix: str, mgmt_octet: int) -> LabPlan:
    """Name and address every part of the lab (see the module docstring)."""
    check_prefix(prefix)
    nodes = []
    for number, node in enumerate(topology.nodes, start=1):
        if node.name in RESERVED_NODE_NAMES:
            raise ConfigError(
                f"node name '{node.name}' is reserved for the lab's own namespace <prefix>-{node.name}",
                key="name",
            )
        mgmt = dict(mgmt_ip=f"198.19.{mgmt_octet}.{number}", mgmt_port=f"n{number}")
        if node.natted:
            nodes.append(
                NodePlan(
                    node=node,
                    number=number,
                    ns=f"{prefix}-{node.name}",
                    data_ip=f"198.19.{number}.2",
                    router_ns=f"{prefix}-r-{node.name}",
                    wan_ip=f"198.18.0.{number}",
                    lan_router_ip=f"198.19.{number}.1",
                    **mgmt,
                    **_carrier(prefix, node, number),
                )
            )
        else:
            nodes.append(
                NodePlan(
                    node=node,
                    number=number,
                    ns=f"{prefix}-{node.name}",
                    data_ip=f"198.18.0.{number}",
                    **mgmt,
                )
            )
    plan = LabPlan(prefix=prefix, topology=topology, mgmt_octet=mgmt_octet, nodes=tuple(nodes))
    _check_namespaces(plan)
    return plan


def _check_namespaces(plan: LabPlan) -> None:
    """A node named like another node's router (``r-x``) or carrier (``c-x``) would share its namespace."""
    seen: set[str] = set()
    for ns in plan.namespaces:
        if ns in seen:
            raise ConfigError(
                f"namespace {ns} would be both a node's and a router's: rename the node", key="name"
            )
        seen.add(ns)


def _carrier(prefix: str, node: LabNode, number: int) -> dict[str, str]:
    """Names and addresses of a double NAT's carrier router (none without ``carrier_nat``)."""
    if node.carrier_nat is None:
        return {}
    return {
        "carrier_ns": f"{prefix}-c-{node.name}",
        "carrier_lan_ip": f"198.18.{number}.1",
        "router_wan_ip": f"198.18.{number}.2",
    }
