"""The loopback flavour: no root, no namespaces, no NAT.

Node N of lab ``prefix`` gets the loopback address ``127.A.B.N`` (A and B derived from the prefix, one
of 32,768 networks, so labs of different prefixes coexist) as its data address, and an sshd of its
own, run as the current user, on ``127.A.B.N:<22000+N>``. Install path and log directory are
per-node directories under the lab directory instead of mount namespaces. Every NAT type is ``none``.
"""

from __future__ import annotations

import socket
import time
import zlib
from pathlib import Path

from pytest_vpstest.errors import LabError
from pytest_vpstest.lab import netns, services, sshd
from pytest_vpstest.lab.inventory import INVENTORY_NAME, inventory_document, write_yaml_atomic
from pytest_vpstest.lab.plan import BOOTSTRAP_PORT, REGISTRY_PORT, check_prefix
from pytest_vpstest.lab.record import LabRecord, NodeRecord, ServiceRecord, prepare_lab_dir, tcp_open
from pytest_vpstest.lab.topology import Topology

__all__ = ["SSH_PORT_BASE", "START_TIMEOUT_S", "loopback_net", "node_address", "teardown", "up"]

SSH_PORT_BASE = 22000
START_TIMEOUT_S = 15.0


def loopback_net(prefix: str) -> str:
    """The lab's loopback /24 as ``127.A.B`` (A in 64..191, B in 0..255): 32,768 networks, so two
    prefixes rarely share one (a shared one is refused at ``up``, the ports being in use)."""
    check_prefix(prefix)
    h = zlib.crc32(prefix.encode())
    return f"127.{64 + h % 128}.{(h >> 7) % 256}"


def node_address(prefix: str, number: int) -> str:
    return f"{loopback_net(prefix)}.{number}"


def _port_free(address: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def up(topology: Topology, prefix: str, lab_dir: Path) -> LabRecord:
    """Start one sshd (and the lab services) per node on loopback addresses; write the inventory."""
    started = time.monotonic()
    teardown(prefix, lab_dir)
    prepare_lab_dir(lab_dir)
    nodes: list[NodeRecord] = []
    ssh_nodes: list[sshd.SshdNode] = []
    for number, node in enumerate(topology.nodes, start=1):
        address = node_address(prefix, number)
        port = SSH_PORT_BASE + number
        if not _port_free(address, port, socket.SOCK_STREAM):
            raise LabError(f"{address}:{port} is in use; is another loopback lab '{prefix}' running?")
        node_dir = lab_dir / "nodes" / node.name
        fs = node_dir / "fs"
        for sub in ("opt/vpstest", "log", "run"):
            (fs / sub).mkdir(parents=True, exist_ok=True)
        ssh_nodes.append(sshd.SshdNode(name=node.name, listen=address, port=port, node_dir=node_dir))
        nodes.append(
            NodeRecord(
                name=node.name,
                role=node.role,
                nat="none",
                data_ip=address,
                public_ip=address,
                host=address,
                port=port,
                install_path=f"{fs / 'opt' / 'vpstest'}/",
                log_dir=str(fs / "log"),
            )
        )
    svcs = _services(nodes)
    try:
        sshd.prepare_keys(lab_dir, ssh_nodes, prefix)
        for s in ssh_nodes:
            sshd.write_config(s, lab_dir, loopback=True)
            sshd.spawn_detached(
                sshd.loopback_sshd_argv(s), pid_file=None, log_file=lab_dir / "log" / f"sshd-{s.name}.log"
            )
        for svc in svcs:
            services.start_service(svc, lab_dir)
        deadline = time.monotonic() + START_TIMEOUT_S
        for s in ssh_nodes:
            while not (
                netns.read_pid(lab_dir / "run" / f"sshd-{s.name}.pid") and tcp_open(s.listen, s.port, 0.2)
            ):
                if time.monotonic() > deadline:
                    raise LabError(
                        f"sshd of {s.name} ({s.listen}:{s.port}) did not come up; "
                        f"see {lab_dir / 'log' / f'sshd-{s.name}.log'}"
                    )
                time.sleep(0.02)
        for svc in svcs:
            while not _service_ready(lab_dir, svc):
                if time.monotonic() > deadline:
                    raise LabError(
                        f"{svc.kind} on {svc.node} ({svc.bind}) did not come up; "
                        f"see {svc.log_file(lab_dir)}"
                    )
                time.sleep(0.02)
    except BaseException:
        teardown(prefix, lab_dir)
        raise
    record = LabRecord(
        prefix=prefix,
        flavour="loopback",
        topology=topology.name,
        lab_dir=str(lab_dir),
        nodes=tuple(nodes),
        services=tuple(ServiceRecord(s.kind, s.node, s.bind, None) for s in svcs),
        build_seconds=round(time.monotonic() - started, 3),
    )
    write_yaml_atomic(lab_dir / INVENTORY_NAME, inventory_document(record))
    record.save()
    return record


def _services(nodes: list[NodeRecord]) -> list[services.Service]:
    svcs = [
        services.Service("registry", n.name, f"{n.data_ip}:{REGISTRY_PORT}", None)
        for n in nodes
        if n.role == "registry"
    ]
    svcs += [
        services.Service("bootstrap", n.name, f"{n.data_ip}:{BOOTSTRAP_PORT}", None)
        for n in nodes
        if n.role == "bootstrap"
    ]
    return svcs


def _service_ready(lab_dir: Path, svc: services.Service) -> bool:
    pid = netns.read_pid(svc.pid_file(lab_dir))
    if pid is None:
        return False
    if not netns.pid_alive(pid):
        raise LabError(f"{svc.kind} on {svc.node} exited at start; see {svc.log_file(lab_dir)}")
    address, port = svc.bind.rsplit(":", 1)
    kind = socket.SOCK_STREAM if svc.proto == "tcp" else socket.SOCK_DGRAM
    return not _port_free(address, int(port), kind)


def teardown(prefix: str, lab_dir: Path) -> list[str]:
    """Stop every process of the loopback lab in ``lab_dir`` (recorded or not). Idempotent."""
    check_prefix(prefix)
    # Services are found by the loopback addresses they bind (127.A.B.N belongs to this prefix).
    services_marker = f"{services.AGENT_MODULE} registry --bind {loopback_net(prefix)}."
    bootstrap_marker = services_marker.replace(" registry ", " bootstrap ")
    pids = set(netns.lab_processes(lab_dir)) | set(
        netns.processes_matching((services_marker, bootstrap_marker))
    )
    run_dir = lab_dir / "run"
    if run_dir.is_dir():
        for f in run_dir.glob("*.pid"):
            pid = netns.read_pid(f)
            if pid is not None and netns.pid_alive(pid) and netns.is_lab_process(pid, lab_dir):
                pids.add(pid)
            f.unlink(missing_ok=True)
    if pids:
        netns.kill_all(pids)
        return [f"{len(pids)} loopback lab processes"]
    return []
