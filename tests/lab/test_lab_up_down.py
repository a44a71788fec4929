"""``lab up`` builds the ten-node fleet (names carry the prefix, shaping where the topology says, the
inventory in the documented format, infrastructure services listening) and ``lab status`` reports
each node; ``lab down`` removes everything and is idempotent; ``lab up`` over a leftover lab, also
one from a ``lab up`` killed with SIGKILL midway, cleans up and succeeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pytest_vpstest import lab as lab_api
from pytest_vpstest.lab import nat, netns
from pytest_vpstest.lab.plan import AGENT_PORT
from tests.lab.conftest import Lab, lab_fixture, requires_netns, worker_prefix

pytestmark = [pytest.mark.lab, requires_netns]

lab = lab_fixture("vta", "full")

FULL_FLEET = {
    "saorsa-1": ("registry", "none"),
    "saorsa-2": ("bootstrap", "none"),
    "saorsa-3": ("bootstrap", "none"),
    "saorsa-4": ("nat", "full-cone"),
    "saorsa-5": ("nat", "address-restricted"),
    "saorsa-6": ("nat", "port-restricted"),
    "saorsa-7": ("test", "none"),
    "saorsa-8": ("test", "none"),
    "saorsa-9": ("test", "none"),
    "saorsa-10": ("nat", "symmetric"),
}


def _leftovers(prefix: str, lab_dir: Path) -> list[str]:
    """Everything of lab ``prefix`` still present: namespaces, root links, nft table, processes, mounts."""
    found = [f"netns {n}" for n in netns.namespaces(prefix)]
    found += [f"link {n}" for n in netns.root_links(prefix)]
    if (
        subprocess.run(
            ["nft", "list", "table", "inet", nat.host_table_name(prefix)], capture_output=True
        ).returncode
        == 0
    ):
        found.append("nft table")
    found += [f"pid {p}" for p in netns.lab_processes(lab_dir) if netns.pid_alive(p)]
    with open("/proc/self/mountinfo") as fh:
        found += [f"mount {line.split()[4]}" for line in fh if str(lab_dir) in line]
    return found


def test_full_topology_is_the_ten_node_fleet(lab: Lab) -> None:
    assert {n.name: (n.role, n.nat) for n in lab.record.nodes} == FULL_FLEET


def test_everything_carries_the_prefix(lab: Lab) -> None:
    prefix = lab.record.prefix
    names = netns.namespaces(prefix)
    natted = [n.name for n in lab.record.nodes if n.nat != "none"]
    nodes = {f"{prefix}-{n}" for n in FULL_FLEET}
    expected = {f"{prefix}-inet", f"{prefix}-mgmt"} | nodes | {f"{prefix}-r-{n}" for n in natted}
    assert set(names) == expected
    # The root namespace holds one link into the lab, whatever the number of nodes.
    assert netns.root_links(prefix) == [f"{prefix}-m0"]


def test_the_lab_learns_no_neighbour_entries(lab: Lab) -> None:
    """The kernel's neighbour table is shared by every namespace and overflows past gc_thresh3 learnt
    entries (a 50-node lab learning its data network needs ~2,500): every entry the lab uses is
    static, so traffic across the data network and SSH on the management network learn none."""
    send = (
        "import socket,sys,time; s=socket.socket(2,2); "
        "[s.sendto(b'x',(a,9)) for a in sys.argv[1:]]; time.sleep(0.3)"
    )
    for a in lab.record.nodes:
        others = [b.public_ip for b in lab.record.nodes if b is not a]
        sent = lab.python_in(str(a.ns), send, *others)
        assert sent.returncode == 0, (a.name, sent.stderr)
    lab.ssh(lab.record.nodes[0].name, "true")
    for ns in netns.namespaces(lab.record.prefix):
        entries = json.loads(lab.in_ns(ns, ["ip", "-j", "-4", "neigh", "show"]).stdout or "[]")
        learnt = [e for e in entries if e.get("state") != ["PERMANENT"]]
        assert learnt == [], f"{ns} learnt neighbour entries: {learnt}"
    root = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "neigh", "show", "dev", f"{lab.record.prefix}-m0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [e.get("state") for e in root] == [["PERMANENT"]]


def test_constrained_nodes_are_shaped(lab: Lab) -> None:
    for name in ("saorsa-8", "saorsa-9"):
        qdisc = lab.in_ns(str(lab.node(name).ns), ["tc", "qdisc", "show", "dev", "eth0"]).stdout
        assert "tbf" in qdisc and "50Mbit" in qdisc, qdisc
    bridge_side = lab.in_ns(f"{lab.record.prefix}-inet", ["tc", "qdisc", "show", "dev", "d8"]).stdout
    assert "tbf" in bridge_side and "50Mbit" in bridge_side
    assert "tbf" not in lab.in_ns(str(lab.node("saorsa-7").ns), ["tc", "qdisc", "show", "dev", "eth0"]).stdout


def test_inventory_has_the_documented_shape(lab: Lab) -> None:
    doc = yaml.safe_load((lab.dir / "inventory.yaml").read_text())
    assert doc["schema_version"] == 1 and doc["lab"] == "netns"
    assert (lab.dir / doc["known_hosts"]).is_file()
    assert (lab.dir / doc["identity_file"]).stat().st_mode & 0o077 == 0
    assert doc["registry"] == {"url": "http://198.18.0.1:8080", "via_node": "saorsa-1"}
    assert doc["bootstrap"] == ["198.18.0.2:3478", "198.18.0.3:3478"]
    known = (lab.dir / "known_hosts").read_text()
    for n in doc["nodes"]:
        record = lab.node(n["name"])
        assert (n["role"], n["nat"]) == FULL_FLEET[n["name"]]
        assert n["host"] == record.host and n["host"].startswith("198.19.") and n["port"] == 22
        assert n["p2p_address"] == record.data_ip
        assert n["service_manager"] == "process" and n["user"] == "root"
        assert n["install_path"] == "/opt/vpstest/" and n["log_dir"] == "/var/log/vpstest"
        assert f"{n['host']} ssh-ed25519 " in known
    assert lab.node("saorsa-4").data_ip == "198.19.4.2" and lab.node("saorsa-4").public_ip == "198.18.0.4"


def test_status_reports_sshd_and_agent(lab: Lab) -> None:
    record, nodes = lab_api.status(lab.record.prefix, lab.dir)
    assert record.prefix == lab.record.prefix
    assert all(n.sshd_up and n.sshd_pid for n in nodes)
    assert not any(n.agent_up for n in nodes), "no agent is deployed yet"
    # Something bound to UDP 9000 inside saorsa-7's namespace is what "agent up" means.
    ns = str(lab.node("saorsa-7").ns)
    code = (
        "import socket,sys,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('{lab.node('saorsa-7').data_ip}', {AGENT_PORT})); "
        "print('bound', flush=True); time.sleep(20)"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "bound"
        up = {n.name: n.agent_up for n in lab_api.status(lab.record.prefix, lab.dir)[1]}
        assert up == {n: n == "saorsa-7" for n in FULL_FLEET}
    finally:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()


def test_status_cli_json(lab: Lab) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_vpstest.cli",
            "lab",
            "status",
            "--prefix",
            lab.record.prefix,
            "--lab-dir",
            str(lab.dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["flavour"] == "netns" and len(doc["nodes"]) == 10
    assert {n["name"]: n["sshd_up"] for n in doc["nodes"]} == dict.fromkeys(FULL_FLEET, True)


def test_infrastructure_services_listen_in_their_namespaces(lab: Lab) -> None:
    for svc in lab.record.services:
        pid = netns.read_pid(lab.dir / "run" / f"{svc.kind}-{svc.node}.pid")
        assert pid is not None and netns.pid_alive(pid)
        port = int(svc.bind.rsplit(":", 1)[1])
        assert netns.listening(pid, port, "tcp" if svc.kind == "registry" else "udp"), svc


# --- down, leftovers, crashes (their own prefix and lab) ------------------------------------------

CRASH_PREFIX = worker_prefix("vtb")


@pytest.fixture
def crash_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    lab_api.down(CRASH_PREFIX, tmp_path)


def test_down_removes_everything_and_is_idempotent(crash_dir: Path) -> None:
    lab_api.up("small", "netns", CRASH_PREFIX, crash_dir)
    assert _leftovers(CRASH_PREFIX, crash_dir), "control: the lab exists before down"
    inodes = {netns.netns_inode(n) for n in netns.namespaces(CRASH_PREFIX)}
    inside = netns.pids_in({i for i in inodes if i is not None})
    assert len(inside) >= 4 + 2, "control: sshds and services run inside the lab"
    removed = lab_api.down(CRASH_PREFIX, crash_dir)
    assert not [p for p in inside if netns.pid_alive(p)]
    assert any("namespaces" in r for r in removed)
    assert _leftovers(CRASH_PREFIX, crash_dir) == []
    assert lab_api.down(CRASH_PREFIX, crash_dir) == []
    assert not (crash_dir / "inventory.yaml").exists()


def test_up_over_a_running_lab_replaces_it(crash_dir: Path) -> None:
    first = lab_api.up("small", "netns", CRASH_PREFIX, crash_dir)
    old = {n.name: netns.read_pid(crash_dir / "run" / f"sshd-{n.name}.pid") for n in first.nodes}
    lab_api.up("full", "netns", CRASH_PREFIX, crash_dir)
    assert not any(p is not None and netns.pid_alive(p) for p in old.values())
    _, nodes = lab_api.status(CRASH_PREFIX, crash_dir)
    assert len(nodes) == 10 and all(n.sshd_up for n in nodes)


@pytest.mark.parametrize("stage", ["namespaces", "sshd"])
def test_up_after_a_lab_up_killed_midway(crash_dir: Path, stage: str) -> None:
    """SIGKILL ``lab up`` once it has made namespaces (or started sshds); the next ``up`` succeeds and
    ``down`` then leaves nothing behind."""
    argv = [
        sys.executable,
        "-m",
        "pytest_vpstest.cli",
        "lab",
        "up",
        "--prefix",
        CRASH_PREFIX,
        "--lab-dir",
        str(crash_dir),
        "--topology",
        "full",
        "--flavour",
        "netns",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = Path("/run/netns") / f"{CRASH_PREFIX}-inet" if stage == "namespaces" else crash_dir / "log"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if stage == "namespaces" and marker.exists():
            break
        if stage == "sshd" and any((crash_dir / "run").glob("sshd-*.pid")):
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert _leftovers(CRASH_PREFIX, crash_dir), "control: the killed run left something behind"
    record = lab_api.up("full", "netns", CRASH_PREFIX, crash_dir)
    _, nodes = lab_api.status(CRASH_PREFIX, crash_dir)
    assert len(record.nodes) == 10 and all(n.sshd_up for n in nodes)
    lab_api.down(CRASH_PREFIX, crash_dir)
    assert _leftovers(CRASH_PREFIX, crash_dir) == []
