"""``vpstest contract check``: every probe template run once on the chosen nodes, one table back."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from pytest_vpstest.commands.loading import add_fleet_options, load_config, load_inventory
from pytest_vpstest.errors import NodeError
from pytest_vpstest.inventory import Inventory
from pytest_vpstest.suite import FOCUSES

__all__ = ["peer_for", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``contract check`` to the ``vpstest`` parser."""
    p = sub.add_parser("contract", help="check a node's probe templates against the contract",
                       description="The probe contract (docs/contract.md).")
    actions = p.add_subparsers(dest="contract_command", metavar="ACTION", required=True)
    c = actions.add_parser("check", help="run every probe template once and print what works",
                           description="Runs every probe template once on each chosen node (the software "
                                       "must already run there), validates each answer against its JSON "
                                       "Schema, times it, and prints one table with how to fix what is "
                                       "missing or wrong. Exit status 1 when anything required fails.")
    add_fleet_options(c)
    c.add_argument("--node", action="append", default=[],
                   help="check this node (repeatable; default: every node but the registry)")
    c.add_argument("--timeout", type=float, default=10.0, help="{timeout} of each probe (default 10)")
    c.add_argument("--focus", choices=FOCUSES, default=None,
                   help="check only what this focus needs (default: every action)")
    c.add_argument("--json", action="store_true", help="machine-readable rows")
    c.set_defaults(handler=_check)


def peer_for(inventory: Inventory, node: str) -> str:
    """The peer a check's connect and throughput aim at: a public node other than ``node`` if there
    is one, else any other peer node, else ``node`` itself."""
    peers = [n for n in inventory.nodes if n.role != "registry" and n.name != node]
    public = [n for n in peers if n.nat == "none"]
    return (public or peers)[0].name if peers else node


def _check(args: argparse.Namespace) -> int:
    from pytest_vpstest.fleet.contract_check import check_contract, contract_passed, render_table
    from pytest_vpstest.fleet.probes import ProbeRunner
    from pytest_vpstest.fleet.remote import SessionPool

    config = load_config(args.config)
    inventory = load_inventory(args.nodes, config)
    for name in args.node:
        if name not in inventory.names:
            raise NodeError(name, f"not in the inventory (nodes: {', '.join(inventory.names)})")
    chosen = args.node or [n.name for n in inventory.nodes if n.role != "registry"]
    with SessionPool(inventory) as pool:
        runner = ProbeRunner.for_project(pool, inventory, config, default_timeout=args.timeout)
        rows = check_contract(runner, chosen, lambda n: peer_for(inventory, n), args.timeout, args.focus)
    passed = contract_passed(rows)
    if args.json:
        print(json.dumps({"passed": passed, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(render_table(rows))
        print()
        print("contract check: " + ("PASSED" if passed else "FAILED (see 'how to fix'; docs/contract.md)"))
    return 0 if passed else 1
