"""The deployment flow through the session seam, with sessions that run commands locally.

Proves: the service is stopped before the upload; the binary lands atomically with +x and the
previous one kept as ``.prev``; the start command gets shell-quoted values; a crash right after
start fails ``verify`` with the last log line; nodes that never (freshly) register fail
``register``; unreachable nodes and failed uploads are reported and skipped; fewer than half the
nodes raises ``DeployError`` naming them; rollback restores ``.prev``; target selection.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.config import DeployConfig, Inventory, ModuleConfig, Node, ProjectConfig, RegistryAccess
from pytest_vpstest.errors import ConfigError, DeployError, NodeError
from pytest_vpstest.fleet.deploy import deploy, registered_names, rollback, target_nodes
from pytest_vpstest.fleet.node import plan_node
from pytest_vpstest.fleet.remote import SessionPool
from pytest_vpstest.fleet.services import ProcessManager
from tests.support.fake_session import LocalSession, local_session_factory, unreachable

# The stand-in service: logs its version and arguments, registers by touching a file in the
# "registry" directory (unless told not to), then runs until stopped. "crash" exits at once.
SERVICE = """#!/bin/sh
echo "{version} $*"
node=$3 registry=$5
case "$node" in *crash*) echo "fatal: cannot bind" >&2; exit 1;; esac
case "$node" in *silent*) ;; *) touch "$registry/$node";; esac
exec sleep 300
"""


def write_artifact(path: Path, version: str) -> Path:
    path.write_text(SERVICE.format(version=version))
    return path


def files_registry(pool: SessionPool, registry: RegistryAccess) -> list[dict[str, Any]]:
    return [{"name": p.name, "age_seconds": 0.0} for p in Path(registry.url).iterdir()]


class World:
    def __init__(self, tmp_path: Path, names: list[str]) -> None:
        self.tmp = tmp_path
        self.registry_dir = tmp_path / "registry"
        self.registry_dir.mkdir()
        self.nodes = tuple(
            Node(name=n, host="127.0.0.1", service_manager="process", install_path=str(tmp_path / n / "opt"))
            for n in names
        )
        self.inventory = Inventory(nodes=self.nodes, registry=RegistryAccess(url=str(self.registry_dir)))
        self.config = ProjectConfig(
            path=None,
            project="demo",
            workspace=tmp_path,
            modules=(("agent", ModuleConfig(binary="agent-bin")),),
            deploy=DeployConfig(
                start_command="{bin} run --node {node} --registry {registry}",
                registration_timeout_seconds=0.8,
            ),
        )

    def plan(self, name: str) -> Any:
        return plan_node(self.inventory.node(name), self.config, Path("agent-bin"))

    def cleanup(self) -> None:
        for node in self.nodes:
            plan = plan_node(node, self.config, Path("agent-bin"))
            ProcessManager(
                LocalSession(node, self.inventory), install_path=plan.install_path, log_dir=plan.log_dir
            ).stop(plan.service)


def run_deploy(world: World, pool: SessionPool, artifact: Path, **kwargs: Any) -> Any:
    kwargs.setdefault("registry_query", files_registry)
    kwargs.setdefault("verify_seconds", 0.1)
    return deploy(pool, world.inventory, world.config, artifact, **kwargs)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, ["n1", "n2", "n3"])
    yield w
    w.cleanup()


def test_deploy_installs_starts_and_registers_every_node(world: World) -> None:
    artifact = write_artifact(world.tmp / "v1", "v1")
    lines: list[str] = []
    factory = local_session_factory()
    with SessionPool(world.inventory, session_factory=factory) as pool:
        report = run_deploy(world, pool, artifact, log=lines.append, verify_seconds=0.2)
    assert (report.succeeded, report.total) == (3, 3)
    for name in ("n1", "n2", "n3"):
        d = report.per_node[name]
        assert d.ok and d.stage_failed is None and not d.previous_kept
        plan = world.plan(name)
        assert Path(plan.binary).read_text() == artifact.read_text()
        assert os.access(plan.binary, os.X_OK)
        assert not Path(plan.previous).exists()
        log = Path(plan.log_dir, f"{plan.service}.log").read_text()
        assert f"v1 run --node {name} --registry {world.registry_dir}" in log
        # Only the installed binary remains: the upload's temp file was moved, not copied.
        assert sorted(p.name for p in Path(plan.install_path).iterdir()) == ["agent-bin", "logs", "run"]
        ops = factory.sessions[name].ops  # type: ignore[attr-defined]
        put_at = next(i for i, (kind, _) in enumerate(ops) if kind == "put")
        stop_at = next(i for i, (kind, cmd) in enumerate(ops) if kind == "run" and "kill -TERM" in cmd)
        assert stop_at < put_at
    assert any("registered" in line for line in lines)


def test_redeploy_keeps_previous_and_replaces_the_running_service(world: World) -> None:
    with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
        run_deploy(world, pool, write_artifact(world.tmp / "v1", "v1"), verify_seconds=0.1)
        plan = world.plan("n1")
        manager = ProcessManager(pool.session("n1"), install_path=plan.install_path, log_dir=plan.log_dir)
        first_pid = manager.status(plan.service).pid
        report = run_deploy(world, pool, write_artifact(world.tmp / "v2", "v2"), verify_seconds=0.1)
        assert report.per_node["n1"].previous_kept
        assert "v1" in Path(plan.previous).read_text() and "v2" in Path(plan.binary).read_text()
        second = manager.status(plan.service)
        assert second.running and second.pid != first_pid
        assert first_pid is not None and not _alive(first_pid)

        back = rollback(pool, world.inventory, world.config, ["n1", "n2"], verify_seconds=0.1)
        assert (back.succeeded, back.total) == (2, 2)
        assert "v1" in Path(plan.binary).read_text() and not Path(plan.previous).exists()
        assert manager.logs(plan.service).splitlines()[-1].startswith("v1 run")
        again = rollback(pool, world.inventory, world.config, ["n1"], verify_seconds=0.1)
        assert again.per_node["n1"].stage_failed == "rollback"
        assert "no previous binary" in (again.per_node["n1"].error or "")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_unreachable_and_failed_upload_are_reported_and_skipped(tmp_path: Path) -> None:
    world = World(tmp_path, ["n1", "n2", "n3", "n4"])

    def fail(node: str, op: str, arg: str) -> Exception | None:
        if node == "n3" and op == "connect":
            return unreachable("n3")
        if node == "n4" and op == "put":
            return NodeError("n4", "upload failed: no space left on device")
        return None

    try:
        with SessionPool(world.inventory, session_factory=local_session_factory(fail)) as pool:
            report = run_deploy(world, pool, write_artifact(tmp_path / "v1", "v1"), verify_seconds=0.1)
    finally:
        world.cleanup()
    assert (report.succeeded, report.total) == (2, 4)
    assert report.failed_nodes == ("n3", "n4")
    assert report.per_node["n3"].stage_failed == "connect"
    assert "connection refused" in (report.per_node["n3"].error or "")
    assert report.per_node["n4"].stage_failed == "upload"
    assert "no space left" in (report.per_node["n4"].error or "")


def test_fewer_than_half_deployed_raises_naming_the_failures(world: World) -> None:
    def fail(node: str, op: str, arg: str) -> Exception | None:
        return unreachable(node) if node in ("n1", "n2") and op == "connect" else None

    with (
        SessionPool(world.inventory, session_factory=local_session_factory(fail)) as pool,
        pytest.raises(DeployError) as info,
    ):
        run_deploy(world, pool, write_artifact(world.tmp / "v1", "v1"), verify_seconds=0.1)
    text = str(info.value)
    assert text.startswith("deployed to 1/3 nodes (fewer than 50%)")
    assert "n1: connect: " in text and "n2: connect: " in text and "\n" not in text
    assert info.value.report.succeeded_nodes == ("n3",)  # type: ignore[attr-defined]


def test_crash_after_start_fails_verify_with_the_last_log_line(tmp_path: Path) -> None:
    world = World(tmp_path, ["ok-1", "crash-2", "ok-3"])
    try:
        with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
            report = run_deploy(world, pool, write_artifact(tmp_path / "v1", "v1"), verify_seconds=0.5)
    finally:
        world.cleanup()
    crashed = report.per_node["crash-2"]
    assert not crashed.ok and crashed.stage_failed == "verify"
    assert "fatal: cannot bind" in (crashed.error or "")
    assert report.succeeded == 2


def test_nodes_that_never_register_fail_at_register(tmp_path: Path) -> None:
    world = World(tmp_path, ["a", "silent-b", "c"])
    try:
        with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
            report = run_deploy(
                world,
                pool,
                write_artifact(tmp_path / "v1", "v1"),
                verify_seconds=0.1,
                registry_query=files_registry,
            )
    finally:
        world.cleanup()
    d = report.per_node["silent-b"]
    assert d.stage_failed == "register" and "within 0.8 s" in (d.error or "")
    assert report.succeeded_nodes == ("a", "c")


def test_stale_registry_entries_do_not_count(world: World) -> None:
    def stale(pool: SessionPool, registry: RegistryAccess) -> list[dict[str, Any]]:
        return [{"name": n, "age_seconds": 500.0 if n == "n2" else 0.0} for n in ("n1", "n2", "n3")]

    with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
        report = run_deploy(
            world,
            pool,
            write_artifact(world.tmp / "v1", "v1"),
            verify_seconds=0.1,
            registry_query=stale,
        )
    assert report.failed_nodes == ("n2",)


def test_registry_errors_are_named_in_the_cause(world: World) -> None:
    def down(pool: SessionPool, registry: RegistryAccess) -> list[dict[str, Any]]:
        raise NodeError("registry", "registry query failed: connection refused")

    with (
        SessionPool(world.inventory, session_factory=local_session_factory()) as pool,
        pytest.raises(
            DeployError, match="last registry error: registry: registry query failed: connection refused"
        ),
    ):
        run_deploy(
            world,
            pool,
            write_artifact(world.tmp / "v1", "v1"),
            verify_seconds=0.1,
            registry_query=down,
        )


def test_hostile_node_values_reach_the_service_literally(tmp_path: Path) -> None:
    world = World(tmp_path, ["n1"])
    sentinel = tmp_path / "pwned"
    hostile = f"$(touch {sentinel}); `touch {sentinel}` '\""
    world.inventory = replace(world.inventory, nodes=(replace(world.nodes[0], p2p_address=hostile),))
    world.config = replace(
        world.config,
        deploy=replace(
            world.config.deploy,
            start_command="{bin} run --node {node} --registry {registry} --bind {p2p_address}",
        ),
    )
    try:
        with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
            report = run_deploy(world, pool, write_artifact(tmp_path / "v1", "v1"), verify_seconds=0.1)
    finally:
        world.cleanup()
    assert report.succeeded == 1
    plan = world.plan("n1")
    assert f"--bind {hostile}" in Path(plan.log_dir, f"{plan.service}.log").read_text()
    assert not sentinel.exists()


def test_target_selection(tmp_path: Path) -> None:
    nodes = (
        Node(name="reg", host="h", role="registry"),
        Node(name="boot", host="h", role="bootstrap"),
        Node(name="t1", host="h", install_path="/srv/t1/", log_dir="/var/log/t1"),
    )
    inv = Inventory(nodes=nodes)
    cfg = ProjectConfig(path=None, project="p", workspace=tmp_path)
    assert target_nodes(inv, cfg) == ["boot", "t1"]
    assert target_nodes(inv, replace(cfg, deploy=DeployConfig(nodes=("t1", "reg")))) == ["t1", "reg"]
    assert target_nodes(inv, cfg, ["t1"]) == ["t1"]
    with pytest.raises(ConfigError, match="not in the inventory: ghost"):
        target_nodes(inv, cfg, ["ghost"])
    plan = plan_node(nodes[2], cfg, Path("dist/agent.pyz"))
    assert (plan.install_path, plan.log_dir, plan.binary, plan.service) == (
        "/srv/t1/",
        "/var/log/t1",
        "/srv/t1/agent.pyz",
        "vpstest-p",
    )
    default = plan_node(nodes[1], cfg, Path("agent.pyz"))
    assert (default.install_path, default.log_dir) == ("/opt/vpstest/", "/opt/vpstest/logs")
    assert registered_names([{"name": "a"}, {"node": "b"}, {"id": 3}]) == {"a", "b"}


def test_no_targets_or_missing_artifact_raise(world: World) -> None:
    with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
        with pytest.raises(DeployError, match="no nodes"):
            run_deploy(world, pool, world.tmp / "x", nodes=[])
        with pytest.raises(DeployError, match="does not exist"):
            run_deploy(world, pool, world.tmp / "missing")


def test_bad_start_command_is_refused_before_any_node_is_touched(world: World) -> None:
    world.config = replace(
        world.config, deploy=replace(world.config.deploy, start_command="{bin} --peer {peer}")
    )
    factory = local_session_factory()
    artifact = write_artifact(world.tmp / "v1", "v1")
    with (
        SessionPool(world.inventory, session_factory=factory) as pool,
        pytest.raises(ConfigError, match=r"unknown placeholder \{peer\}"),
    ):
        run_deploy(world, pool, artifact)
    assert factory.sessions == {}  # type: ignore[attr-defined]


class _TruncatingSession(LocalSession):
    """Uploads arrive cut short (a full disk, a broken transfer)."""

    def put(self, local: Path | str, remote: str) -> None:
        super().put(local, remote)
        with open(remote, "r+b") as f:
            f.truncate(10)


def test_corrupt_upload_fails_and_leaves_no_temp_file(world: World) -> None:
    def factory(node: Node, inventory: Inventory) -> LocalSession:
        cls = _TruncatingSession if node.name == "n2" else LocalSession
        return cls(node, inventory)

    with SessionPool(world.inventory, session_factory=factory) as pool:
        report = run_deploy(world, pool, write_artifact(world.tmp / "v1", "v1"))
    bad = report.per_node["n2"]
    assert (bad.stage_failed, bad.error) == ("upload", "uploaded file's SHA-256 differs from v1's")
    # No temp file left: only the log directory and run/ holding the owner marker.
    install = Path(world.plan("n2").install_path)
    assert sorted(p.name for p in install.iterdir()) == ["logs", "run"]
    assert [p.name for p in (install / "run").iterdir()] == [f"{world.plan('n2').service}.owner"]
    assert report.succeeded == 2


# A node of the user's own kind: no registry, readiness from its status probe (a file it writes
# once started; "slow" nodes say ready: false, "silent" ones never answer).
STATUS_SERVICE = """#!/bin/sh
node=$3
dir=$(dirname "$0")
case "$node" in
  *silent*) ;;
  *slow*) echo '{"ok": true, "node": "'$node'", "addresses": [], "ready": false}' > "$dir/status.json" ;;
  *) echo '{"ok": true, "node": "'$node'", "addresses": [], "ready": true}' > "$dir/status.json" ;;
esac
exec sleep 300
"""


def test_readiness_by_status_probe_needs_no_registry(tmp_path: Path) -> None:
    world = World(tmp_path, ["a", "slow-b", "silent-c", "d"])
    world.inventory = replace(world.inventory, registry=None)
    world.config = replace(
        world.config,
        deploy=replace(world.config.deploy, readiness="status", start_command="{bin} run --node {node}"),
        probes=replace(world.config.probes, status="cat {install_path}/status.json"),
    )
    artifact = tmp_path / "v1"
    artifact.write_text(STATUS_SERVICE)
    lines: list[str] = []
    try:
        with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
            report = run_deploy(world, pool, artifact, log=lines.append, registry_query=None)
    finally:
        world.cleanup()
    assert report.succeeded_nodes == ("a", "d")
    slow, silent = report.per_node["slow-b"], report.per_node["silent-c"]
    assert slow.stage_failed == "ready" and "status answered ready: false" in (slow.error or "")
    assert silent.stage_failed == "ready" and "status probe: exit 1, no output" in (silent.error or "")
    assert any("a: ready (status probe answered ok)" in line for line in lines)


def test_readiness_none_waits_for_nothing(world: World) -> None:
    world.config = replace(world.config, deploy=replace(world.config.deploy, readiness="none"))

    def never(pool: SessionPool, registry: RegistryAccess) -> list[dict[str, Any]]:
        raise AssertionError("the registry must not be asked")

    with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
        report = run_deploy(world, pool, write_artifact(world.tmp / "v1", "v1"), registry_query=never)
    assert report.succeeded == 3


def test_another_projects_running_service_of_the_same_name_is_not_replaced(world: World) -> None:
    """Two workspaces whose services share a name (as every demo workspace's does) on shared nodes."""
    with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
        first = run_deploy(world, pool, write_artifact(world.tmp / "v1", "v1"))
        assert first.succeeded == 3
        plan = world.plan("n1")
        manager = ProcessManager(pool.session("n1"), install_path=plan.install_path, log_dir=plan.log_dir)
        running = manager.status(plan.service).pid
        other = World.__new__(World)
        other.__dict__.update(world.__dict__)
        other.config = replace(world.config, workspace=world.tmp / "other-checkout")
        with pytest.raises(DeployError) as info:
            run_deploy(other, pool, write_artifact(world.tmp / "v2", "v2"))
        refused = info.value.report.per_node["n1"]  # type: ignore[attr-defined]
        assert refused.stage_failed == "stop"
        assert "running for another project (demo on " in (refused.error or "")
        assert "deploy.service_prefix" in (refused.error or "")
        assert manager.status(plan.service).pid == running  # the other project's agent was left alone
        assert "v1" in Path(plan.binary).read_text()
        # The same project deploys again as before; once the other's service is stopped, taking over is fine.
        assert run_deploy(world, pool, write_artifact(world.tmp / "v3", "v3")).succeeded == 3
        for name in ("n1", "n2", "n3"):
            p = world.plan(name)
            ProcessManager(pool.session(name), install_path=p.install_path, log_dir=p.log_dir).stop(p.service)
        assert run_deploy(other, pool, write_artifact(world.tmp / "v4", "v4")).succeeded == 3


class _CountingPool(SessionPool):
    """A pool that records the width of every fan-out."""

    widths: list[int]

    def fan_out(self, names: Any, fn: Any, *, parallelism: int = 8) -> Any:
        self.widths = [*getattr(self, "widths", []), parallelism]
        return super().fan_out(names, fn, parallelism=parallelism)


def test_by_default_every_target_is_deployed_at_once(tmp_path: Path) -> None:
    assert DeployConfig().parallelism is None
    world = World(tmp_path, [f"n{i}" for i in range(1, 10)])
    try:
        with _CountingPool(world.inventory, session_factory=local_session_factory()) as pool:
            report = run_deploy(world, pool, write_artifact(tmp_path / "v1", "v1"))
    finally:
        world.cleanup()
    assert report.succeeded == 9
    assert pool.widths[:2] == [9, 9]  # the deploy itself, then the verify windows


def test_verify_windows_overlap_even_one_node_at_a_time(tmp_path: Path) -> None:
    """With parallelism 1 every node is stopped, uploaded and started in turn, but none is watched
    until all have started: the verify windows run together instead of one after another."""
    world = World(tmp_path, ["n1", "n2", "n3"])
    world.config = replace(world.config, deploy=replace(world.config.deploy, parallelism=1))
    lines: list[str] = []
    try:
        with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
            report = run_deploy(
                world, pool, write_artifact(tmp_path / "v1", "v1"), log=lines.append, verify_seconds=0.3
            )
    finally:
        world.cleanup()
    assert report.succeeded == 3
    started = [i for i, line in enumerate(lines) if " started " in line]
    running = [i for i, line in enumerate(lines) if line.endswith(" running")]
    assert len(started) == len(running) == 3
    assert max(started) < min(running), lines
