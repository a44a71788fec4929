"""Where a lab lives on disk, and the inventory file it hands to the rest of the harness.

The inventory follows docs/internals.md exactly, so ``--vps-nodes lab`` reads it with the same code
as a real fleet's inventory.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from pytest_vpstest._files import write_text_atomic
from pytest_vpstest.config import NatType, Role
from pytest_vpstest.lab.plan import DEFAULT_PREFIX, check_prefix
from pytest_vpstest.lab.record import INVENTORY_NAME, LabRecord

__all__ = [
    "INVENTORY_NAME",
    "InventoryNode",
    "inventory_document",
    "inventory_path",
    "lab_dir",
    "render_inventory",
    "write_yaml_atomic",
]


def lab_dir(prefix: str = DEFAULT_PREFIX) -> Path:
    """The lab directory: ``$VPSTEST_LAB_DIR``, else ``/var/lib/vpstest/lab/<prefix>`` as root, else
    ``$XDG_STATE_HOME/vpstest/lab/<prefix>`` (``~/.local/state`` when XDG_STATE_HOME is unset)."""
    check_prefix(prefix)
    forced = os.environ.get("VPSTEST_LAB_DIR")
    if forced:
        return Path(forced)
    if os.geteuid() == 0:
        return Path("/var/lib/vpstest/lab") / prefix
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "vpstest" / "lab" / prefix


def inventory_path(prefix: str = DEFAULT_PREFIX) -> Path:
    """The inventory file of lab ``prefix`` (what ``--vps-nodes lab`` resolves to)."""
    return lab_dir(prefix) / INVENTORY_NAME


@dataclass(frozen=True)
class InventoryNode:
    name: str
    host: str
    port: int
    user: str
    role: Role
    nat: NatType
    p2p_address: str
    install_path: str
    log_dir: str
    notes: str | None = None
    # The NAT's WAN address for a NATed node (its data address for a public one).
    public_address: str | None = None


def render_inventory(
    *, flavour: str, nodes: list[InventoryNode], registry_url: str, registry_node: str, bootstrap: list[str]
) -> dict[str, Any]:
    """The inventory document (docs/internals.md "Inventory file")."""
    return {
        "schema_version": 1,
        "known_hosts": "known_hosts",
        "identity_file": "id_ed25519",
        "connect_timeout": 10,
        "lab": flavour,
        "registry": {"url": registry_url, "via_node": registry_node},
        "bootstrap": list(bootstrap),
        "nodes": [
            {
                "name": n.name,
                "host": n.host,
                "fallback_ip": None,
                "user": n.user,
                "port": n.port,
                "role": n.role,
                "nat": n.nat,
                "tags": ["lab"],
                "provider": "lab",
                "region": "lab",
                "service_manager": "process",
                "install_path": n.install_path,
                "log_dir": n.log_dir,
                "p2p_address": n.p2p_address,
                **({"public_address": n.public_address} if n.public_address else {}),
                **({"notes": n.notes} if n.notes else {}),
            }
            for n in nodes
        ],
    }


def write_yaml_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def inventory_document(record: LabRecord) -> dict[str, Any]:
    """The inventory of a built lab (either flavour), from its record."""
    nodes = [
        InventoryNode(
            name=n.name,
            host=n.host,
            port=n.port,
            user=_user(record),
            role=cast(Role, n.role),
            nat=cast(NatType, n.nat),
            p2p_address=n.data_ip,
            public_address=n.public_ip,
            install_path=n.install_path,
            log_dir=n.log_dir,
        )
        for n in record.nodes
    ]
    registry = next(s for s in record.services if s.kind == "registry")
    return render_inventory(
        flavour=record.flavour,
        nodes=nodes,
        registry_url=f"http://{registry.bind}",
        registry_node=registry.node,
        bootstrap=[s.bind for s in record.services if s.kind == "bootstrap"],
    )


def _user(record: LabRecord) -> str:
    if record.flavour == "netns":
        return "root"
    return getpass.getuser()
