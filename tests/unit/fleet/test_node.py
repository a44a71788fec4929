"""One plan per node: the rules of ``plan_node``, and deploy and the log readers agreeing on paths.

The agreement test is the case that once went wrong: a ``service_manager: process`` node with no
``log_dir`` in the inventory. Deploy writes the service's output to ``<install>/logs/<svc>.log``;
the plugin's default log fetch (the evidence) must read that file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pytest_vpstest.config import (
    BuildConfig,
    DeployConfig,
    Inventory,
    ModuleConfig,
    Node,
    ProjectConfig,
)
from pytest_vpstest.fleet.deploy import deploy
from pytest_vpstest.fleet.node import binary_name, plan_node
from pytest_vpstest.fleet.remote import SessionPool
from pytest_vpstest.fleet.services import ProcessManager
from pytest_vpstest.plugin.fixtures import RunContext, default_fetch_logs
from tests.support.fake_session import LocalSession, local_session_factory

BARE = ProjectConfig(path=None, project="p", workspace=Path("."))


def test_plan_defaults_come_from_the_project_and_the_node_overrides_them() -> None:
    plain = plan_node(Node("a", "10.0.0.1"), BARE)
    assert (plain.install_path, plain.log_dir, plain.binary, plain.service, plain.p2p_address) == (
        "/opt/vpstest/",
        "/opt/vpstest/logs",
        "/opt/vpstest/p",
        "vpstest-p",
        "10.0.0.1",
    )
    own = Node(
        "b", "10.0.0.2", role="nat", install_path="/srv/b", log_dir="/var/log/b", p2p_address="198.19.1.2"
    )
    plan = plan_node(own, replace(BARE, deploy=DeployConfig(install_path="/x/", service_prefix="svc")))
    assert (plan.install_path, plan.log_dir, plan.binary, plan.service, plan.role) == (
        "/srv/b",
        "/var/log/b",
        "/srv/b/p",
        "svc-p",
        "nat",
    )
    assert plan.previous == "/srv/b/p.prev"
    assert plan.placeholders() == {
        "bin": "/srv/b/p",
        "node": "b",
        "install_path": "/srv/b",
        "log_dir": "/var/log/b",
        "p2p_address": "198.19.1.2",
        "role": "nat",
    }


def test_binary_name_prefers_module_then_artifact_then_build_artifact_then_project() -> None:
    built = replace(BARE, build=BuildConfig("make", artifact="dist/agent.pyz"))
    module = replace(built, modules=(("quic", ModuleConfig("quic-test")),))
    assert binary_name(module, Path("out/other")) == "quic-test"
    assert binary_name(built, Path("out/other")) == "other"
    assert binary_name(built) == "agent.pyz"
    assert binary_name(BARE) == "p"
    assert plan_node(Node("a", "h"), module).service == "vpstest-quic"


# The stand-in service: prints a marker line (to the process manager's log file), then runs.
SERVICE = '#!/bin/sh\necho "marker-{tag} $*"\nexec sleep 300\n'


def test_process_node_without_log_dir_deploy_and_log_fetch_agree(tmp_path: Path) -> None:
    node = Node(name="n1", host="127.0.0.1", service_manager="process", install_path=str(tmp_path / "opt"))
    assert node.log_dir is None
    inventory = Inventory(nodes=(node,))
    config = ProjectConfig(
        path=None,
        project="demo",
        workspace=tmp_path,
        modules=(("agent", ModuleConfig(binary="agent-bin")),),
        deploy=DeployConfig(start_command="{bin} run --node {node}"),
    )
    artifact = tmp_path / "agent-bin"
    artifact.write_text(SERVICE.format(tag="7f3a"))
    run = RunContext(
        config_path=tmp_path / "vpstest.yaml",
        project_config=config,
        inventory=inventory,
        inventory_path=None,
        run_id="r1",
        state_dir=tmp_path / "state",
        project="demo",
    )
    plan = plan_node(node, config, artifact)
    try:
        with SessionPool(inventory, session_factory=local_session_factory()) as pool:
            report = deploy(pool, inventory, config, artifact, verify_seconds=0.1)
            assert report.per_node["n1"].ok
            written = tmp_path / "opt" / "logs" / "vpstest-agent.log"
            assert written == Path(plan.log_dir, f"{plan.service}.log")
            assert "marker-7f3a run --node n1" in written.read_text()
            fetched = default_fetch_logs(run, pool, "n1")
        assert "marker-7f3a run --node n1" in fetched
    finally:
        ProcessManager(
            LocalSession(node, inventory), install_path=plan.install_path, log_dir=plan.log_dir
        ).stop(plan.service)
