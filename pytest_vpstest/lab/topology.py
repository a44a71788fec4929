"""The lab topology as data: which nodes exist, their role, NAT type and link shaping.

A topology is a YAML file (``topologies/full.yaml``, ``topologies/small.yaml`` or a user's file)::

    schema_version: 1
    name: full
    nodes:
      - {name: saorsa-1, role: registry, nat: none}
      - {name: saorsa-8, role: test, nat: none, shaping: {rate_mbit: 50, burst_kbit: 512}}

A node's position in the list (1-based) is its number in the addressing plan. Loading validates
everything once and reports the first problem as a one-line :class:`ConfigError` naming the file,
line and key.

``scale:N`` (10 <= N <= ``MAX_NODES``) is generated instead of read: :func:`scale_topology`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml

from pytest_vpstest.config import NAT_TYPES, ROLES, NatType, Role
from pytest_vpstest.errors import ConfigError

__all__ = [
    "BUILTIN_TOPOLOGIES",
    "MAX_MAPPING_TIMEOUT_S",
    "MAX_NODES",
    "MIN_SCALE_NODES",
    "SCALE_CYCLE",
    "SCALE_PREFIX",
    "LabNode",
    "MappingTimeout",
    "Shaping",
    "Topology",
    "load_topology",
    "parse_scale_spec",
    "parse_topology",
    "scale_topology",
    "topology_source",
]

BUILTIN_TOPOLOGIES: tuple[str, ...] = ("full", "small")
SCALE_PREFIX = "scale:"
MIN_SCALE_NODES = 10
# After the registry and two bootstraps, node kinds repeat in this cycle: the full topology's mix of
# four NATed nodes (one per type) to three public test nodes.
SCALE_CYCLE: tuple[NatType, ...] = (
    "full-cone",
    "none",
    "address-restricted",
    "none",
    "port-restricted",
    "none",
    "symmetric",
)
# NAT LANs are 198.19.N.0/24 and management subnets live at 198.19.128.0 and above.
MAX_NODES = 120

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_TOP_KEYS = ("schema_version", "name", "nodes")
_NODE_KEYS = ("name", "role", "nat", "shaping", "notes")
_SHAPING_KEYS = ("rate_mbit", "burst_kbit")
# Field conditions (docs/lab.md): loss on any node's data link; the rest shape a NATed node's routers.
_CONDITION_KEYS = ("loss_percent", "mapping_timeout", "hairpin", "carrier_nat")
_NAT_ONLY_KEYS = ("mapping_timeout", "hairpin", "carrier_nat")
_TIMEOUT_KEYS = ("udp_s", "tcp_s")
MAX_MAPPING_TIMEOUT_S = 86_400


@dataclass(frozen=True)
class Shaping:
    """Token-bucket shaping of a node's data link, both directions."""

    rate_mbit: float
    burst_kbit: float = 512.0


@dataclass(frozen=True)
class MappingTimeout:
    """How long an idle NAT mapping lives, per protocol (``None``: the lab's default)."""

    udp_s: int | None = None
    tcp_s: int | None = None


@dataclass(frozen=True)
class LabNode:
    name: str
    role: Role = "test"
    nat: NatType = "none"
    shaping: Shaping | None = None
    notes: str | None = None
    # Field conditions: random loss (% per direction) on the data link, and for a NATed node its
    # routers' mapping timeouts, hairpinning and a carrier-grade NAT in front of its own router.
    loss_percent: float = 0.0
    mapping_timeout: MappingTimeout | None = None
    hairpin: bool = False
    carrier_nat: NatType | None = None

    @property
    def natted(self) -> bool:
        return self.nat != "none"


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[LabNode, ...]
    path: Path | None = None

    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def number(self, name: str) -> int:
        """The node's 1-based position, its number in the addressing plan."""
        for i, n in enumerate(self.nodes, start=1):
            if n.name == name:
                return i
        raise KeyError(name)


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping (as key ``__line__``)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def scale_topology(count: int) -> Topology:
    """A generated ``count``-node topology: ``saorsa-1`` registry, ``saorsa-2``/``-3`` bootstraps, then
    :data:`SCALE_CYCLE` repeated (NATed nodes of every type and public test nodes, 4 : 3)."""
    if not MIN_SCALE_NODES <= count <= MAX_NODES:
        raise ConfigError(
            f"a scale topology has {MIN_SCALE_NODES} to {MAX_NODES} nodes, got {count}", key="topology"
        )
    nodes = [
        LabNode(name="saorsa-1", role="registry"),
        LabNode(name="saorsa-2", role="bootstrap"),
        LabNode(name="saorsa-3", role="bootstrap"),
    ]
    for number in range(4, count + 1):
        nat = SCALE_CYCLE[(number - 4) % len(SCALE_CYCLE)]
        nodes.append(LabNode(name=f"saorsa-{number}", role="nat" if nat != "none" else "test", nat=nat))
    return Topology(name=f"scale-{count}", nodes=tuple(nodes))


def parse_scale_spec(spec: str) -> int | None:
    """N for ``scale:N``; None for any other spec; ConfigError for a malformed ``scale:``."""
    if not spec.startswith(SCALE_PREFIX):
        return None
    text = spec[len(SCALE_PREFIX) :]
    if not text.isdigit():
        raise ConfigError(
            f"'{spec}' is not scale:N with a node count N", key="topology", allowed=("scale:50",)
        )
    return int(text)


def topology_source(spec: str) -> Path:
    """Where the topology named by ``spec`` (``full``, ``small`` or a file path) is read from."""
    if spec in BUILTIN_TOPOLOGIES:
        ref = resources.files("pytest_vpstest.lab") / "topologies" / f"{spec}.yaml"
        return Path(str(ref))
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"no topology file '{spec}'", key="topology", allowed=(*BUILTIN_TOPOLOGIES, "scale:N", "PATH")
        )
    return path


def load_topology(spec: str) -> Topology:
    """Load and validate a builtin topology (``full``/``small``), ``scale:N`` or a topology file."""
    count = parse_scale_spec(spec)
    if count is not None:
        return scale_topology(count)
    path = topology_source(spec)
    return parse_topology(path.read_text(encoding="utf-8"), path=path)


def parse_topology(text: str, *, path: Path | None = None) -> Topology:
    """Validate topology YAML ``text``; the first problem raises a one-line ConfigError."""
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(str(problem), path=path, line=line) from None
    if not isinstance(data, dict):
        raise ConfigError("a topology is a mapping with a 'nodes' list", path=path, line=1)
    line = cast(int, data.pop("__line__", 1))
    _reject_unknown(data, _TOP_KEYS, path, line)
    version = data.get("schema_version", 1)
    if version != 1:
        raise ConfigError(
            f"unsupported schema_version {version!r}",
            path=path,
            line=line,
            key="schema_version",
            allowed=("1",),
        )
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError("'nodes' must be a non-empty list", path=path, line=line, key="nodes")
    if len(raw_nodes) > MAX_NODES:
        raise ConfigError(
            f"at most {MAX_NODES} nodes, got {len(raw_nodes)}", path=path, line=line, key="nodes"
        )
    nodes = tuple(_parse_node(raw, path, line) for raw in raw_nodes)
    _check_fleet(nodes, path, line)
    name = data.get("name") or (path.stem if path is not None else "custom")
    return Topology(name=str(name), nodes=nodes, path=path)


def _reject_unknown(data: dict[Any, Any], allowed: tuple[str, ...], path: Path | None, line: int) -> None:
    for key in data:
        if key != "__line__" and key not in allowed:
            raise ConfigError("unknown key", path=path, line=line, key=str(key), allowed=allowed)


def _parse_node(raw: object, path: Path | None, parent_line: int) -> LabNode:
    if not isinstance(raw, dict):
        raise ConfigError(
            "each node is a mapping with at least 'name'", path=path, line=parent_line, key="nodes"
        )
    line = cast(int, raw.pop("__line__", parent_line))
    _reject_unknown(raw, (*_NODE_KEYS, *_CONDITION_KEYS), path, line)
    name = raw.get("name")
    if not isinstance(name, str) or not _NODE_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"node name {name!r} is not a safe identifier ([A-Za-z0-9][A-Za-z0-9._-]*)",
            path=path,
            line=line,
            key="name",
        )
    role = raw.get("role", "test")
    if role not in ROLES:
        raise ConfigError(
            f"node {name}: unknown role {role!r}", path=path, line=line, key="role", allowed=ROLES
        )
    nat = raw.get("nat", "none")
    if nat not in NAT_TYPES:
        raise ConfigError(
            f"node {name}: unknown NAT type {nat!r}", path=path, line=line, key="nat", allowed=NAT_TYPES
        )
    if (role == "nat") != (nat != "none"):
        raise ConfigError(
            f"node {name}: role 'nat' and a NAT type other than 'none' go together",
            path=path,
            line=line,
            key="nat",
        )
    notes = raw.get("notes")
    if notes is not None and not isinstance(notes, str):
        raise ConfigError(f"node {name}: notes must be text", path=path, line=line, key="notes")
    shaping = _parse_shaping(raw.get("shaping"), name, path, line)
    conditions = _parse_conditions(raw, name, nat != "none", path, line)
    return LabNode(
        name=name, role=cast(Role, role), nat=cast(NatType, nat), shaping=shaping, notes=notes, **conditions
    )


def _parse_conditions(
    raw: dict[Any, Any], name: str, natted: bool, path: Path | None, line: int
) -> dict[str, Any]:
    """The node's field conditions (loss, mapping timeouts, hairpinning, carrier-grade NAT)."""
    out: dict[str, Any] = {}
    for key in _NAT_ONLY_KEYS:
        if key in raw and not natted:
            raise ConfigError(
                f"node {name}: {key} applies only to a NATed node", path=path, line=line, key=key
            )
    if "loss_percent" in raw:
        loss = raw["loss_percent"]
        if isinstance(loss, bool) or not isinstance(loss, int | float) or not 0 <= loss < 100:
            raise ConfigError(
                f"node {name}: loss_percent must be a number from 0 to below 100, got {loss!r}",
                path=path,
                line=line,
                key="loss_percent",
            )
        out["loss_percent"] = float(loss)
    if "hairpin" in raw:
        if not isinstance(raw["hairpin"], bool):
            raise ConfigError(
                f"node {name}: hairpin must be true or false", path=path, line=line, key="hairpin"
            )
        out["hairpin"] = raw["hairpin"]
    if "carrier_nat" in raw:
        carrier = raw["carrier_nat"]
        allowed = tuple(t for t in NAT_TYPES if t != "none")
        if carrier not in allowed:
            raise ConfigError(
                f"node {name}: unknown carrier NAT type {carrier!r}",
                path=path,
                line=line,
                key="carrier_nat",
                allowed=allowed,
            )
        out["carrier_nat"] = carrier
    if "mapping_timeout" in raw:
        out["mapping_timeout"] = _parse_mapping_timeout(raw["mapping_timeout"], name, path, line)
    return out


def _parse_mapping_timeout(raw: object, name: str, path: Path | None, line: int) -> MappingTimeout:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"node {name}: mapping_timeout is a mapping like {{udp_s: 30, tcp_s: 600}}",
            path=path,
            line=line,
            key="mapping_timeout",
        )
    line = cast(int, raw.pop("__line__", line))
    _reject_unknown(raw, _TIMEOUT_KEYS, path, line)
    values: dict[str, int] = {}
    for key in _TIMEOUT_KEYS:
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAPPING_TIMEOUT_S:
            raise ConfigError(
                f"node {name}: mapping_timeout.{key} must be whole seconds from 1 to {MAX_MAPPING_TIMEOUT_S}",
                path=path,
                line=line,
                key=key,
            )
        values[key] = value
    if not values:
        raise ConfigError(
            f"node {name}: mapping_timeout needs udp_s or tcp_s", path=path, line=line, key="mapping_timeout"
        )
    return MappingTimeout(**values)


def _parse_shaping(raw: object, name: str, path: Path | None, line: int) -> Shaping | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"node {name}: shaping is a mapping like {{rate_mbit: 50}}", path=path, line=line, key="shaping"
        )
    line = cast(int, raw.pop("__line__", line))
    _reject_unknown(raw, _SHAPING_KEYS, path, line)
    values: dict[str, float] = {}
    for key in _SHAPING_KEYS:
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"node {name}: {key} must be a positive number", path=path, line=line, key=key)
        values[key] = float(value)
    if "rate_mbit" not in values:
        raise ConfigError(f"node {name}: shaping needs rate_mbit", path=path, line=line, key="rate_mbit")
    return Shaping(**values)


def _check_fleet(nodes: tuple[LabNode, ...], path: Path | None, line: int) -> None:
    seen: set[str] = set()
    for n in nodes:
        if n.name in seen:
            raise ConfigError(f"duplicate node name '{n.name}'", path=path, line=line, key="name")
        seen.add(n.name)
    if sum(1 for n in nodes if n.role == "registry") != 1:
        raise ConfigError("exactly one node must have role 'registry'", path=path, line=line, key="role")
    for n in nodes:
        if n.role in ("registry", "bootstrap") and n.natted:
            raise ConfigError(
                f"node {n.name}: a {n.role} node must be public (nat: none)", path=path, line=line, key="nat"
            )
