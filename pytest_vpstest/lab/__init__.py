"""The embedded lab: a ten-node test fleet in network namespaces (or on loopback).

Public surface::

    up(topology="full", flavour=None, prefix="vps", lab_dir_path=None) -> LabRecord
    down(prefix="vps", lab_dir_path=None) -> list[str]
    status(prefix="vps", lab_dir_path=None) -> tuple[LabRecord, list[NodeStatus]]
    choose_flavour(requested) -> "netns" | "loopback"
    lab_dir(prefix="vps") -> Path
    inventory_path(prefix="vps") -> Path

Details: docs/lab.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pytest_vpstest.errors import LabError
from pytest_vpstest.lab.inventory import inventory_path, lab_dir
from pytest_vpstest.lab.plan import DEFAULT_PREFIX, check_prefix
from pytest_vpstest.lab.record import LabRecord, NodeStatus, load_record, node_status
from pytest_vpstest.lab.topology import Topology, load_topology

Flavour = Literal["netns", "loopback"]
FLAVOURS: tuple[Flavour, ...] = ("netns", "loopback")

__all__ = [
    "FLAVOURS",
    "Flavour",
    "LabRecord",
    "NodeStatus",
    "Topology",
    "choose_flavour",
    "down",
    "inventory_path",
    "lab_dir",
    "load_topology",
    "status",
    "up",
]


def choose_flavour(requested: Flavour | None) -> Flavour:
    """``netns`` when asked for or possible; ``loopback`` when asked for or netns is unavailable."""
    from pytest_vpstest.lab.netns import netns_available

    ok, why = netns_available()
    if requested == "netns" and not ok:
        raise LabError(
            f"the netns lab needs root and network namespaces ({why}); "
            "run as root, or use 'vpstest lab up --flavour loopback'"
        )
    if requested is not None:
        return requested
    return "netns" if ok else "loopback"


def up(
    topology: str | Topology = "full",
    flavour: Flavour | None = None,
    prefix: str = DEFAULT_PREFIX,
    lab_dir_path: Path | None = None,
) -> LabRecord:
    """Build a lab (removing any previous lab of ``prefix`` first) and write its inventory."""
    check_prefix(prefix)
    topo = topology if isinstance(topology, Topology) else load_topology(topology)
    where = lab_dir_path or lab_dir(prefix)
    where.mkdir(parents=True, exist_ok=True)
    chosen = choose_flavour(flavour)
    if chosen == "netns":
        from pytest_vpstest.lab import netlab

        return netlab.up(topo, prefix, where)
    from pytest_vpstest.lab import loopback

    return loopback.up(topo, prefix, where)


def down(prefix: str = DEFAULT_PREFIX, lab_dir_path: Path | None = None) -> list[str]:
    """Remove lab ``prefix`` (either flavour, recorded or leftover); return what was removed."""
    check_prefix(prefix)
    where = lab_dir_path or lab_dir(prefix)
    from pytest_vpstest.lab import loopback, netlab
    from pytest_vpstest.lab.netns import netns_available

    removed: list[str] = []
    if netns_available()[0]:
        removed += netlab.teardown(prefix, where)
    removed += loopback.teardown(prefix, where)
    for name in ("inventory.yaml", "lab.json"):
        path = where / name
        if path.exists():
            path.unlink()
            removed.append(str(path))
    return removed


def status(
    prefix: str = DEFAULT_PREFIX, lab_dir_path: Path | None = None
) -> tuple[LabRecord, list[NodeStatus]]:
    """The lab's record and every node's live status; LabError when no lab of ``prefix`` is up."""
    check_prefix(prefix)
    where = lab_dir_path or lab_dir(prefix)
    record = load_record(where)
    if record is None:
        raise LabError(f"no lab '{prefix}' in {where}; start one with 'vpstest lab up --prefix {prefix}'")
    return record, [node_status(record, n) for n in record.nodes]
