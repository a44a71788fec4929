"""Deploy a locally built artifact to the fleet, per node in parallel, and roll it back.

Per node (stop, upload, restart, verify, made safe):

1. **stop** the running service first — overwriting a running binary in place fails ("text file busy");
2. **upload** to a temporary file in the install directory and check its SHA-256;
3. **install**: keep the current binary as ``<binary>.prev`` (for rollback), ``chmod +x`` the new one
   and ``mv`` it into place (atomic: the path always names a whole binary). A multi-file artifact
   (a directory or an archive) is unpacked beside the current release and switched to by a symlink
   rename, the one it replaced kept for rollback (``fleet/artifact.py``);
4. **start** it through the node's service manager with ``deploy.start_command`` filled by
   :func:`~pytest_vpstest.fleet.remote.quote_command`;
5. **verify** it is still running a few seconds after its start — one window per node, all
   nodes' windows at once (a node does not hold a fan-out slot while it is being watched).

Then, once for all nodes, wait for each started node to appear in the registry
(``deploy.registration_timeout_seconds``); nodes that never register fail at stage ``register``.
Failed nodes are reported and skipped; fewer than half the targets deployed raises
:class:`DeployError` naming every failed node, its stage and cause.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import secrets
import shlex
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pytest_vpstest.config import Inventory, ProjectConfig, RegistryAccess
from pytest_vpstest.errors import ConfigError, DeployError, NodeError, UnreachableNodeError
from pytest_vpstest.fleet.artifact import install_script, pack_bundle, rollback_script
from pytest_vpstest.fleet.node import NodePlan, plan_node
from pytest_vpstest.fleet.remote import Pool, Session, query_registry, quote_command
from pytest_vpstest.fleet.services import ServiceManager, service_manager
from pytest_vpstest.redact import redact_url

__all__ = [
    "DeployReport",
    "NodeDeploy",
    "Stage",
    "deploy",
    "owner_of",
    "registered_names",
    "rollback",
    "start_command",
    "target_nodes",
]

Stage = Literal["connect", "stop", "upload", "install", "start", "verify", "register", "ready", "rollback"]
Log = Callable[[str], None]
RegistryQuery = Callable[[Pool, RegistryAccess], list[dict[str, Any]]]


@dataclass(frozen=True)
class NodeDeploy:
    """How deployment went on one node. ``stage_failed`` is None when ``ok``."""

    node: str
    ok: bool
    stage_failed: Stage | None = None
    error: str | None = None
    duration: float = 0.0
    previous_kept: bool = False


@dataclass(frozen=True)
class DeployReport:
    """Per-node outcomes; ``succeeded`` and ``total`` are node counts."""

    per_node: Mapping[str, NodeDeploy]
    succeeded: int
    total: int

    @property
    def succeeded_nodes(self) -> tuple[str, ...]:
        return tuple(n for n, d in self.per_node.items() if d.ok)

    @property
    def failed_nodes(self) -> tuple[str, ...]:
        return tuple(n for n, d in self.per_node.items() if not d.ok)

    def failure_lines(self) -> list[str]:
        """One line per failed node: ``name: stage: cause``."""
        return [f"{n}: {d.stage_failed}: {d.error}" for n, d in self.per_node.items() if not d.ok]


def target_nodes(
    inventory: Inventory, config: ProjectConfig, nodes: Sequence[str] | None = None
) -> list[str]:
    """The nodes to deploy to: ``nodes`` if given, else ``deploy.nodes`` ("all": every non-registry node)."""
    wanted = list(nodes) if nodes is not None else config.deploy.nodes
    if wanted == "all":
        return [n.name for n in inventory.nodes if n.role != "registry"]
    unknown = [n for n in wanted if n not in inventory.names]
    if unknown:
        raise ConfigError(
            f"deploy nodes not in the inventory: {', '.join(unknown)}",
            key="deploy.nodes",
            allowed=inventory.names,
        )
    return list(dict.fromkeys(wanted))


def _registry(inventory: Inventory, config: ProjectConfig) -> RegistryAccess | None:
    if inventory.registry is not None:
        return inventory.registry
    if config.bootstrap.registry:
        return RegistryAccess(url=config.bootstrap.registry)
    return None


def start_command(plan: NodePlan, inventory: Inventory, config: ProjectConfig) -> str:
    """The node's start command (``deploy.start_commands`` for its role, else ``deploy.start_command``)
    filled for the planned node (every value shell-quoted)."""
    registry = _registry(inventory, config)
    bootstrap = inventory.bootstrap or config.bootstrap.nodes
    return quote_command(
        config.deploy.start_command_for(plan.role),
        **plan.placeholders(),
        registry=registry.url if registry else "",
        bootstrap=",".join(bootstrap),
    )


class _StageFailed(Exception):
    def __init__(self, stage: Stage, message: str) -> None:
        super().__init__(message)
        self.stage: Stage = stage


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _message(exc: Exception) -> str:
    # NodeError's text starts with "<node> (<address>): "; the report already names the node.
    text = str(exc)
    if isinstance(exc, NodeError) and text.startswith(exc.node):
        text = text[len(exc.node) :].lstrip()
        if exc.address and text.startswith(f"({exc.address})"):
            text = text[len(exc.address) + 2 :]
        text = text.lstrip(": ")
    return text


@dataclass
class _Started:
    ok: NodeDeploy
    started_at: float


def _deploy_one(
    session: Session,
    inventory: Inventory,
    config: ProjectConfig,
    artifact: Path,
    upload_file: Path,
    digest: str,
    verify_seconds: float,
    log: Log,
) -> _Started:
    node = session.node
    plan = plan_node(node, config, artifact)
    began = time.monotonic()
    stage: Stage = "connect"
    upload: str | None = None
    try:
        manager = service_manager(session, install_path=plan.install_path, log_dir=plan.log_dir)
        stage = "stop"
        _claim(session, manager, plan, config)
        manager.stop(plan.service)
        log(f"{node.name}: stopped {plan.service}")

        stage = "upload"
        token = secrets.token_hex(4)
        name = ".bundle" if plan.bundle else f".{posixpath.basename(plan.binary)}"
        upload = posixpath.join(plan.install_path, f"{name}.upload-{token}")
        session.run(
            f"mkdir -p {shlex.quote(plan.install_path)} {shlex.quote(plan.log_dir)}", timeout=30, check=True
        )
        session.put(upload_file, upload)
        got = session.run(f"sha256sum {shlex.quote(upload)}", timeout=60, check=True).stdout.split()
        if not got or got[0] != digest:
            raise _StageFailed("upload", f"uploaded file's SHA-256 differs from {artifact.name}'s")
        log(f"{node.name}: uploaded {artifact.name}")

        stage = "install"
        b, prev, up = shlex.quote(plan.binary), shlex.quote(plan.previous), shlex.quote(upload)
        # A hard link keeps the old binary as .prev without a moment where the path is missing.
        script = (
            f"set -e; kept=no; if [ -f {b} ]; then ln -f {b} {prev} 2>/dev/null || cp -p {b} {prev}; "
            f"kept=yes; fi; chmod +x {up}; mv -f {up} {b}; echo kept=$kept"
        )
        if plan.bundle:  # unpacking a large tree may take longer than a rename
            release = f"{time.strftime('%Y%m%dT%H%M%S')}-{token}"
            script = install_script(plan.install_path, upload, release, _installed_name(config))
        install_timeout = 300 if plan.bundle else 60
        out = session.run(f"sh -c {shlex.quote(script)}", timeout=install_timeout, check=True).stdout
        previous_kept = "kept=yes" in out
        upload = None  # moved into place

        stage = "start"
        status = manager.start(plan.service, start_command(plan, inventory, config))
        started_at = time.monotonic()
        log(f"{node.name}: started {plan.service} (pid {status.pid})")
    except (_StageFailed, NodeError, ConfigError) as exc:
        if upload is not None:
            _discard(session, upload)
        if isinstance(exc, _StageFailed):
            failed, error = exc.stage, str(exc)
        else:
            unreachable = isinstance(exc, UnreachableNodeError) and stage in ("connect", "stop")
            failed, error = ("connect" if unreachable else stage), _message(exc)
        return _Started(NodeDeploy(node.name, False, failed, error, time.monotonic() - began), 0.0)
    return _Started(
        NodeDeploy(node.name, True, None, None, time.monotonic() - began, previous_kept), started_at
    )


def owner_of(config: ProjectConfig) -> str:
    """Who deploys: the project, the machine and the workspace (two checkouts of one project differ)."""
    return f"{config.project} on {socket.gethostname()} from {config.workspace}"


def _claim(session: Session, manager: ServiceManager, plan: NodePlan, config: ProjectConfig) -> None:
    """Refuse to replace a running service another project deployed under the same name; else
    record this project as the service's owner (``<install_path>/run/<service>.owner``)."""
    marker = posixpath.join(plan.install_path, "run", f"{plan.service}.owner")
    me = owner_of(config)
    found = session.run(f"cat {shlex.quote(marker)} 2>/dev/null || true", timeout=30, check=True)
    found_owner = found.stdout.strip()
    if found_owner and found_owner != me and manager.status(plan.service).running:
        raise _StageFailed(
            "stop",
            f"service {plan.service} on {session.node.name} is running for another project ({found_owner}); "
            "not replacing it: give this project its own deploy.service_prefix, or stop the other run",
        )
    run_dir = posixpath.dirname(marker)
    session.run(
        f"mkdir -p {shlex.quote(run_dir)} && printf '%s\\n' {shlex.quote(me)} > {shlex.quote(marker)}",
        timeout=30,
        check=True,
    )


def _discard(session: Session, path: str) -> None:
    """Best effort: remove a half-done upload (the node may be gone by now)."""
    with contextlib.suppress(NodeError):
        session.run(f"rm -f {shlex.quote(path)}", timeout=30)


def _verify_running(manager: ServiceManager, service: str, seconds: float) -> None:
    """Running now and still running ``seconds`` later (a crash on start is caught)."""
    deadline = time.monotonic() + seconds
    while True:
        status = manager.status(service)
        if not status.running:
            tail = [ln for ln in manager.logs(service, lines=20).splitlines() if ln.strip()]
            hint = f"; last log line: {tail[-1].strip()}" if tail else ""
            raise _StageFailed("verify", f"{service} is not running ({status.detail}){hint}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(0.5, remaining))


def _verify_started(
    session: Session, config: ProjectConfig, artifact: Path, started_at: float, seconds: float, log: Log
) -> str | None:
    """Watch a started node until ``seconds`` after its start; None if it kept running, else why not."""
    plan = plan_node(session.node, config, artifact)
    manager = service_manager(session, install_path=plan.install_path, log_dir=plan.log_dir)
    try:
        _verify_running(manager, plan.service, started_at + seconds - time.monotonic())
    except _StageFailed as exc:
        return str(exc)
    except (NodeError, ConfigError) as exc:
        return _message(exc)
    log(f"{session.node.name}: {plan.service} running")
    return None


def registered_names(peers: Sequence[Mapping[str, Any]]) -> set[str]:
    """Node names a registry answer lists (a peer's ``name``, else ``node``)."""
    names: set[str] = set()
    for peer in peers:
        name = peer.get("name", peer.get("node"))
        if isinstance(name, str):
            names.add(name)
    return names


def _fresh(peer: Mapping[str, Any], started_ago: float) -> bool:
    # A peer entry left by the process we stopped is older than our start; with no age, trust it.
    age = peer.get("age_seconds")
    return not isinstance(age, int | float) or age <= started_ago + 1.0


def _wait_registration(
    pool: Pool,
    registry: RegistryAccess,
    started: Mapping[str, float],
    timeout: float,
    query: RegistryQuery,
    log: Log,
) -> dict[str, str]:
    """Wait until every started node is registered; return ``{node: cause}`` for those that never were."""
    pending = set(started)
    deadline = time.monotonic() + timeout
    last_error = ""
    while pending:
        try:
            peers = query(pool, registry)
            last_error = ""
        except NodeError as exc:
            peers, last_error = [], str(exc)
        now = time.monotonic()
        for peer in peers:
            name = peer.get("name", peer.get("node"))
            if name in pending and _fresh(peer, now - started[str(name)]):
                pending.discard(str(name))
                log(f"{name}: registered with {redact_url(registry.url)}")
        if not pending or now >= deadline:
            break
        time.sleep(min(1.0, max(0.0, deadline - now)))
    cause = f"not registered with {redact_url(registry.url)} within {timeout:g} s"
    if last_error:
        cause += f" (last registry error: {last_error})"
    return dict.fromkeys(sorted(pending), cause)


def _wait_status(
    pool: Pool,
    inventory: Inventory,
    project_config: ProjectConfig,
    artifact: Path,
    started: Mapping[str, float],
    timeout: float,
    log: Log,
    poll: float = 0.5,
) -> dict[str, str]:
    """Ask each started node's ``status`` probe until it answers ``ok`` (and not ``ready: false``);
    return ``{node: last reason}`` for those that never did within ``timeout``."""
    from pytest_vpstest.fleet.probes import ProbeRunner

    runner = ProbeRunner.for_project(
        pool, inventory, project_config, artifact=artifact, default_timeout=min(10.0, timeout), grace=2.0
    )
    pending = {name: "no status answer yet" for name in started}
    deadline = time.monotonic() + timeout
    while pending:
        for name in sorted(pending):
            r = runner.status(name, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            if r.ok and r.get("ready", True) is not False:
                del pending[name]
                log(f"{name}: ready (status probe answered ok)")
            else:
                pending[name] = r.reason or "status answered ready: false"
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    return {name: f"not ready within {timeout:g} s: status probe: {why}" for name, why in pending.items()}


def deploy(
    pool: Pool,
    inventory: Inventory,
    project_config: ProjectConfig,
    artifact: Path,
    *,
    nodes: Sequence[str] | None = None,
    log: Log | None = None,
    verify_seconds: float = 3.0,
    registry_query: RegistryQuery = query_registry,
) -> DeployReport:
    """Deploy ``artifact`` to the target nodes in parallel and wait for registry registration.

    Returns the per-node report when at least half the targets deployed; otherwise raises
    :class:`DeployError` (with the report as ``.report``) naming each failed node, stage and cause.
    A ``deploy.start_command`` with an unknown placeholder raises :class:`ConfigError` before any
    node is touched.
    """
    say = log or (lambda _line: None)
    targets = target_nodes(inventory, project_config, nodes)
    if not targets:
        raise DeployError("no nodes to deploy to (deploy.nodes selects none)")
    if not (artifact.is_file() or artifact.is_dir()):
        raise DeployError(f"artifact {artifact} does not exist")
    # A bad start_command template is the config's fault, not the nodes': refuse before touching any.
    for name in targets:
        node = inventory.node(name)
        start_command(plan_node(node, project_config, artifact), inventory, project_config)
    with tempfile.TemporaryDirectory(prefix="vpstest-bundle-") as workdir:
        upload = artifact
        if plan_node(inventory.node(targets[0]), project_config, artifact).bundle:
            if not project_config.modules:
                raise ConfigError(
                    f"artifact {artifact} is a directory or an archive: name the binary inside it "
                    "as the module's binary (modules.<name>.binary, relative to the artifact's root)",
                    key="modules",
                )
            upload = pack_bundle(artifact, _installed_name(project_config), Path(workdir))
        digest = _sha256(upload)
        say(f"deploying {artifact.name} to {len(targets)} node(s): {', '.join(targets)}")
        outcomes = pool.fan_out(
            targets,
            lambda s: _deploy_one(
                s, inventory, project_config, artifact, upload, digest, verify_seconds, say
            ),
            parallelism=project_config.deploy.parallelism or len(targets),
        )
    per_node: dict[str, NodeDeploy] = {}
    started: dict[str, float] = {}
    for name, outcome in outcomes.items():
        if isinstance(outcome, NodeError):
            stage: Stage = "connect" if isinstance(outcome, UnreachableNodeError) else "start"
            per_node[name] = NodeDeploy(name, False, stage, _message(outcome))
        else:
            per_node[name] = outcome.ok
            if outcome.ok.ok:
                started[name] = outcome.started_at
    verified = pool.fan_out(
        list(started),
        lambda s: _verify_started(s, project_config, artifact, started[s.node.name], verify_seconds, say),
        parallelism=max(1, len(started)),
    )
    for name, problem in verified.items():
        if problem is not None:
            cause = _message(problem) if isinstance(problem, NodeError) else problem
            d = per_node[name]
            per_node[name] = NodeDeploy(name, False, "verify", cause, d.duration, d.previous_kept)
            del started[name]
    registry = _registry(inventory, project_config)
    readiness = project_config.deploy.readiness
    if readiness == "status" and started:
        timeout = project_config.deploy.registration_timeout_seconds
        say(f"waiting up to {timeout:g} s for {len(started)} node(s) to answer the status probe")
        waited = _wait_status(pool, inventory, project_config, artifact, started, timeout, say)
        for name, cause in sorted(waited.items()):
            d = per_node[name]
            per_node[name] = NodeDeploy(name, False, "ready", cause, d.duration, d.previous_kept)
    elif readiness == "none":
        say("deploy.readiness is none: not waiting for the nodes to be ready")
    elif registry is not None and started:
        timeout = project_config.deploy.registration_timeout_seconds
        say(f"waiting up to {timeout:g} s for {len(started)} node(s) to register with "
            f"{redact_url(registry.url)}")
        for name, cause in _wait_registration(pool, registry, started, timeout, registry_query, say).items():
            d = per_node[name]
            per_node[name] = NodeDeploy(name, False, "register", cause, d.duration, d.previous_kept)
    elif registry is None:
        say("no registry configured (inventory registry or bootstrap.registry): not waiting for registration")
    report = _report(per_node)
    for line in report.failure_lines():
        say(f"deploy failed on {line}")
    if report.succeeded * 2 < report.total:
        err = DeployError(
            f"deployed to {report.succeeded}/{report.total} nodes (fewer than 50%); failed: "
            + "; ".join(report.failure_lines())
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    say(f"deployed to {report.succeeded}/{report.total} nodes")
    return report


def _report(per_node: dict[str, NodeDeploy]) -> DeployReport:
    return DeployReport(per_node, sum(1 for d in per_node.values() if d.ok), len(per_node))


def _rollback_one(
    session: Session,
    inventory: Inventory,
    config: ProjectConfig,
    verify_seconds: float,
    log: Log,
) -> NodeDeploy:
    node = session.node
    # No artifact here: the plan names the binary after the first module or build.artifact
    # (rollback() has checked that one of them is set).
    plan = plan_node(node, config)
    began = time.monotonic()
    stage: Stage = "connect"
    try:
        manager = service_manager(session, install_path=plan.install_path, log_dir=plan.log_dir)
        stage = "stop"
        manager.stop(plan.service)
        stage = "rollback"
        if not plan.bundle and session.run(
            f"test -L {shlex.quote(plan.current)} && ! test -f {shlex.quote(plan.previous)}", timeout=30
        ).ok:  # deployed as a bundle although build.artifact does not say so (an artifact given by hand)
            plan = replace(plan, bundle=True, binary=posixpath.join(plan.current, _installed_name(config)))
        b, prev = shlex.quote(plan.binary), shlex.quote(plan.previous)
        command = f"test -f {prev} && mv -f {prev} {b}"
        if plan.bundle:
            command = f"sh -c {shlex.quote(rollback_script(plan.install_path))}"
        res = session.run(command, timeout=60)
        if not res.ok:
            what = "release" if plan.bundle else "binary"
            raise _StageFailed("rollback", f"no previous {what} {plan.previous} to restore")
        log(f"{node.name}: restored {plan.previous}")
        stage = "start"
        manager.start(plan.service, start_command(plan, inventory, config))
        stage = "verify"
        _verify_running(manager, plan.service, verify_seconds)
        log(f"{node.name}: {plan.service} running the previous binary")
    except _StageFailed as exc:
        return NodeDeploy(node.name, False, exc.stage, str(exc), time.monotonic() - began)
    except (NodeError, ConfigError) as exc:
        failed: Stage = "connect" if isinstance(exc, UnreachableNodeError) else stage
        return NodeDeploy(node.name, False, failed, _message(exc), time.monotonic() - began)
    return NodeDeploy(node.name, True, None, None, time.monotonic() - began)


def _installed_name(config: ProjectConfig) -> str:
    if config.modules:
        return config.modules[0][1].binary
    if config.build is not None and config.build.artifact:
        return posixpath.basename(config.build.artifact)
    raise ConfigError(
        "cannot tell the installed binary's name for rollback: name a module's binary or build.artifact",
        key="modules",
    )


def rollback(
    pool: Pool,
    inventory: Inventory,
    project_config: ProjectConfig,
    nodes: Sequence[str],
    *,
    log: Log | None = None,
    verify_seconds: float = 3.0,
) -> DeployReport:
    """Restore ``<binary>.prev`` on ``nodes`` and restart the service; per-node report, never raises
    for node failures (a node without a previous binary fails at stage ``rollback``)."""
    say = log or (lambda _line: None)
    _installed_name(project_config)
    outcomes = pool.fan_out(
        list(nodes),
        lambda s: _rollback_one(s, inventory, project_config, verify_seconds, say),
        parallelism=project_config.deploy.parallelism or max(1, len(nodes)),
    )
    per_node = {
        name: (o if isinstance(o, NodeDeploy) else NodeDeploy(name, False, "connect", _message(o)))
        for name, o in outcomes.items()
    }
    return _report(per_node)
