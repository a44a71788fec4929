"""Project config and node inventory: loaded once, validated, frozen.

The project config follows the schema of the seed's ``config.yaml`` (workspace, modules,
build, deploy, bootstrap, tests, soak) so an existing file loads unchanged; the keys this
project adds (project, inventory, state_dir, focus, criteria, criteria_expr, proof, probes, fix,
notify, and the wait lengths under soak) are all optional. The inventory lists the nodes.
Everything downstream trusts these objects; ``load_project_config`` and ``load_inventory`` build
them, and every problem is a one-line ConfigError naming file, line and key.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Literal, TypeVar, cast

import yaml

from pytest_vpstest.errors import ConfigError

NatType = Literal["none", "full-cone", "address-restricted", "port-restricted", "symmetric"]
NAT_TYPES: tuple[NatType, ...] = (
    "none",
    "full-cone",
    "address-restricted",
    "port-restricted",
    "symmetric",
)
Role = Literal["registry", "bootstrap", "nat", "test"]
ROLES: tuple[Role, ...] = ("registry", "bootstrap", "nat", "test")
ServiceManagerKind = Literal["systemd", "process"]
SERVICE_MANAGERS: tuple[ServiceManagerKind, ...] = ("systemd", "process")
Focus = Literal["connectivity", "nat-traversal", "gossip", "throughput", "full-suite"]
FOCUSES: tuple[Focus, ...] = ("connectivity", "nat-traversal", "gossip", "throughput", "full-suite")
Criteria = Literal["all-pass", "threshold", "improvement", "custom"]
CRITERIA: tuple[Criteria, ...] = ("all-pass", "threshold", "improvement", "custom")
Proof = Literal["logs", "metrics", "manual-verify", "all-evidence"]
PROOFS: tuple[Proof, ...] = ("logs", "metrics", "manual-verify", "all-evidence")


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
    identity_file: str | None = None


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


@dataclass(frozen=True)
class ModuleConfig:
    binary: str
    crate: str | None = None
    tests: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildConfig:
    command: str
    target_dir: str | None = None
    # Path of the built artifact, relative to the workspace (default: target_dir/binary).
    artifact: str | None = None
    timeout_seconds: float = 1800.0
    max_consecutive_failures: int = 3


@dataclass(frozen=True)
class DeployConfig:
    install_path: str = "/opt/vpstest/"
    service_prefix: str = "vpstest"
    nodes: tuple[str, ...] | Literal["all"] = "all"
    # Command the service manager runs on the node; placeholders as in ProbeTemplates.
    start_command: str = "{bin} run --node {node}"
    registration_timeout_seconds: float = 30.0
    parallelism: int = 8


@dataclass(frozen=True)
class BootstrapConfig:
    registry: str | None = None
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuiteConfig:
    """Settings of one suite (the seed's ``tests.<suite>`` block)."""

    success_criteria: tuple[tuple[str, float], ...] = ()
    nat_cooloff_seconds: float = 30.0
    timeout_seconds: float = 10.0
    attempts: int = 3
    extra: tuple[tuple[str, object], ...] = ()

    def target(self, category: str) -> float | None:
        for k, v in self.success_criteria:
            if k == category:
                return v
        return None


@dataclass(frozen=True)
class SoakConfig:
    wait_1hr: bool = True
    wait_6hr: bool = True
    regression_tolerance: float = 0.0
    wait_1hr_seconds: float = 3600.0
    wait_6hr_seconds: float = 21600.0


@dataclass(frozen=True)
class ProbeTemplates:
    """Command templates of the probe contract (docs/contract.md). Values are shell-quoted when filled.

    Placeholders: {bin} {node} {peer} {peer_address} {method} {timeout} {topic}
    {message_id} {seconds} {amount} {install_path}.
    """

    status: str = "{bin} probe status --json"
    connect: str = "{bin} probe connect --peer {peer} --method {method} --timeout {timeout} --json"
    gossip_publish: str = "{bin} probe publish --topic {topic} --json"
    gossip_received: str = "{bin} probe received --id {message_id} --json"
    throughput: str = "{bin} probe throughput --peer {peer} --seconds {seconds} --json"
    # Grow-only counter CRDT: add {amount} (0 reads) and return {"ok", "value", "digest"}.
    crdt: str = "{bin} probe crdt --increment {amount} --json"


@dataclass(frozen=True)
class FixConfig:
    # Program run with the failure brief's path appended; None: wait for a new commit.
    command: str | None = None
    verify_command: str | None = None
    commit_wait_seconds: float = 3600.0


ChannelKind = Literal["log", "webhook", "command", "voice"]


@dataclass(frozen=True)
class ChannelConfig:
    kind: ChannelKind
    url: str | None = None
    command: str | None = None
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class NotifyConfig:
    channels: tuple[ChannelConfig, ...] = ()
    dashboard_url: str | None = None


@dataclass(frozen=True)
class ProjectConfig:
    """The project config (seed ``config.yaml`` schema plus optional extensions)."""

    path: Path | None
    project: str
    workspace: Path
    modules: tuple[tuple[str, ModuleConfig], ...] = ()
    build: BuildConfig | None = None
    deploy: DeployConfig = field(default_factory=DeployConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    tests: tuple[tuple[str, SuiteConfig], ...] = ()
    soak: SoakConfig = field(default_factory=SoakConfig)
    probes: ProbeTemplates = field(default_factory=ProbeTemplates)
    fix: FixConfig = field(default_factory=FixConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    # Inventory file (relative to the config file) or "lab".
    inventory: str | None = None
    state_dir: Path | None = None
    focus: Focus | None = None
    criteria: Criteria | None = None
    criteria_expr: str | None = None
    proof: Proof | None = None

    def suite(self, name: str) -> SuiteConfig:
        for k, v in self.tests:
            if k == name:
                return v
        return SuiteConfig()


# =========================================================================== loading
#
# Both files are read with ``yaml.compose`` (SafeLoader) so that every value keeps its line;
# each schema is a small function that walks the node tree, checks keys, types and ranges and
# builds the frozen objects above. Every problem becomes one ConfigError naming file, line and key.

SAFE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN + r"\Z")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
# Aliases can make a small file expand to a huge tree ("billion laughs"); no real config comes close.
_MAX_NODES = 20_000
_LAB_FLAVOURS = ("netns", "loopback")
# Placeholders the command templates may use (docs/internals.md); deploy.py and probes.py fill them.
START_COMMAND_PLACEHOLDERS = (
    "bin",
    "node",
    "install_path",
    "log_dir",
    "p2p_address",
    "registry",
    "bootstrap",
)
PROBE_PLACEHOLDERS = (
    *START_COMMAND_PLACEHOLDERS,
    "peer",
    "peer_address",
    "method",
    "timeout",
    "topic",
    "message_id",
    "seconds",
    "amount",
)
_T = TypeVar("_T")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TAG_NAMES = {
    _STR: "a string",
    _INT: "an integer",
    _FLOAT: "a number",
    _BOOL: "a boolean",
    _NULL: "null",
    "tag:yaml.org,2002:timestamp": "a timestamp",
    "tag:yaml.org,2002:binary": "binary data",
}

PROJECT_KEYS = (
    "schema_version",
    "project",
    "workspace",
    "modules",
    "build",
    "deploy",
    "bootstrap",
    "tests",
    "soak",
    "probes",
    "fix",
    "notify",
    "inventory",
    "state_dir",
    "focus",
    "criteria",
    "criteria_expr",
    "proof",
)
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
    "identity_file",
)


def is_safe_name(name: str) -> bool:
    """True for names safe in paths and shell words: ``[A-Za-z0-9][A-Za-z0-9._-]*`` without ``..``."""
    return bool(_SAFE_NAME.match(name)) and ".." not in name


def load_project_config(path: Path | str) -> ProjectConfig:
    """Read and validate a project config file (the seed's ``config.yaml`` schema plus our keys).

    Raises ConfigError (file, line, key, allowed values) for anything wrong, including a missing
    or unreadable file.
    """
    path = Path(path)
    return parse_project_config(_read(path), path)


def load_inventory(path: Path | str) -> Inventory:
    """Read and validate a node inventory file (docs/internals.md "Inventory file")."""
    path = Path(path)
    return parse_inventory(_read(path), path)


def parse_project_config(text: str, path: Path | str | None = None) -> ProjectConfig:
    """Validate project config ``text`` as if read from ``path``.

    ``path`` names the file in errors, supplies the default project name (its parent directory's
    name) and is the base of relative paths (the current directory when ``path`` is None).
    """
    file = Path(path) if path is not None else None
    r = _Reader(str(file) if file is not None else "<config>")
    root = r.document(text, "project config")
    base = file.absolute().parent if file is not None else Path.cwd()
    m = r.mapping(root, "", PROJECT_KEYS)
    r.schema_version(m)

    if "project" in m:
        project = r.safe_name(m["project"], "project")
    elif file is not None:
        project = base.name
        if not is_safe_name(project):
            raise r.fail(
                None,
                "project",
                f"no 'project' key, and the config file's directory name {project!r} is not a safe "
                f"identifier ({SAFE_NAME_PATTERN}, no '..'); set 'project:' in the config",
            )
    else:
        raise r.fail(root, "project", "missing required key (there is no file name to take it from)")

    workspace = r.path(m["workspace"], "workspace", base) if "workspace" in m else base
    modules = (
        tuple(
            (r.safe_name(k, f"modules.{k.value}", is_key=True), _module(r, v, f"modules.{k.value}"))
            for k, v in r.entries(m["modules"], "modules")
        )
        if "modules" in m
        else ()
    )
    suites = (
        tuple(
            (r.safe_name(k, f"tests.{k.value}", is_key=True), _suite(r, v, f"tests.{k.value}"))
            for k, v in r.entries(m["tests"], "tests")
        )
        if "tests" in m
        else ()
    )

    return ProjectConfig(
        path=file,
        project=project,
        workspace=workspace,
        modules=modules,
        build=_build(r, m["build"]) if "build" in m else None,
        deploy=_deploy(r, m["deploy"]) if "deploy" in m else DeployConfig(),
        bootstrap=_bootstrap(r, m["bootstrap"]) if "bootstrap" in m else BootstrapConfig(),
        tests=suites,
        soak=_soak(r, m["soak"]) if "soak" in m else SoakConfig(),
        probes=_probes(r, m["probes"]) if "probes" in m else ProbeTemplates(),
        fix=_fix(r, m["fix"]) if "fix" in m else FixConfig(),
        notify=_notify(r, m["notify"]) if "notify" in m else NotifyConfig(),
        inventory=r.string(m["inventory"], "inventory") if "inventory" in m else None,
        state_dir=r.path(m["state_dir"], "state_dir", base) if "state_dir" in m else None,
        focus=cast(Focus, r.choice(m["focus"], "focus", FOCUSES)) if "focus" in m else None,
        criteria=cast(Criteria, r.choice(m["criteria"], "criteria", CRITERIA)) if "criteria" in m else None,
        criteria_expr=r.string(m["criteria_expr"], "criteria_expr") if "criteria_expr" in m else None,
        proof=cast(Proof, r.choice(m["proof"], "proof", PROOFS)) if "proof" in m else None,
    )


def parse_inventory(text: str, path: Path | str | None = None) -> Inventory:
    """Validate inventory ``text`` as if read from ``path`` (the base of relative paths)."""
    file = Path(path) if path is not None else None
    r = _Reader(str(file) if file is not None else "<inventory>")
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


# --------------------------------------------------------------------------- sections


def _module(r: _Reader, node: yaml.Node, key: str) -> ModuleConfig:
    m = r.mapping(node, key, ("binary", "crate", "tests"), required=("binary",))
    return ModuleConfig(
        binary=r.safe_name(m["binary"], f"{key}.binary"),
        crate=r.opt_string(m["crate"], f"{key}.crate") if "crate" in m else None,
        tests=r.string_list(m["tests"], f"{key}.tests") if "tests" in m else (),
    )


def _build(r: _Reader, node: yaml.Node) -> BuildConfig:
    fields = ("command", "target_dir", "artifact", "timeout_seconds", "max_consecutive_failures")
    m = r.mapping(node, "build", fields, required=("command",))
    d = BuildConfig(command="")
    return BuildConfig(
        command=r.string(m["command"], "build.command"),
        target_dir=r.opt_string(m["target_dir"], "build.target_dir") if "target_dir" in m else None,
        artifact=r.opt_string(m["artifact"], "build.artifact") if "artifact" in m else None,
        timeout_seconds=r.number(m["timeout_seconds"], "build.timeout_seconds", positive=True)
        if "timeout_seconds" in m
        else d.timeout_seconds,
        max_consecutive_failures=r.integer(m["max_consecutive_failures"], "build.max_consecutive_failures", 1)
        if "max_consecutive_failures" in m
        else d.max_consecutive_failures,
    )


def _deploy(r: _Reader, node: yaml.Node) -> DeployConfig:
    fields = (
        "install_path",
        "service_prefix",
        "nodes",
        "start_command",
        "registration_timeout_seconds",
        "parallelism",
    )
    m = r.mapping(node, "deploy", fields)
    d = DeployConfig()
    nodes: tuple[str, ...] | Literal["all"] = d.nodes
    if "nodes" in m:
        n = m["nodes"]
        if isinstance(n, yaml.ScalarNode) and n.tag == _STR and n.value == "all":
            nodes = "all"
        elif isinstance(n, yaml.SequenceNode):
            nodes = tuple(r.safe_name(item, f"deploy.nodes[{i}]") for i, item in enumerate(n.value))
        else:
            raise r.fail(n, "deploy.nodes", "expected 'all' or a list of node names")
    return DeployConfig(
        install_path=r.abs_path_text(m["install_path"], "deploy.install_path")
        if "install_path" in m
        else d.install_path,
        service_prefix=r.safe_name(m["service_prefix"], "deploy.service_prefix")
        if "service_prefix" in m
        else d.service_prefix,
        nodes=nodes,
        start_command=r.template(m["start_command"], "deploy.start_command", START_COMMAND_PLACEHOLDERS)
        if "start_command" in m
        else d.start_command,
        registration_timeout_seconds=r.number(
            m["registration_timeout_seconds"], "deploy.registration_timeout_seconds", positive=True
        )
        if "registration_timeout_seconds" in m
        else d.registration_timeout_seconds,
        parallelism=r.integer(m["parallelism"], "deploy.parallelism", 1)
        if "parallelism" in m
        else d.parallelism,
    )


def _bootstrap(r: _Reader, node: yaml.Node) -> BootstrapConfig:
    m = r.mapping(node, "bootstrap", ("registry", "nodes"))
    return BootstrapConfig(
        registry=r.opt(m, "registry", lambda n: r.url(n, "bootstrap.registry")),
        nodes=r.string_list(m["nodes"], "bootstrap.nodes") if "nodes" in m else (),
    )


def _suite(r: _Reader, node: yaml.Node, key: str) -> SuiteConfig:
    """A suite block: known settings are checked; any other key is a suite-specific setting (``extra``)
    whose value must be a scalar or a list of scalars."""
    m = r.mapping(node, key, None)
    d = SuiteConfig()
    criteria: list[tuple[str, float]] = []
    if "success_criteria" in m:
        for k, v in r.entries(m["success_criteria"], f"{key}.success_criteria"):
            criteria.append((k.value, r.number(v, f"{key}.success_criteria.{k.value}", non_negative=True)))
    extra = tuple(
        (name, r.plain_setting(value, f"{key}.{name}"))
        for name, value in m.items()
        if name not in ("success_criteria", "nat_cooloff_seconds", "timeout_seconds", "attempts")
    )
    return SuiteConfig(
        success_criteria=tuple(criteria),
        nat_cooloff_seconds=r.number(
            m["nat_cooloff_seconds"], f"{key}.nat_cooloff_seconds", non_negative=True
        )
        if "nat_cooloff_seconds" in m
        else d.nat_cooloff_seconds,
        timeout_seconds=r.number(m["timeout_seconds"], f"{key}.timeout_seconds", positive=True)
        if "timeout_seconds" in m
        else d.timeout_seconds,
        attempts=r.integer(m["attempts"], f"{key}.attempts", 1) if "attempts" in m else d.attempts,
        extra=extra,
    )


def _soak(r: _Reader, node: yaml.Node) -> SoakConfig:
    fields = ("wait_1hr", "wait_6hr", "regression_tolerance", "wait_1hr_seconds", "wait_6hr_seconds")
    m = r.mapping(node, "soak", fields)
    d = SoakConfig()
    return SoakConfig(
        wait_1hr=r.boolean(m["wait_1hr"], "soak.wait_1hr") if "wait_1hr" in m else d.wait_1hr,
        wait_6hr=r.boolean(m["wait_6hr"], "soak.wait_6hr") if "wait_6hr" in m else d.wait_6hr,
        regression_tolerance=r.number(
            m["regression_tolerance"], "soak.regression_tolerance", non_negative=True
        )
        if "regression_tolerance" in m
        else d.regression_tolerance,
        wait_1hr_seconds=r.number(m["wait_1hr_seconds"], "soak.wait_1hr_seconds", non_negative=True)
        if "wait_1hr_seconds" in m
        else d.wait_1hr_seconds,
        wait_6hr_seconds=r.number(m["wait_6hr_seconds"], "soak.wait_6hr_seconds", non_negative=True)
        if "wait_6hr_seconds" in m
        else d.wait_6hr_seconds,
    )


def _probes(r: _Reader, node: yaml.Node) -> ProbeTemplates:
    names = tuple(f.name for f in dataclass_fields(ProbeTemplates))
    m = r.mapping(node, "probes", names)
    return ProbeTemplates(**{k: r.template(v, f"probes.{k}", PROBE_PLACEHOLDERS) for k, v in m.items()})


def _fix(r: _Reader, node: yaml.Node) -> FixConfig:
    m = r.mapping(node, "fix", ("command", "verify_command", "commit_wait_seconds"))
    d = FixConfig()
    return FixConfig(
        command=r.opt_string(m["command"], "fix.command") if "command" in m else None,
        verify_command=r.opt_string(m["verify_command"], "fix.verify_command")
        if "verify_command" in m
        else None,
        commit_wait_seconds=r.number(m["commit_wait_seconds"], "fix.commit_wait_seconds", positive=True)
        if "commit_wait_seconds" in m
        else d.commit_wait_seconds,
    )


_CHANNEL_KINDS: tuple[ChannelKind, ...] = ("log", "webhook", "command", "voice")


def _notify(r: _Reader, node: yaml.Node) -> NotifyConfig:
    m = r.mapping(node, "notify", ("channels", "dashboard_url"))
    channels = []
    for i, item in enumerate(r.sequence(m["channels"], "notify.channels") if "channels" in m else []):
        key = f"notify.channels[{i}]"
        c = r.mapping(item, key, ("kind", "url", "command", "timeout_seconds"), required=("kind",))
        kind = cast(ChannelKind, r.choice(c["kind"], f"{key}.kind", _CHANNEL_KINDS))
        url = r.url(c["url"], f"{key}.url") if "url" in c else None
        command = r.string(c["command"], f"{key}.command") if "command" in c else None
        if kind == "webhook" and url is None:
            raise r.fail(item, f"{key}.url", "a webhook channel needs 'url'")
        if kind == "command" and command is None:
            raise r.fail(item, f"{key}.command", "a command channel needs 'command'")
        timeout = (
            r.number(c["timeout_seconds"], f"{key}.timeout_seconds", positive=True)
            if "timeout_seconds" in c
            else ChannelConfig(kind="log").timeout_seconds
        )
        channels.append(ChannelConfig(kind=kind, url=url, command=command, timeout_seconds=timeout))
    return NotifyConfig(
        channels=tuple(channels),
        dashboard_url=r.opt(m, "dashboard_url", lambda n: r.url(n, "notify.dashboard_url")),
    )


def _node(r: _Reader, item: yaml.Node, key: str) -> Node:
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
        identity_file=opt("identity_file"),
    )


def _registry(r: _Reader, node: yaml.Node) -> RegistryAccess:
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        return RegistryAccess(url=r.url(node, "registry"))
    m = r.mapping(node, "registry", ("url", "via_node"), required=("url",))
    via = r.opt_string(m["via_node"], "registry.via_node") if "via_node" in m else None
    if via is not None:
        via = r.safe_name(m["via_node"], "registry.via_node")
    return RegistryAccess(url=r.url(m["url"], "registry.url"), via_node=via)


# --------------------------------------------------------------------------- the node reader


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=path) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", path=path) from None


def _printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped, so messages stay one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")


class _Reader:
    """Typed accessors over a composed YAML tree; each failure is a ConfigError with file, line, key."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._constructor = yaml.constructor.SafeConstructor()

    def fail(
        self, node: yaml.Node | None, key: str | None, message: str, allowed: Sequence[str] | None = None
    ) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None and node.start_mark is not None else None
        return ConfigError(
            message,
            path=_printable(self.label),
            line=line,
            key=_printable(key) if key else None,
            allowed=tuple(allowed) if allowed else None,
        )

    def document(self, text: str, what: str) -> yaml.Node:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = " ".join(str(e.problem or e.context or "invalid YAML").split())
            raise ConfigError(f"YAML syntax error: {problem}", path=self.label, line=line) from None
        except yaml.reader.ReaderError as e:
            line = text.count("\n", 0, e.position) + 1
            char = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
            raise ConfigError(
                f"character {char} is not allowed in YAML", path=self.label, line=line
            ) from None
        except yaml.YAMLError as e:
            detail = " ".join(str(e).split())
            raise ConfigError(f"YAML error: {detail}", path=self.label) from None
        except RecursionError:
            raise ConfigError("YAML nesting is too deep", path=self.label) from None
        if root is None:
            raise ConfigError(f"the {what} is empty; expected a mapping", path=self.label, line=1)
        self._check_size(root)
        return root

    def _check_size(self, root: yaml.Node) -> None:
        count, stack = 0, [root]
        while stack:
            node = stack.pop()
            count += 1
            if count > _MAX_NODES:
                raise self.fail(
                    root, None, f"the document expands to more than {_MAX_NODES} values (aliases?)"
                )
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    stack += [k, v]
            elif isinstance(node, yaml.SequenceNode):
                stack += node.value

    def schema_version(self, m: dict[str, yaml.Node]) -> None:
        if "schema_version" in m:
            self.integer(m["schema_version"], "schema_version", 1, 1)

    def entries(self, node: yaml.Node, key: str) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
        """The (key node, value node) pairs of a mapping with string keys, no duplicates.

        Merge keys (``<<: *anchor``) are applied as YAML does: the mapping's own keys win.
        """
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, f"expected a mapping, got {_describe(node)}")
        seen: dict[str, int] = {}
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag == _STR:
                if k.value in seen:
                    name = f"{key}.{k.value}" if key else k.value
                    raise self.fail(k, name, f"duplicate key (first at line {seen[k.value]})")
                seen[k.value] = k.start_mark.line + 1
        try:
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as e:
            raise self.fail(node, key, f"bad merge ('<<'): {' '.join(str(e).split())}") from None
        merged: dict[str, tuple[yaml.ScalarNode, yaml.Node]] = {}
        for k, v in node.value:
            if not (isinstance(k, yaml.ScalarNode) and k.tag == _STR):
                raise self.fail(k, key or None, f"keys must be strings, got {_describe(k)}")
            merged[k.value] = (k, v)  # later pairs (the mapping's own) override merged ones
        return list(merged.values())

    def mapping(
        self,
        node: yaml.Node,
        key: str,
        allowed: Sequence[str] | None,
        required: Sequence[str] = (),
    ) -> dict[str, yaml.Node]:
        """A mapping's values by key; unknown keys (when ``allowed`` is given) and missing ones are errors."""
        pairs = self.entries(node, key)
        for k, _ in pairs:
            if allowed is not None and k.value not in allowed:
                name = f"{key}.{k.value}" if key else k.value
                raise self.fail(k, name, "unknown key", allowed)
        values = {k.value: v for k, v in pairs}
        for name in required:
            if name not in values:
                full = f"{key}.{name}" if key else name
                raise self.fail(node, full, "missing required key")
        return values

    def sequence(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, key, f"expected a list, got {_describe(node)}")
        return list(node.value)

    def _scalar(self, node: yaml.Node, key: str, tags: tuple[str, ...], expected: str) -> object:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in tags:
            raise self.fail(node, key, f"expected {expected}, got {_describe(node)}")
        if node.tag == _STR:
            return node.value
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as e:
            raise self.fail(node, key, f"bad {expected}: {' '.join(str(e).split())}") from None

    def string(self, node: yaml.Node, key: str) -> str:
        value = cast(str, self._scalar(node, key, (_STR,), "a string"))
        if not value.strip():
            raise self.fail(node, key, "must not be empty")
        return value

    def opt_string(self, node: yaml.Node, key: str) -> str | None:
        if self.is_null(node):
            return None
        return self.string(node, key)

    def string_list(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        return tuple(self.string(item, f"{key}[{i}]") for i, item in enumerate(self.sequence(node, key)))

    def safe_name(self, node: yaml.Node, key: str, *, is_key: bool = False) -> str:
        value = node.value if is_key and isinstance(node, yaml.ScalarNode) else self.string(node, key)
        if not is_safe_name(value):
            raise self.fail(
                node,
                key,
                f"{value!r} is not a safe name: use letters, digits, '.', '_' and '-', starting with a "
                f"letter or digit, without '..' ({SAFE_NAME_PATTERN})",
            )
        return value

    def matching(self, node: yaml.Node, key: str, pattern: re.Pattern[str], what: str) -> str:
        value = self.string(node, key)
        if not pattern.match(value):
            raise self.fail(node, key, f"{value!r} is not {what} (no spaces or shell characters)")
        return value

    def opt(self, m: dict[str, yaml.Node], name: str, read: Callable[[yaml.Node], _T]) -> _T | None:
        """``read`` the value of ``name`` in ``m``; None when the key is absent or null."""
        node = m.get(name)
        if node is None or self.is_null(node):
            return None
        return read(node)

    def is_null(self, node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == _NULL

    def template(self, node: yaml.Node, key: str, placeholders: Sequence[str]) -> str:
        """A command template: ``{name}`` placeholders from ``placeholders`` only, ``{{``/``}}`` literal."""
        value = self.string(node, key)
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as e:
            raise self.fail(
                node, key, f"malformed template (use {{{{ and }}}} for literal braces): {e}"
            ) from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in placeholders or spec or conversion:
                shown = (
                    "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                )
                raise self.fail(node, key, f"unknown placeholder {_printable(shown)}", placeholders)
        return value

    def choice(self, node: yaml.Node, key: str, allowed: Sequence[str]) -> str:
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _STR and node.value in allowed):
            shown = node.value if isinstance(node, yaml.ScalarNode) else _describe(node)
            raise self.fail(node, key, f"unknown value {shown!r}", allowed)
        return cast(str, node.value)

    def boolean(self, node: yaml.Node, key: str) -> bool:
        return cast(bool, self._scalar(node, key, (_BOOL,), "true or false"))

    def integer(
        self, node: yaml.Node, key: str, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = cast(int, self._scalar(node, key, (_INT,), "an integer"))
        if minimum is not None and value < minimum:
            raise self.fail(node, key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(node, key, f"must be at most {maximum}, got {value}")
        return value

    def number(
        self, node: yaml.Node, key: str, *, positive: bool = False, non_negative: bool = False
    ) -> float:
        value = float(cast(float, self._scalar(node, key, (_INT, _FLOAT), "a number")))
        if math.isnan(value) or math.isinf(value):
            raise self.fail(node, key, f"must be a finite number, got {value}")
        if positive and value <= 0:
            raise self.fail(node, key, f"must be greater than 0, got {value:g}")
        if non_negative and value < 0:
            raise self.fail(node, key, f"must not be negative, got {value:g}")
        return value

    def url(self, node: yaml.Node, key: str) -> str:
        value = self.string(node, key)
        if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
            raise self.fail(node, key, f"expected an http:// or https:// URL, got {value!r}")
        return value

    def path(self, node: yaml.Node, key: str, base: Path) -> Path:
        """A file system path: ``~`` expanded, relative paths taken from ``base``."""
        text = self.string(node, key)
        try:
            p = Path(text).expanduser()
        except RuntimeError:
            raise self.fail(node, key, f"cannot expand '~' in {text!r}") from None
        return Path(os.path.normpath(p if p.is_absolute() else base / p))

    def opt_path(self, node: yaml.Node, key: str, base: Path) -> Path | None:
        if self.is_null(node):
            return None
        return self.path(node, key, base)

    def abs_path_text(self, node: yaml.Node, key: str) -> str:
        """A path on the nodes (not on this machine): must be absolute; kept as written."""
        value = self.string(node, key)
        if not value.startswith("/"):
            raise self.fail(node, key, f"must be an absolute path on the node, got {value!r}")
        return value

    def plain_setting(self, node: yaml.Node, key: str) -> object:
        """A suite-specific setting: a scalar, or a list of scalars (returned as a tuple)."""
        scalar_tags = (_STR, _INT, _FLOAT, _BOOL, _NULL)
        if isinstance(node, yaml.SequenceNode):
            return tuple(
                self._scalar(item, f"{key}[{i}]", scalar_tags, "a plain value")
                for i, item in enumerate(node.value)
            )
        return self._scalar(node, key, scalar_tags, "a plain value or a list of them")
