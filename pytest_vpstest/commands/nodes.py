"""``vpstest nodes`` and ``vpstest diagnose``: the fleet as seen over SSH right now."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pytest_vpstest.commands.loading import add_fleet_options, iso_now, load_config, load_inventory
from pytest_vpstest.config import DeployConfig, ProjectConfig
from pytest_vpstest.errors import NodeError, VpsTestError
from pytest_vpstest.fleet.node import install_path as install_path_of
from pytest_vpstest.fleet.node import plan_node
from pytest_vpstest.inventory import Inventory
from pytest_vpstest.nat_types import nat_info

__all__ = ["check_reachability", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``diagnose`` and ``nodes`` to the ``vpstest`` parser."""
    p = sub.add_parser("diagnose", help="inspect one node over SSH",
                       description="Service status, recent logs, disk, memory and listening sockets "
                                   "of a node.")
    p.add_argument("node")
    add_fleet_options(p)
    p.add_argument("-n", "--lines", type=int, default=40, help="log lines per service (default 40)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per remote command (default 15)")
    p.set_defaults(handler=_diagnose)

    p = sub.add_parser("nodes", help="list the fleet with live SSH reachability",
                       description="The 'VPS Nodes Status' listing, reachability checked in parallel.")
    add_fleet_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per node (default 10)")
    p.set_defaults(handler=_nodes)


_ROLE_LABEL = {"registry": "Registry", "bootstrap": "Bootstrap", "test": "Test"}


def _inventory_for(args: argparse.Namespace) -> tuple[Inventory, ProjectConfig | None]:
    config = None
    default_config = os.environ.get("VPSTEST_CONFIG") or Path("vpstest.yaml").exists()
    if args.config or (not args.nodes and default_config):
        config = load_config(args.config)
    return load_inventory(args.nodes, config), config


def check_reachability(inventory: Inventory, timeout: float = 10.0) -> dict[str, str | None]:
    """``{node: None}`` when SSH answered, else ``{node: one-line cause}``; checked in parallel."""
    from pytest_vpstest.fleet.remote import SessionPool

    with SessionPool(inventory) as pool:
        results = pool.fan_out(inventory.names, lambda s: s.run("true", timeout=timeout),
                               parallelism=max(1, len(inventory.names)))
    out: dict[str, str | None] = {}
    for name, res in results.items():
        if isinstance(res, NodeError):
            out[name] = str(res)
        elif not res.ok:
            out[name] = f"{name}: {res.summary()}"
        else:
            out[name] = None
    return out


def _loop_health(args: argparse.Namespace, config: ProjectConfig | None) -> dict[str, dict[str, Any]]:
    """The project's loop's last recorded health of each node (empty without a config or a run)."""
    if config is None:
        return {}
    from pytest_vpstest.commands.loading import state_dir_of
    from pytest_vpstest.commands.loops import node_health
    from pytest_vpstest.records.store import StateStore

    try:
        doc = StateStore(state_dir_of(args, config), config.project).load()
    except VpsTestError:
        return {}
    return node_health(doc or {})


def _nodes(args: argparse.Namespace) -> int:
    inventory, config = _inventory_for(args)
    reach = check_reachability(inventory, timeout=args.timeout)
    health = _loop_health(args, config)
    rows: list[dict[str, Any]] = []  # also the --json output
    for n in inventory.nodes:
        h = health.get(n.name) or {}
        rows.append({"name": n.name, "host": n.host, "fallback_ip": n.fallback_ip, "role": n.role,
                     "nat": n.nat, "provider": n.provider, "region": n.region, "notes": n.notes,
                     "status": "ONLINE" if reach.get(n.name) is None else "UNREACHABLE",
                     "error": reach.get(n.name), "loop_health": h.get("health"),
                     "loop_health_reason": h.get("health_reason")})
    if args.json:
        print(json.dumps({"checked_at": iso_now(), "nodes": rows}, indent=2))
        return 0 if all(r["status"] == "ONLINE" for r in rows) else 1
    title = f"VPS Nodes Status (verified {iso_now()})"
    print(title)
    print("=" * len(title))
    print()
    width = max([len(r["name"]) for r in rows] + [8])
    for r in rows:
        nat = r["nat"]
        role = f"NAT: {nat_info(nat).short}" if nat != "none" else _ROLE_LABEL.get(r["role"], r["role"])
        where = "/".join(x for x in (r["provider"], r["region"]) if x) or "-"
        notes = f"  [{r['notes']}]" if r["notes"] else ""
        line = (f"{r['name']:<{width}}  ({role}){'':<{max(0, 16 - len(role))}} {r['host']:<17} {where:<19} "
                f"{r['status']:<11}{notes}")
        if r["loop_health"]:
            line += f" loop: {r['loop_health']}"
        print(line.rstrip())
        if r["error"]:
            print(f"{'':<{width}}  -> {r['error']}")
        if r["loop_health"] and r["loop_health"] != "Live" and r["loop_health_reason"]:
            print(f"{'':<{width}}  -> loop: {r['loop_health_reason']}")
    nat_rows = [r for r in rows if r["nat"] != "none"]
    if nat_rows:
        print()
        print("NAT Emulation Summary:")
        for r in nat_rows:
            info = nat_info(r["nat"])
            difficulty = f"{info.difficulty} - {info.expected_punch_rate:.0f}% success"
            label = f"{info.label} NAT"
            print(f"  {r['name'] + ':':<{width + 1}}  {label:<22} ({difficulty})")
    return 0 if all(r["status"] == "ONLINE" for r in rows) else 1


def _diagnose(args: argparse.Namespace) -> int:
    from pytest_vpstest.fleet.remote import SessionPool, quote_command
    from pytest_vpstest.fleet.services import service_manager

    inventory, config = _inventory_for(args)
    try:
        node = inventory.node(args.node)
    except KeyError:
        raise NodeError(args.node, f"not in the inventory (nodes: {', '.join(inventory.names)})") from None
    # Without a project config there is no service to inspect; the disk check uses the default path.
    plan = plan_node(node, config) if config is not None else None
    install_path = plan.install_path if plan is not None else install_path_of(node, DeployConfig())
    with SessionPool(inventory) as pool:
        session = pool.session(node.name)
        first = session.run("uname -a; uptime", timeout=args.timeout)  # raises UnreachableNodeError
        sections: list[tuple[str, str]] = [("System", first.stdout.strip() or first.summary())]
        if plan is not None:
            svc = plan.service
            mgr = service_manager(session, install_path=plan.install_path, log_dir=plan.log_dir)
            try:
                st = mgr.status(svc)
                state = f"running (pid {st.pid})" if st.running else "not running"
                sections.append((f"Service {svc}", f"{state}{' - ' + st.detail if st.detail else ''}"))
                sections.append((f"Recent logs of {svc}", mgr.logs(svc, args.lines).rstrip() or "(empty)"))
            except VpsTestError as exc:
                sections.append((f"Service {svc}", f"could not inspect: {exc}"))
        checks = (
            ("Disk", "df -h " + quote_command("{p}", p=install_path.rstrip("/") or "/") + " / 2>/dev/null"),
            ("Memory", "free -m 2>/dev/null || head -5 /proc/meminfo"),
            ("Listening sockets", "ss -tulpn 2>/dev/null || netstat -tulpn 2>/dev/null || cat /proc/net/udp"),
        )
        for title, cmd in checks:
            res = session.run(cmd, timeout=args.timeout)
            sections.append((title, res.stdout.rstrip() or res.summary()))
    header = f"Diagnosis of {node.name} ({node.host}, role {node.role}, NAT {node.nat}) at {iso_now()}"
    print(header)
    print("=" * len(header))
    for title, body in sections:
        print()
        print(f"## {title}")
        print(body)
    return 0
