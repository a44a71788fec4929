"""The agent's build: one executable zipapp holding the package under its own top-level name, built
from a copied source tree too; it runs with nothing but the system Python (no virtualenv on PATH),
defaults its home to its own directory, and two agents started from it connect and gossip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_vpstest.lab.agent import build
from tests.unit.lab.test_agent_nodes import Cluster, probe

SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
AGENT_SOURCE = Path(build.__file__).parent


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.build_zipapp(AGENT_SOURCE, tmp_path_factory.mktemp("dist") / "agent.pyz")


def test_zipapp_layout(pyz: Path) -> None:
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(pyz, os.X_OK)
    names = set(zipfile.ZipFile(pyz).namelist())
    assert "__main__.py" in names and "vpstest_agent/cli.py" in names and "vpstest_agent/node.py" in names
    files = {n for n in names if not n.endswith("/")}
    sources = {n for n in files if n.endswith(".py")}
    assert all(n == "__main__.py" or n.startswith("vpstest_agent/") for n in sources)
    # Every module ships compiled too, and nothing else is packed.
    assert files == sources | {n + "c" for n in sources}


def test_zipapp_modules_load_from_the_shipped_bytecode(pyz: Path) -> None:
    """The building interpreter imports the agent from the packed .pyc, not by compiling sources."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import vpstest_agent.cli, vpstest_agent.probe as p; "
        "print(vpstest_agent.cli.__file__, p.__file__)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(pyz)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert all(path.endswith(".pyc") for path in done.stdout.split()), done.stdout


def test_build_from_a_copied_source_tree(tmp_path: Path) -> None:
    copy = tmp_path / "workspace" / "agent"
    shutil.copytree(AGENT_SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, str(copy / "build.py"), str(tmp_path / "out.pyz"), "--source", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert zipfile.ZipFile(tmp_path / "out.pyz").testzip() is None
    assert build.main([str(tmp_path / "x.pyz"), "--source", str(tmp_path)]) == 1  # not the agent package


def _system_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "VPSTEST_AGENT_HOME")
    }
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no system python3 outside the virtualenv")
def test_zipapp_runs_with_the_system_python_and_defaults_home_to_its_directory(
    pyz: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(pyz), "--version"], capture_output=True, text=True, env=_system_env(), timeout=30
    )
    assert done.returncode == 0 and done.stdout.strip().startswith("agent ")
    answer = subprocess.run(
        [str(pyz), "probe", "status", "--json"],
        capture_output=True,
        text=True,
        env=_system_env(),
        cwd=tmp_path,
        timeout=30,
    )
    assert answer.returncode == 0
    assert f"no control socket at {pyz.parent}/run/agent.sock" in answer.stdout


@pytest.fixture
def pyz_cluster(pyz: Path) -> Iterator[Cluster]:
    assert SYSTEM_PYTHON is not None
    cluster = Cluster([SYSTEM_PYTHON, str(pyz)], base=75)  # the system Python: no virtualenv packages
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no system python3 outside the virtualenv")
def test_agents_from_the_zipapp_connect_and_gossip(pyz_cluster: Cluster) -> None:
    for name in ("z1", "z2"):
        pyz_cluster.start_node(name)
    pyz_cluster.wait_mesh()
    answer = pyz_cluster.probe("z1", "connect", "--peer", "z2", "--method", "holepunch", "--timeout", "5")
    assert (answer["ok"], answer["path"]) == (True, "direct")
    message_id = pyz_cluster.probe("z2", "publish", "--topic", "t")["message_id"]
    pyz_cluster.wait_until(
        lambda: probe(pyz_cluster.agent, pyz_cluster.homes["z1"], "received", "--id", message_id)["received"],
        "gossip from the zipapp agent",
    )
