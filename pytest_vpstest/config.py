"""Project config (and, re-exported, the node inventory): loaded once, validated, frozen.

The project config follows the base ``config.yaml`` schema (workspace, modules,
build, deploy, bootstrap, tests, soak) so an existing file loads unchanged; the keys this
project adds (project, inventory, state_dir, focus, criteria, criteria_expr, proof, probes, fix,
notify, and the wait lengths under soak) are all optional. The inventory lists the nodes.
Everything downstream trusts these objects; ``load_project_config`` and ``load_inventory`` build
them, and every problem is a one-line ConfigError naming file, line and key. The inventory's types
and loader live in ``pytest_vpstest.inventory`` and are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Literal, cast

import yaml

from pytest_vpstest._yaml_reader import SAFE_NAME_PATTERN, STR, Reader, is_safe_name, read_text
from pytest_vpstest.config_operations import (
    NODE_TESTS,
    ChannelConfig,
    ChannelKind,
    DashboardConfig,
    FixConfig,
    HealthConfig,
    NodeTests,
    NotifyConfig,
    parse_dashboard,
    parse_fix,
    parse_health,
    parse_notify,
)
from pytest_vpstest.inventory import (
    INVENTORY_KEYS,
    NAT_TYPES,
    NODE_KEYS,
    ROLES,
    SERVICE_MANAGERS,
    Inventory,
    NatType,
    Node,
    RegistryAccess,
    Role,
    ServiceManagerKind,
    load_inventory,
    parse_inventory,
)
from pytest_vpstest.modes import CRITERIA, PROOFS, Criteria, Proof
from pytest_vpstest.suite import FOCUSES, SUITES, Focus, find_suite, suite_key

__all__ = [
    "CRITERIA",
    "FOCUSES",
    "INVENTORY_KEYS",
    "NAT_TYPES",
    "NODE_KEYS",
    "NODE_TESTS",
    "PROBE_PLACEHOLDERS",
    "PROJECT_KEYS",
    "PROOFS",
    "ROLES",
    "SAFE_NAME_PATTERN",
    "SERVICE_MANAGERS",
    "START_COMMAND_PLACEHOLDERS",
    "BootstrapConfig",
    "BuildConfig",
    "ChannelConfig",
    "ChannelKind",
    "Criteria",
    "DashboardConfig",
    "DeployConfig",
    "FixConfig",
    "Focus",
    "HealthConfig",
    "Inventory",
    "ModuleConfig",
    "NatType",
    "Node",
    "NodeTests",
    "NotifyConfig",
    "ProbeTemplates",
    "ProjectConfig",
    "Proof",
    "RegistryAccess",
    "Role",
    "ServiceManagerKind",
    "SoakConfig",
    "SuiteConfig",
    "is_safe_name",
    "load_inventory",
    "load_project_config",
    "parse_inventory",
    "parse_project_config",
]



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
    # Nodes deployed at once; None: every target at once (the work is remote, the harness waits).
    parallelism: int | None = None
    # How deploy knows a started node is ready: its ``status`` probe answers ok (and not
    # ``ready: false``), it appears in the registry, or not at all. The wait is
    # registration_timeout_seconds either way.
    readiness: Literal["status", "registry", "none"] = "registry"
    # Per-role start commands ((role, template), ...); a role without one uses start_command.
    start_commands: tuple[tuple[str, str], ...] = ()

    def start_command_for(self, role: str) -> str:
        return dict(self.start_commands).get(role, self.start_command)


@dataclass(frozen=True)
class BootstrapConfig:
    registry: str | None = None
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuiteConfig:
    """Settings of one suite (the ``tests.<suite>`` block)."""

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
    # Optional: ``crdt: null`` makes the CRDT test skip with the reason.
    crdt: str | None = "{bin} probe crdt --increment {amount} --json"
    # Optional actions (docs/contract.md); None: not offered by the node.
    subscribe: str | None = None
    reset: str | None = None
    # Optional: one command per node that reads probe requests as JSON lines on stdin and prints
    # one JSON result line per request as each finishes (docs/plugin.md). None: single probes.
    batch: str | None = None


@dataclass(frozen=True)
class ProjectConfig:
    """The project config (the base ``config.yaml`` schema plus optional extensions)."""

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
    health: HealthConfig = field(default_factory=HealthConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    # Inventory file (relative to the config file) or "lab".
    inventory: str | None = None
    state_dir: Path | None = None
    focus: Focus | None = None
    criteria: Criteria | None = None
    criteria_expr: str | None = None
    proof: Proof | None = None

    def suite(self, name: str) -> SuiteConfig:
        """The ``tests.<name>`` settings; a suite's name or focus spelling finds the same block."""
        key = suite_key(name)
        for k, v in self.tests:
            if k == key:
                return v
        return SuiteConfig()


# =========================================================================== loading
#
# The file is read through ``Reader`` (pytest_vpstest._yaml_reader) so that every value keeps its
# line; each section is a small function that checks keys, types and ranges and builds the frozen
# objects above. Every problem becomes one ConfigError naming file, line and key.

# Placeholders the command templates may use (docs/internals.md); deploy.py and probes.py fill them.
START_COMMAND_PLACEHOLDERS = (
    "bin",
    "node",
    "install_path",
    "log_dir",
    "p2p_address",
    "registry",
    "bootstrap",
    "role",
)
PROBE_PLACEHOLDERS = (
    *START_COMMAND_PLACEHOLDERS,
    "peer",
    "peer_address",
    "peer_id",
    "peer_public_address",
    "method",
    "timeout",
    "topic",
    "message_id",
    "seconds",
    "amount",
)

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
    "health",
    "notify",
    "dashboard",
    "inventory",
    "state_dir",
    "focus",
    "criteria",
    "criteria_expr",
    "proof",
)


def load_project_config(path: Path | str) -> ProjectConfig:
    """Read and validate a project config file (the base ``config.yaml`` schema plus our keys).

    Raises ConfigError (file, line, key, allowed values) for anything wrong, including a missing
    or unreadable file.
    """
    path = Path(path)
    return parse_project_config(read_text(path), path)


def parse_project_config(text: str, path: Path | str | None = None) -> ProjectConfig:
    """Validate project config ``text`` as if read from ``path``.

    ``path`` names the file in errors, supplies the default project name (its parent directory's
    name) and is the base of relative paths (the current directory when ``path`` is None).
    """
    file = Path(path) if path is not None else None
    r = Reader(str(file) if file is not None else "<config>")
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
    suites = _suites(r, m["tests"]) if "tests" in m else ()

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
        fix=parse_fix(r, m["fix"]) if "fix" in m else FixConfig(),
        health=parse_health(r, m["health"]) if "health" in m else HealthConfig(),
        notify=parse_notify(r, m["notify"]) if "notify" in m else NotifyConfig(),
        dashboard=parse_dashboard(r, m["dashboard"]) if "dashboard" in m else DashboardConfig(),
        inventory=r.string(m["inventory"], "inventory") if "inventory" in m else None,
        state_dir=r.path(m["state_dir"], "state_dir", base) if "state_dir" in m else None,
        focus=cast(Focus, r.choice(m["focus"], "focus", FOCUSES)) if "focus" in m else None,
        criteria=cast(Criteria, r.choice(m["criteria"], "criteria", CRITERIA)) if "criteria" in m else None,
        criteria_expr=_criteria_expr(r, m["criteria_expr"]) if "criteria_expr" in m else None,
        proof=cast(Proof, r.choice(m["proof"], "proof", PROOFS)) if "proof" in m else None,
    )


# --------------------------------------------------------------------------- sections


def _module(r: Reader, node: yaml.Node, key: str) -> ModuleConfig:
    m = r.mapping(node, key, ("binary", "crate", "tests"), required=("binary",))
    return ModuleConfig(
        binary=r.safe_name(m["binary"], f"{key}.binary"),
        crate=r.opt_string(m["crate"], f"{key}.crate") if "crate" in m else None,
        tests=r.string_list(m["tests"], f"{key}.tests") if "tests" in m else (),
    )


def _build(r: Reader, node: yaml.Node) -> BuildConfig:
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


def _deploy(r: Reader, node: yaml.Node) -> DeployConfig:
    fields = (
        "install_path",
        "service_prefix",
        "nodes",
        "start_command",
        "registration_timeout_seconds",
        "parallelism",
        "readiness",
        "start_commands",
    )
    m = r.mapping(node, "deploy", fields)
    d = DeployConfig()
    nodes: tuple[str, ...] | Literal["all"] = d.nodes
    if "nodes" in m:
        n = m["nodes"]
        if isinstance(n, yaml.ScalarNode) and n.tag == STR and n.value == "all":
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
        readiness=cast(
            Literal["status", "registry", "none"],
            r.choice(m["readiness"], "deploy.readiness", ("status", "registry", "none")),
        )
        if "readiness" in m
        else d.readiness,
        start_commands=tuple(
            (role, r.template(v, f"deploy.start_commands.{role}", START_COMMAND_PLACEHOLDERS))
            for role, v in r.mapping(m["start_commands"], "deploy.start_commands", ROLES).items()
        )
        if "start_commands" in m
        else d.start_commands,
    )


def _bootstrap(r: Reader, node: yaml.Node) -> BootstrapConfig:
    m = r.mapping(node, "bootstrap", ("registry", "nodes"))
    return BootstrapConfig(
        registry=r.opt(m, "registry", lambda n: r.url(n, "bootstrap.registry")),
        nodes=r.string_list(m["nodes"], "bootstrap.nodes") if "nodes" in m else (),
    )


def _criteria_expr(r: Reader, node: yaml.Node) -> str:
    """A custom criteria expression, checked now: a typo must not wait for the first TEST."""
    from pytest_vpstest.errors import CriteriaError
    from pytest_vpstest.expressions import check_expression

    text = r.string(node, "criteria_expr")
    try:
        check_expression(text)
    except CriteriaError as exc:
        raise r.fail(node, "criteria_expr", str(exc)) from None
    return text


def _suites(r: Reader, node: yaml.Node) -> tuple[tuple[str, SuiteConfig], ...]:
    """The ``tests`` blocks, keyed by suite name: ``tests.nat-traversal`` is read as
    ``tests.nat_traversal`` (both spellings are accepted; giving both is an error). An unknown
    suite (``tests.conectivity``) is an error naming the suites there are."""
    out: dict[str, SuiteConfig] = {}
    for k, v in r.entries(node, "tests"):
        name = r.safe_name(k, f"tests.{k.value}", is_key=True)
        if find_suite(name) is None:
            allowed = [s.name for s in SUITES]
            raise r.fail(k, f"tests.{k.value}", f"unknown suite {name!r}", allowed)
        key = suite_key(name)
        if key in out:
            where = f"tests.{k.value}"
            raise r.fail(k, where, f"the {key} suite is configured twice (as {key} and {k.value})")
        out[key] = _suite(r, v, f"tests.{k.value}")
    return tuple(out.items())


def _suite(r: Reader, node: yaml.Node, key: str) -> SuiteConfig:
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


def _soak(r: Reader, node: yaml.Node) -> SoakConfig:
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


def _probes(r: Reader, node: yaml.Node) -> ProbeTemplates:
    names = tuple(f.name for f in dataclass_fields(ProbeTemplates))
    m = r.mapping(node, "probes", names)
    # The batch command is per node: a request line carries the peer and the method.
    values: dict[str, str | None] = {}
    for k, v in m.items():
        if k in _OPTIONAL_PROBES and r.is_null(v):
            values[k] = None
        else:
            allowed = START_COMMAND_PLACEHOLDERS if k == "batch" else PROBE_PLACEHOLDERS
            values[k] = r.template(v, f"probes.{k}", allowed)
    return ProbeTemplates(**values)  # type: ignore[arg-type]  # required ones are never None


# Probe actions a node need not offer (a null template: their tests skip with the reason, or for
# batch: single probes).
_OPTIONAL_PROBES = frozenset({"crdt", "subscribe", "reset", "batch"})
