"""Project config and node inventory: loaded once, validated, frozen.

The project config follows the schema of the seed's ``config.yaml`` (workspace, modules,
build, deploy, bootstrap, tests, soak) so an existing file loads unchanged; the keys this
project adds (project, inventory, probes, fix, notify, waits, state_dir) are all optional.
The inventory lists the nodes. Everything downstream trusts these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    """Command templates of the probe contract (DESIGN.md). Values are shell-quoted when filled.

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
