"""The lab record (``<labdir>/lab.json``) and the per-node status read from it and the kernel.

``lab up`` writes the record last (after the inventory); ``lab status`` and ``lab down`` read it.
``lab down`` does not depend on it: it finds everything by prefix.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_vpstest._files import write_text_atomic
from pytest_vpstest.errors import LabError
from pytest_vpstest.lab import netns
from pytest_vpstest.lab.plan import AGENT_PORT

__all__ = [
    "INVENTORY_NAME",
    "RECORD_NAME",
    "LabRecord",
    "NodeRecord",
    "NodeStatus",
    "ServiceRecord",
    "load_record",
    "node_status",
    "prepare_lab_dir",
    "tcp_open",
    "udp_bound_on",
]

# The lab directory's two documents: the record `lab status` reads, and the fleet inventory the
# harness reads (written by lab/inventory.py, last, once the lab is up).
RECORD_NAME = "lab.json"
INVENTORY_NAME = "inventory.yaml"


def prepare_lab_dir(lab_dir: Path) -> None:
    """Create the lab directory's working folders and drop the files a previous lab left, so a
    half-built lab is never mistaken for a running one."""
    for sub in ("run", "log", "nodes"):
        (lab_dir / sub).mkdir(parents=True, exist_ok=True)
    for stale in (INVENTORY_NAME, RECORD_NAME):
        (lab_dir / stale).unlink(missing_ok=True)


@dataclass(frozen=True)
class NodeRecord:
    name: str
    role: str
    nat: str
    data_ip: str
    public_ip: str
    host: str  # management address (netns) or loopback address
    port: int  # sshd port
    ns: str | None = None
    router_ns: str | None = None
    install_path: str = "/opt/vpstest/"
    log_dir: str = "/var/log/vpstest"


@dataclass(frozen=True)
class ServiceRecord:
    kind: str
    node: str
    bind: str
    netns: str | None


@dataclass(frozen=True)
class LabRecord:
    prefix: str
    flavour: str
    topology: str
    lab_dir: str
    nodes: tuple[NodeRecord, ...]
    services: tuple[ServiceRecord, ...] = ()
    mgmt_subnet: str | None = None
    harness_ip: str | None = None
    build_seconds: float = 0.0
    schema_version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        path = Path(self.lab_dir) / RECORD_NAME
        write_text_atomic(path, json.dumps(asdict(self), indent=2) + "\n")


def load_record(lab_dir: Path) -> LabRecord | None:
    path = lab_dir / RECORD_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise LabError(f"{path}: unreadable lab record ({exc}); run 'vpstest lab down' to reset") from None
    data["nodes"] = tuple(NodeRecord(**n) for n in data.get("nodes", []))
    data["services"] = tuple(ServiceRecord(**s) for s in data.get("services", []))
    data.pop("services_note", None)  # written by earlier versions
    return LabRecord(**data)


@dataclass(frozen=True)
class NodeStatus:
    name: str
    role: str
    nat: str
    data_ip: str
    public_ip: str
    host: str
    port: int
    sshd_pid: int | None
    sshd_up: bool
    agent_up: bool

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def node_status(record: LabRecord, node: NodeRecord) -> NodeStatus:
    """sshd up: its pid is alive and its port accepts TCP. Agent up: UDP 9000 is bound on the node
    (in its namespace; on its loopback address for the loopback flavour)."""
    lab_dir = Path(record.lab_dir)
    pid = netns.read_pid(lab_dir / "run" / f"sshd-{node.name}.pid")
    alive = pid is not None and netns.pid_alive(pid)
    sshd_up = alive and tcp_open(node.host, node.port)
    if record.flavour == "netns":
        agent_up = alive and pid is not None and netns.listening(pid, AGENT_PORT, "udp")
    else:
        agent_up = udp_bound_on(node.data_ip, AGENT_PORT)
    return NodeStatus(
        name=node.name,
        role=node.role,
        nat=node.nat,
        data_ip=node.data_ip,
        public_ip=node.public_ip,
        host=node.host,
        port=node.port,
        sshd_pid=pid if alive else None,
        sshd_up=sshd_up,
        agent_up=agent_up,
    )


def udp_bound_on(address: str, port: int) -> bool:
    """Whether some socket of this (root or user's) namespace is bound to ``address:port`` (or any)."""
    want_port = f"{port:04X}"
    packed = socket.inet_aton(address)
    want_addr = f"{int.from_bytes(packed, 'little'):08X}"
    try:
        with open("/proc/net/udp", encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                addr, p = line.split()[1].split(":")
                if p == want_port and addr in (want_addr, "00000000"):
                    return True
    except OSError:
        return False
    return False
