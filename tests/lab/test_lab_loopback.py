"""The loopback flavour: one real sshd per node on its own 127.x address and port, running as the
current user; per-node install and log directories; no NAT; ``lab down`` stops everything. Also
brought up and used by a non-root user when the machine has one (via ``runuser``)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from pytest_vpstest import lab as lab_api
from pytest_vpstest.lab import netns
from tests.lab.conftest import Lab, lab_fixture, worker_prefix

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="/usr/sbin/sshd is not installed"),
]

lab = lab_fixture("vtf", "small", flavour="loopback")
DOWN_PREFIX = worker_prefix("vtg")
USER_PREFIX = worker_prefix("vth")


def test_every_node_answers_over_ssh_as_the_current_user(lab: Lab) -> None:
    names = [n.name for n in lab.record.nodes]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda n: lab.ssh(n, "id -un; echo $SSH_CONNECTION").stdout.split(), names))
    for name, (user, *conn) in zip(names, answers, strict=True):
        node = lab.node(name)
        assert user == pwd.getpwuid(os.getuid()).pw_name
        assert conn[2:] == [node.host, str(node.port)]


def test_inventory_is_loopback_without_nat(lab: Lab) -> None:
    doc = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    assert doc["lab"] == "loopback"
    paths = set()
    for n in doc["nodes"]:
        assert n["nat"] == "none"
        assert n["host"].startswith("127.") and n["host"] == n["p2p_address"]
        assert n["port"] != 22
        assert Path(n["install_path"]).is_dir() and Path(n["log_dir"]).is_dir()
        assert Path(n["install_path"]).is_relative_to(lab.dir)
        paths.add(n["install_path"])
    assert len(paths) == len(doc["nodes"]), "each node has its own install path"


def test_status_reports_every_sshd_up(lab: Lab) -> None:
    record, nodes = lab_api.status(lab.record.prefix, lab.dir)
    assert record.flavour == "loopback"
    assert all(n.sshd_up for n in nodes) and not any(n.agent_up for n in nodes)


def test_registry_serves_health_on_its_loopback_address(lab: Lab) -> None:
    registry = next(s for s in lab.record.services if s.kind == "registry")
    with urllib.request.urlopen(f"http://{registry.bind}/health", timeout=5) as r:
        assert r.status == 200


def test_down_stops_every_sshd(tmp_path: Path) -> None:
    lab_api.up("small", "loopback", DOWN_PREFIX, tmp_path)
    pids = [netns.read_pid(tmp_path / "run" / f"sshd-{n}.pid") for n in ("saorsa-1", "saorsa-7")]
    assert all(p is not None and netns.pid_alive(p) for p in pids)
    lab_api.down(DOWN_PREFIX, tmp_path)
    assert not any(p is not None and netns.pid_alive(p) for p in pids)
    assert netns.lab_processes(tmp_path) == []
    assert lab_api.down(DOWN_PREFIX, tmp_path) == []


def _unprivileged_user() -> pwd.struct_passwd | None:
    for entry in pwd.getpwall():
        if entry.pw_uid >= 1000 and entry.pw_shell.endswith(("sh", "bash")) and Path(entry.pw_dir).is_dir():
            return entry
    return None


def test_a_non_root_user_runs_the_loopback_lab() -> None:
    user = _unprivileged_user()
    python = "/usr/bin/python3"
    if os.geteuid() != 0 or user is None or shutil.which("runuser") is None:
        pytest.skip("needs root, runuser and an unprivileged login user to switch to")
    if subprocess.run([python, "-c", "import yaml"], capture_output=True).returncode != 0:
        pytest.skip(f"{python} cannot import yaml (the unprivileged user cannot use this venv)")
    repo = Path(__file__).resolve().parents[2]
    # pytest's own temp directories are private to root; this one belongs to the user.
    state = Path(tempfile.mkdtemp(prefix="vpstest-user-lab-"))
    os.chown(state, user.pw_uid, user.pw_gid)
    env = ["env", f"HOME={user.pw_dir}", f"XDG_STATE_HOME={state}", f"PYTHONPATH={repo}"]
    base = ["runuser", "-u", user.pw_name, "--", *env, python, "-m", "pytest_vpstest.cli", "lab"]
    up = subprocess.run(
        [*base, "up", "--prefix", USER_PREFIX, "--topology", "small"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lab_dir = state / "vpstest" / "lab" / USER_PREFIX
    try:
        assert up.returncode == 0, up.stderr
        assert "flavour loopback" in up.stdout, "a non-root user gets the loopback flavour automatically"
        doc = yaml.safe_load((lab_dir / "inventory.yaml").read_text())
        node = doc["nodes"][-1]
        ssh = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={lab_dir / 'known_hosts'}",
            "-i",
            str(lab_dir / "id_ed25519"),
            "-p",
            str(node["port"]),
            f"{node['user']}@{node['host']}",
            "id -un",
        ]
        proc = subprocess.run(
            ["runuser", "-u", user.pw_name, "--", *ssh], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == user.pw_name == node["user"]
        status = subprocess.run(
            [*base, "status", "--prefix", USER_PREFIX, "--json"], capture_output=True, text=True, timeout=30
        )
        assert status.returncode == 0, status.stderr
        assert all(n["sshd_up"] for n in json.loads(status.stdout)["nodes"])
    finally:
        down = subprocess.run(
            [*base, "down", "--prefix", USER_PREFIX], capture_output=True, text=True, timeout=60
        )
        leftover = netns.lab_processes(lab_dir)
        shutil.rmtree(state, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert leftover == []


def _lab_status(lab: Lab, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VPSTEST_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "pytest_vpstest.cli", "lab", "status", "--prefix", lab.record.prefix,
         "--lab-dir", str(lab.dir), *extra],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
    )


def test_status_asks_the_software_under_test_through_the_configs_status_probe(
    lab: Lab, tmp_path: Path
) -> None:
    """With a project config each node answers through its status probe (ok / not ready / no answer
    and why); without one the column is the reference agent's port, labelled as such."""
    peers = [n.name for n in lab.record.nodes if n.role != "registry"]
    ready, waiting = peers[0], peers[1]
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / ready).write_text(f'{{"ok": true, "node": "{ready}", "addresses": []}}\n')
    (answers / waiting).write_text(f'{{"ok": true, "node": "{waiting}", "addresses": [], "ready": false}}\n')
    config = tmp_path / "vps.yaml"
    config.write_text(
        "project: sut\nworkspace: .\n"
        f"probes:\n  status: \"cat {answers}/{{node}}\"\n"
    )
    proc = _lab_status(lab, tmp_path, "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert lines["node"].rstrip().endswith("status probe")
    assert lines[ready].rstrip().endswith("  ok")
    assert lines[waiting].rstrip().endswith("not ready: status answered ready: false")
    for other in peers[2:]:
        assert "no answer: exit 1, no output; stderr: cat: " in lines[other]
        assert "No such file" in lines[other]
    doc = json.loads(_lab_status(lab, tmp_path, "--config", str(config), "--json").stdout)
    assert doc["sut_check"] == "status probe"
    assert {n["name"]: n["sut"]["state"] for n in doc["nodes"]}[waiting] == "not ready"
    # No config given and none in the working directory: today's check, named for what it is.
    bare = _lab_status(lab, tmp_path)
    assert "reference agent (udp 9000)" in bare.stdout.splitlines()[1]
    # ./vpstest.yaml is found as the other commands find it.
    (tmp_path / "vpstest.yaml").write_text(config.read_text())
    found = _lab_status(lab, tmp_path)
    assert "status probe" in found.stdout.splitlines()[1] and "not ready" in found.stdout
