"""Deploy and rollback over real SSH to loopback sshd "nodes", with the real registry.

Each node is its own OpenSSH server with its own install path under tmp and the plain-process
service manager; the artifact is a small Python service that registers with the project's real
registry (``lab.agent`` registry on loopback), queried through a node over SSH. Proves: nodes are
deployed in parallel and register; a node whose sshd is down is reported (stage ``connect``, one
line) and skipped; a redeploy keeps ``.prev`` and rollback brings the previous version back up;
fewer than half the nodes deployed raises ``DeployError`` naming the failures; for a node without
``log_dir`` the plugin's log fetch reads the file deploy logs to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pytest_vpstest.config import DeployConfig, Inventory, ModuleConfig, ProjectConfig, RegistryAccess
from pytest_vpstest.errors import DeployError
from pytest_vpstest.fleet.deploy import deploy, rollback
from pytest_vpstest.fleet.node import plan_node
from pytest_vpstest.fleet.remote import SessionPool
from pytest_vpstest.fleet.services import ProcessManager
from pytest_vpstest.lab.agent.registry import make_server
from pytest_vpstest.plugin.fixtures import RunContext, default_fetch_logs
from tests.support.sshd import SshdHandle, free_port, sshd_factory  # noqa: F401

pytestmark = pytest.mark.lab

SERVICE = """#!/usr/bin/env python3
import json, sys, time, urllib.request
VERSION = {version!r}
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
print(VERSION, " ".join(sys.argv[1:]), flush=True)
body = json.dumps({{"name": args["--node"], "addresses": ["127.0.0.1:9000"], "version": VERSION}}).encode()
request = urllib.request.Request(
    args["--registry"].rstrip("/") + "/api/peers", data=body,
    headers={{"Content-Type": "application/json"}}, method="POST",
)
urllib.request.urlopen(request, timeout=5).read()
time.sleep(300)
"""


@pytest.fixture
def registry_url() -> Iterator[str]:
    server = make_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Fleet:
    inventory: Inventory
    config: ProjectConfig
    tmp: Path

    def artifact(self, version: str) -> Path:
        path = self.tmp / f"agent-{version}"
        path.write_text(SERVICE.format(version=version))
        return path

    def manager(self, pool: SessionPool, name: str) -> tuple[ProcessManager, str]:
        plan = plan_node(self.inventory.node(name), self.config, Path("agent"))
        return ProcessManager(
            pool.session(name), install_path=plan.install_path, log_dir=plan.log_dir
        ), plan.service


def make_fleet(
    tmp_path: Path, factory: Callable[[str], SshdHandle], registry: str, up: list[str], down: list[str]
) -> Fleet:
    handles = [factory(name) for name in up]
    nodes = [
        h.node(install_path=str(tmp_path / h.name / "opt"), log_dir=str(tmp_path / h.name / "log"))
        for h in handles
    ]
    for name in down:
        nodes.append(handles[0].node(name, port=free_port(), install_path=str(tmp_path / name / "opt")))
    inventory = handles[0].inventory(
        *nodes, registry=RegistryAccess(url=registry, via_node=handles[0].name), connect_timeout=3.0
    )
    config = ProjectConfig(
        path=None,
        project="demo",
        workspace=tmp_path,
        modules=(("agent", ModuleConfig(binary="agent")),),
        deploy=DeployConfig(
            start_command="{bin} run --node {node} --registry {registry}", registration_timeout_seconds=10
        ),
    )
    return Fleet(inventory, config, tmp_path)


def stop_all(fleet: Fleet, names: list[str]) -> None:
    with SessionPool(fleet.inventory) as pool:
        for name in names:
            manager, service = fleet.manager(pool, name)
            manager.stop(service)


def test_deploy_skips_a_down_node_then_rollback(
    tmp_path: Path,
    sshd_factory: Callable[[str], SshdHandle],  # noqa: F811
    registry_url: str,
) -> None:
    fleet = make_fleet(tmp_path, sshd_factory, registry_url, ["node-a", "node-b"], ["node-down"])
    lines: list[str] = []
    try:
        with SessionPool(fleet.inventory) as pool:
            report = deploy(
                pool, fleet.inventory, fleet.config, fleet.artifact("v1"), log=lines.append, verify_seconds=1
            )
            assert (report.succeeded, report.total) == (2, 3)
            down = report.per_node["node-down"]
            assert down.stage_failed == "connect" and "connection refused" in (down.error or "")
            assert "\n" not in (down.error or "")
            assert any("node-a: registered" in line for line in lines)

            report2 = deploy(
                pool,
                fleet.inventory,
                fleet.config,
                fleet.artifact("v2"),
                nodes=["node-a", "node-b"],
                verify_seconds=1,
            )
            assert report2.succeeded == 2 and report2.per_node["node-a"].previous_kept
            manager, service = fleet.manager(pool, "node-a")
            assert manager.logs(service).splitlines()[-1].startswith("v2 run --node node-a")

            back = rollback(pool, fleet.inventory, fleet.config, ["node-a", "node-down"], verify_seconds=1)
            assert back.per_node["node-a"].ok
            assert back.per_node["node-down"].stage_failed == "connect"
            assert manager.logs(service).splitlines()[-1].startswith("v1 run --node node-a")
            assert manager.status(service).running
        # A fresh connection still finds the services that the closed sessions started.
        with SessionPool(fleet.inventory) as pool:
            for name in ("node-a", "node-b"):
                manager, service = fleet.manager(pool, name)
                assert manager.status(service).running
    finally:
        stop_all(fleet, ["node-a", "node-b"])


def test_fewer_than_half_deployed_raises(
    tmp_path: Path,
    sshd_factory: Callable[[str], SshdHandle],  # noqa: F811
    registry_url: str,
) -> None:
    fleet = make_fleet(tmp_path, sshd_factory, registry_url, ["node-a"], ["down-1", "down-2"])
    try:
        with SessionPool(fleet.inventory) as pool, pytest.raises(DeployError) as info:
            deploy(pool, fleet.inventory, fleet.config, fleet.artifact("v1"), verify_seconds=0.5)
        text = str(info.value)
        assert text.startswith("deployed to 1/3 nodes (fewer than 50%)")
        assert "down-1: connect: " in text and "down-2: connect: " in text and "\n" not in text
    finally:
        stop_all(fleet, ["node-a"])


def test_process_node_without_log_dir_deploy_and_plugin_log_fetch_agree(
    tmp_path: Path,
    sshd_factory: Callable[[str], SshdHandle],  # noqa: F811
    registry_url: str,
) -> None:
    """Over real SSH: deploy logs to ``<install>/logs/<svc>.log`` and the plugin's fetch reads it."""
    made = make_fleet(tmp_path, sshd_factory, registry_url, ["node-p"], [])
    node = replace(made.inventory.node("node-p"), log_dir=None)
    inventory = replace(made.inventory, nodes=(node,))
    fleet = Fleet(inventory, made.config, tmp_path)
    run = RunContext(
        config_path=tmp_path / "vpstest.yaml",
        project_config=fleet.config,
        inventory=inventory,
        inventory_path=None,
        run_id="r1",
        state_dir=tmp_path / "state",
        project="demo",
    )
    try:
        with SessionPool(inventory) as pool:
            report = deploy(pool, inventory, fleet.config, fleet.artifact("v7"), verify_seconds=0.5)
            assert report.per_node["node-p"].ok
            fetched = default_fetch_logs(run, pool, "node-p")
        written = tmp_path / "node-p" / "opt" / "logs" / "vpstest-agent.log"
        assert "v7 run --node node-p" in written.read_text()
        assert "v7 run --node node-p" in fetched
    finally:
        stop_all(fleet, ["node-p"])


def test_a_multi_file_artifact_over_real_ssh_installs_registers_and_rolls_back(
    tmp_path: Path,
    sshd_factory: Callable[[str], SshdHandle],  # noqa: F811
    registry_url: str,
) -> None:
    """A directory, then a .tar.gz, deployed over real SSH: {bin} names the module's binary inside
    the release ``current`` points at, the service reads a file beside it, rollback goes back."""
    import os
    import tarfile

    made = make_fleet(tmp_path, sshd_factory, registry_url, ["node-a", "node-b"], [])
    config = replace(made.config, modules=(("agent", ModuleConfig(binary="bin/agent")),))
    fleet = Fleet(made.inventory, config, tmp_path)

    def release(version: str) -> Path:
        root = tmp_path / f"release-{version}"
        (root / "bin").mkdir(parents=True)
        (root / "etc").mkdir()
        (root / "etc" / "greeting").write_text(f"hello from {version}\n")
        # The service prints the file beside its binary: the whole tree arrived, under {bin}'s release.
        service = SERVICE.format(version=version).replace(
            "print(VERSION,",
            "import pathlib; print(pathlib.Path(sys.argv[0]).resolve().parent.parent.joinpath("
            "'etc', 'greeting').read_text().strip(), VERSION,",
        )
        (root / "bin" / "agent").write_text(service)
        return root

    archive = tmp_path / "agent-v2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(release("v2"), arcname=".")
    try:
        with SessionPool(fleet.inventory) as pool:
            first = deploy(pool, fleet.inventory, config, release("v1"), verify_seconds=1)
            assert first.succeeded == 2
            plan = plan_node(fleet.inventory.node("node-a"), config, archive)
            assert plan.binary == str(tmp_path / "node-a" / "opt" / "current" / "bin" / "agent")
            manager, service = fleet.manager(pool, "node-a")
            assert manager.logs(service).splitlines()[-1].startswith("hello from v1 v1 run --node node-a")
            second = deploy(pool, fleet.inventory, config, archive, verify_seconds=1)
            assert second.succeeded == 2 and second.per_node["node-a"].previous_kept
            assert manager.logs(service).splitlines()[-1].startswith("hello from v2 v2 run --node node-a")
            current = os.readlink(tmp_path / "node-a" / "opt" / "current")
            back = rollback(pool, fleet.inventory, config, ["node-a"], verify_seconds=1)
            assert back.per_node["node-a"].ok, back.per_node["node-a"].error
            assert manager.logs(service).splitlines()[-1].startswith("hello from v1 v1 run --node node-a")
            assert not (tmp_path / "node-a" / "opt" / current).exists()
    finally:
        stop_all(fleet, ["node-a", "node-b"])
