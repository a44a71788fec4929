"""The node inventory: which machines make up the fleet and how the harness reaches them.

``load_inventory`` reads and validates an inventory file (docs/internals.md "Inventory file");
every problem is a one-line ConfigError naming file, line and key. Everything downstream trusts
the frozen ``Inventory`` and ``Node`` objects it returns.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import yaml

from pytest_vpstest._yaml_reader import STR, Reader, read_text
from pytest_vpstest.nat_types import NAT_TYPES, NatType

__all__ = [
    "INVENTORY_KEYS",
    "NAT_TYPES",
    "NODE_KEYS",
    "ROLES",
    "SERVICE_MANAGERS",
    "Inventory",
    "NatType",
    "Node",
    "RegistryAccess",
    "Role",
    "ServiceManagerKind",
    "load_inventory",
    "parse_inventory",
]

Role = Literal["registry", "bootstrap", "nat", "test"]
ROLES: tuple[Role, ...] = ("registry", "bootstrap", "nat", "test")
ServiceManagerKind = Literal["systemd", "process"]
SERVICE_MANAGERS: tuple[ServiceManagerKind, ...] = ("systemd", "process")


@dataclass(frozen=True)
class Node:
    """One machine of the fleet, as the harness reaches it over SSH."""

    name: str
    host: str
    user: str = "root"
    port: int = 22
    fallback_ip: str | None = None
    role: Role = "test"
    nat: NatType = "none"
    tags: tuple[str, ...] = ()
    provider: str | None = None
    region: str | None = None
    notes: str | None = None
    service_manager: ServiceManagerKind = "systemd"
    # Per-node overrides of the project's deploy settings.
    install_path: str | None = None
    log_dir: str | None = None
    # The address the software under test binds to / is reached at on the data network.
    p2p_address: str | None = None
    # The address other nodes reach it at from outside its NAT (the NAT's WAN address); a public
    # node's is its p2p_address. The {peer_public_address} of probe templates.
    public_address: str | None = None
    identity_file: str | None = None

    @property
    def reachable_address(self) -> str:
        """``public_address``, else (a public node) ``p2p_address``, else ''."""
        if self.public_address:
            return self.public_address
        return (self.p2p_address or "") if self.nat == "none" else ""


@dataclass(frozen=True)
class RegistryAccess:
    """Where the peer registry is and how the harness reaches it.

    ``via_node`` set means the harness cannot reach ``url`` directly (the lab's data network)
    and queries it by running a request on that node over SSH.
    """

    url: str
    via_node: str | None = None


@dataclass(frozen=True)
class Inventory:
    """The fleet: validated nodes plus how to reach them."""

    nodes: tuple[Node, ...]
    path: Path | None = None
    known_hosts: Path | None = None
    identity_file: Path | None = None
    connect_timeout: float = 10.0
    registry: RegistryAccess | None = None
    bootstrap: tuple[str, ...] = ()
    # "netns" | "loopback" for lab inventories, None for a real fleet.
    lab: str | None = None

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)


_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
_LAB_FLAVOURS = ("netns", "loopback")
INVENTORY_KEYS = (
    "schema_version",
    "known_hosts",
    "identity_file",
    "connect_timeout",
    "lab",
    "registry",
    "bootstrap",
    "nodes",
)
NODE_KEYS = (
    "name",
    "host",
    "fallback_ip",
    "user",
    "port",
    "role",
    "nat",
    "tags",
    "provider",
    "region",
    "notes",
    "service_manager",
    "install_path",
    "log_dir",
    "p2p_address",
    "public_address",
    "identity_file",
)


def load_inventory(path: Path | str) -> Inventory:
    """Read and validate a node inventory file (docs/internals.md "Inventory file")."""
    path = Path(path)
    return parse_inventory(read_text(path), path)


def parse_inventory(text: str, path: Path | str | None = None) -> Inventory:
    """Validate inventory ``text`` as if read from ``path`` (the base of relative paths)."""
    file = Path(path) if path is not None else None
    r = Reader(str(file) if file is not None else "<inventory>")
    root = r.document(text, "inventory")
    base = file.absolute().parent if file is not None else Path.cwd()
    m = r.mapping(root, "", INVENTORY_KEYS, required=("nodes",))
    r.schema_version(m)

    nodes: list[Node] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(r.sequence(m["nodes"], "nodes")):
        node = _node(r, item, f"nodes[{i}]")
        if node.name in seen:
            raise r.fail(
                r.mapping(item, f"nodes[{i}]", NODE_KEYS)["name"],
                f"nodes[{i}].name",
                f"duplicate node name {node.name!r} (first defined at line {seen[node.name]})",
            )
        seen[node.name] = item.start_mark.line + 1
        nodes.append(node)
    if not nodes:
        raise r.fail(m["nodes"], "nodes", "the inventory lists no nodes")

    registry = None
    if "registry" in m:
        registry = _registry(r, m["registry"])
        if registry.via_node is not None and registry.via_node not in seen:
            via = r.mapping(m["registry"], "registry", ("url", "via_node"))["via_node"]
            raise r.fail(via, "registry.via_node", f"no node named {registry.via_node!r} in this inventory")
    lab = r.opt(m, "lab", lambda n: r.choice(n, "lab", _LAB_FLAVOURS))
    return Inventory(
        nodes=tuple(nodes),
        path=file,
        known_hosts=r.path(m["known_hosts"], "known_hosts", base) if "known_hosts" in m else None,
        identity_file=r.opt_path(m["identity_file"], "identity_file", base) if "identity_file" in m else None,
        connect_timeout=r.number(m["connect_timeout"], "connect_timeout", positive=True)
        if "connect_timeout" in m
        else 10.0,
        registry=registry,
        bootstrap=r.string_list(m["bootstrap"], "bootstrap") if "bootstrap" in m else (),
        lab=lab,
    )


def _node(r: Reader, item: yaml.Node, key: str) -> Node:
    m = r.mapping(item, key, NODE_KEYS, required=("name", "host"))
    d = Node(name="", host="")

    def opt(name: str) -> str | None:
        return r.opt_string(m[name], f"{key}.{name}") if name in m else None

    fallback = None
    if "fallback_ip" in m:
        fallback = r.opt_string(m["fallback_ip"], f"{key}.fallback_ip")
        if fallback is not None:
            try:
                ipaddress.ip_address(fallback)
            except ValueError:
                raise r.fail(
                    m["fallback_ip"], f"{key}.fallback_ip", f"not an IP address: {fallback!r}"
                ) from None
    return Node(
        name=r.safe_name(m["name"], f"{key}.name"),
        host=r.matching(m["host"], f"{key}.host", _HOST, "a host name or IP address"),
        user=r.matching(m["user"], f"{key}.user", _USER, "a user name") if "user" in m else d.user,
        port=r.integer(m["port"], f"{key}.port", 1, 65535) if "port" in m else d.port,
        fallback_ip=fallback,
        role=cast(Role, r.choice(m["role"], f"{key}.role", ROLES)) if "role" in m else d.role,
        nat=cast(NatType, r.choice(m["nat"], f"{key}.nat", NAT_TYPES)) if "nat" in m else d.nat,
        tags=tuple(
            r.safe_name(t, f"{key}.tags[{i}]") for i, t in enumerate(r.sequence(m["tags"], f"{key}.tags"))
        )
        if "tags" in m
        else (),
        provider=opt("provider"),
        region=opt("region"),
        notes=opt("notes"),
        service_manager=cast(
            ServiceManagerKind, r.choice(m["service_manager"], f"{key}.service_manager", SERVICE_MANAGERS)
        )
        if "service_manager" in m
        else d.service_manager,
        install_path=r.opt(m, "install_path", lambda n: r.abs_path_text(n, f"{key}.install_path")),
        log_dir=r.opt(m, "log_dir", lambda n: r.abs_path_text(n, f"{key}.log_dir")),
        p2p_address=opt("p2p_address"),
        public_address=opt("public_address"),
        identity_file=opt("identity_file"),
    )


def _registry(r: Reader, node: yaml.Node) -> RegistryAccess:
    if isinstance(node, yaml.ScalarNode) and node.tag == STR:
        return RegistryAccess(url=r.url(node, "registry"))
    m = r.mapping(node, "registry", ("url", "via_node"), required=("url",))
    via = r.opt_string(m["via_node"], "registry.via_node") if "via_node" in m else None
    if via is not None:
        via = r.safe_name(m["via_node"], "registry.via_node")
    return RegistryAccess(url=r.url(m["url"], "registry.url"), via_node=via)
