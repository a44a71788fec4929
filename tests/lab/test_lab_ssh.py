"""Every lab node runs a real OpenSSH server reached with strict host-key checking, has its own
filesystem view for /opt and /var/log/vpstest, and is reachable through the harness's own session
code from the inventory the lab wrote (the same path as a real fleet)."""

from __future__ import annotations

import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from pytest_vpstest.config import Inventory, Node, RegistryAccess
from tests.lab.conftest import Lab, lab_fixture, requires_netns

pytestmark = [pytest.mark.lab, requires_netns]

lab = lab_fixture("vtc", "full")


def _inventory(path: Path) -> Inventory:
    """The inventory file read into the shared config types, field for field."""
    doc = yaml.safe_load(path.read_text())
    nodes = tuple(
        Node(
            name=n["name"],
            host=n["host"],
            user=n["user"],
            port=n["port"],
            role=n["role"],
            nat=n["nat"],
            service_manager=n["service_manager"],
            install_path=n["install_path"],
            log_dir=n["log_dir"],
            p2p_address=n["p2p_address"],
            tags=tuple(n["tags"]),
            provider=n["provider"],
            region=n["region"],
        )
        for n in doc["nodes"]
    )
    return Inventory(
        nodes=nodes,
        path=path,
        known_hosts=path.parent / doc["known_hosts"],
        identity_file=path.parent / doc["identity_file"],
        connect_timeout=float(doc["connect_timeout"]),
        registry=RegistryAccess(**doc["registry"]),
        bootstrap=tuple(doc["bootstrap"]),
        lab=doc["lab"],
    )


def test_ssh_into_every_node_with_strict_host_key_checking(lab: Lab) -> None:
    names = [n.name for n in lab.record.nodes]
    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(pool.map(lambda n: lab.ssh(n, "id -un; ip -4 -br addr show eth0"), names))
    results = dict(zip(names, answers, strict=True))
    for name, proc in results.items():
        user, addr = proc.stdout.splitlines()[:2]
        assert user == "root"
        assert lab.node(name).data_ip + "/24" in addr, f"{name} answered from the wrong namespace: {addr}"


def test_unknown_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    n1, n2 = lab.record.nodes[0], lab.record.nodes[1]
    # node 1's address with node 2's key: a changed host key
    key = next(
        line for line in (lab.dir / "known_hosts").read_text().splitlines() if line.startswith(n2.host + " ")
    )
    other.write_text(key.replace(n2.host, n1.host, 1) + "\n")
    proc = lab.ssh(n1.name, "true", check=False, known_hosts=other)
    assert proc.returncode != 0
    assert "host key" in proc.stderr.lower()


def test_password_login_is_disabled(lab: Lab) -> None:
    argv = lab.ssh_argv("saorsa-7", "true")
    argv[1:1] = [
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        "-o",
        "PubkeyAuthentication=no",
    ]

    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "permission denied" in proc.stderr.lower()


def test_each_node_has_its_own_opt_and_log_dir(lab: Lab) -> None:
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    lab.ssh(
        "saorsa-4",
        f"mkdir -p /opt/vpstest /var/log/vpstest && echo 4 > /opt/vpstest/{marker} && "
        f"echo log4 > /var/log/vpstest/{marker}.log",
    )
    seen_on_4 = lab.ssh("saorsa-4", f"cat /opt/vpstest/{marker} /var/log/vpstest/{marker}.log").stdout.split()
    assert seen_on_4 == ["4", "log4"]
    other = lab.ssh("saorsa-7", f"ls /opt/vpstest/{marker} /var/log/vpstest/{marker}.log", check=False)
    assert other.returncode != 0, "a file deployed to saorsa-4 is visible on saorsa-7"
    assert not Path("/opt/vpstest", marker).exists(), "a file deployed to a node leaked to the host's /opt"
    assert (lab.dir / "nodes" / "saorsa-4" / "fs" / "opt" / "vpstest" / marker).read_text() == "4\n"


def test_harness_sessions_reach_nodes_from_the_lab_inventory(lab: Lab) -> None:
    from pytest_vpstest.fleet.remote import SessionPool

    inventory = _inventory(lab.dir / "inventory.yaml")
    assert inventory.lab == "netns"
    assert len(inventory.nodes) == len(lab.record.nodes)
    pool = SessionPool(inventory)
    try:
        for name in ("saorsa-1", "saorsa-10"):
            result = pool.run(name, "cat /proc/sys/net/ipv4/ip_forward; ip -4 -br addr show eth0", timeout=20)
            assert result.ok, result.summary()
            assert inventory.node(name).p2p_address in result.stdout
    finally:
        pool.close_all()


def test_registry_answers_via_its_node(lab: Lab) -> None:
    from pytest_vpstest.fleet.remote import SessionPool, query_registry

    inventory = _inventory(lab.dir / "inventory.yaml")
    assert inventory.registry is not None
    pool = SessionPool(inventory)
    try:
        peers = query_registry(pool, inventory.registry, timeout=5)
    finally:
        pool.close_all()
    assert isinstance(peers, list)
    health = lab.ssh(
        "saorsa-7",
        'python3 -c "import urllib.request as u; '
        "print(u.urlopen('http://198.18.0.1:8080/health', timeout=5).status)\"",
    )
    assert health.stdout.strip() == "200"
