"""``vpstest lab up | down | status``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pytest_vpstest.lab.plan import DEFAULT_PREFIX, check_prefix

__all__ = ["register"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("lab", help="build, inspect or remove the embedded lab")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    up = lab_sub.add_parser("up", help="build the lab (removing a previous or half-built one first)")
    up.add_argument(
        "--topology",
        default="full",
        help="full, small, scale:N (N = 10-120 generated nodes) or a topology YAML file (default: full)",
    )
    up.add_argument(
        "--flavour",
        choices=("netns", "loopback"),
        default=None,
        help="netns (root) or loopback (no root, no NAT); default: netns when possible",
    )
    _common(up)
    up.set_defaults(handler=_up)

    down = lab_sub.add_parser("down", help="remove everything the lab made (idempotent)")
    _common(down)
    down.set_defaults(handler=_down)

    status = lab_sub.add_parser("status", help="show each node: role, NAT, addresses, sshd, agent")
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _common(status)
    status.set_defaults(handler=_status)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        type=_prefix,
        help=f"name prefix of everything the lab creates, 1-5 characters (default: {DEFAULT_PREFIX})",
    )
    p.add_argument("--lab-dir", type=Path, default=None, help="lab directory (default: see docs/lab.md)")


def _prefix(value: str) -> str:
    from pytest_vpstest.errors import ConfigError

    try:
        return check_prefix(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _up(args: argparse.Namespace) -> int:
    from pytest_vpstest import lab

    record = lab.up(args.topology, args.flavour, args.prefix, args.lab_dir)
    where = Path(record.lab_dir)
    print(
        f"lab '{record.prefix}' up: {len(record.nodes)} nodes, flavour {record.flavour}, "
        f"topology {record.topology}, {record.build_seconds:.1f} s"
    )
    print(f"inventory: {where / 'inventory.yaml'}")
    first = record.nodes[0]
    ssh_port = "" if first.port == 22 else f" -p {first.port}"
    print(
        f"ssh: ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile={where / 'known_hosts'} "
        f"-i {where / 'id_ed25519'}{ssh_port} {'root@' if record.flavour == 'netns' else ''}{first.host}"
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    from pytest_vpstest import lab

    removed = lab.down(args.prefix, args.lab_dir)
    print(
        f"lab '{args.prefix}' down"
        + (f": removed {', '.join(removed)}" if removed else ": nothing to remove")
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from pytest_vpstest import lab

    record, nodes = lab.status(args.prefix, args.lab_dir)
    if args.json:
        doc = {
            "prefix": record.prefix,
            "flavour": record.flavour,
            "topology": record.topology,
            "lab_dir": record.lab_dir,
            "mgmt_subnet": record.mgmt_subnet,
            "services": [{"kind": s.kind, "node": s.node, "bind": s.bind} for s in record.services],
            "nodes": [n.as_json() for n in nodes],
            "nat_protocols": record.extra.get("nat_protocols", []),
            "conditions": record.extra.get("conditions", {}),
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"lab '{record.prefix}' ({record.flavour}, topology {record.topology}) in {record.lab_dir}")
        header = ("node", "role", "nat", "data", "public", "ssh", "sshd", "agent")
        rows = [header]
        for n in nodes:
            ssh = n.host if n.port == 22 else f"{n.host}:{n.port}"
            rows.append((n.name, n.role, n.nat, n.data_ip, n.public_ip, ssh, _yn(n.sshd_up), _yn(n.agent_up)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0 if all(n.sshd_up for n in nodes) else 1


def _yn(flag: bool) -> str:
    return "up" if flag else "down"
