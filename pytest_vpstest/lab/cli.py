"""``vpstest lab up | down | status``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_vpstest.lab.plan import DEFAULT_PREFIX, check_prefix

if TYPE_CHECKING:
    from pytest_vpstest.config import ProjectConfig
    from pytest_vpstest.lab.record import NodeStatus
    from pytest_vpstest.lab.sut_status import SutStatus

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

    status = lab_sub.add_parser(
        "status",
        help="show each node: role, NAT, addresses, sshd, and the software under test",
        description="With a project config (--config, else $VPSTEST_CONFIG, else ./vpstest.yaml when it "
        "exists) each node's software is asked through the config's status probe; without one, "
        "whether the reference agent's port is bound.",
    )
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    status.add_argument("--config", metavar="FILE", help="project config whose status probe asks each node")
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


def _project_config(arg: str | None) -> ProjectConfig | None:
    """The config as the other commands find it (``--config``, ``$VPSTEST_CONFIG``, ``./vpstest.yaml``);
    None when none is given and there is no ``./vpstest.yaml``."""
    from pytest_vpstest.commands.loading import load_config

    if arg is None and not os.environ.get("VPSTEST_CONFIG") and not Path("vpstest.yaml").exists():
        return None
    return load_config(arg)


def _status(args: argparse.Namespace) -> int:
    from pytest_vpstest import lab

    config = _project_config(args.config)  # a bad config is an error before any node is asked
    record, nodes = lab.status(args.prefix, args.lab_dir)
    sut = None
    if config is not None:  # only then the SSH client is needed (imported here)
        from pytest_vpstest.lab.sut_status import ask_nodes

        up = [n.name for n in nodes if n.sshd_up]
        sut = ask_nodes(Path(record.lab_dir) / "inventory.yaml", config, up)
    if args.json:
        doc = {
            "prefix": record.prefix,
            "flavour": record.flavour,
            "topology": record.topology,
            "lab_dir": record.lab_dir,
            "mgmt_subnet": record.mgmt_subnet,
            "services": [{"kind": s.kind, "node": s.node, "bind": s.bind} for s in record.services],
            "sut_check": "status probe" if sut is not None else "reference agent port",
            "nodes": [_node_json(n, sut) for n in nodes],
            "nat_protocols": record.extra.get("nat_protocols", []),
            "conditions": record.extra.get("conditions", {}),
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"lab '{record.prefix}' ({record.flavour}, topology {record.topology}) in {record.lab_dir}")
        last = "status probe" if sut is not None else "reference agent (udp 9000)"
        header = ("node", "role", "nat", "data", "public", "ssh", "sshd", last)
        rows = [header]
        for n in nodes:
            ssh = n.host if n.port == 22 else f"{n.host}:{n.port}"
            software = sut[n.name].text() if sut is not None and n.name in sut else _yn(n.agent_up)
            rows.append((n.name, n.role, n.nat, n.data_ip, n.public_ip, ssh, _yn(n.sshd_up), software))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
            print("  ".join([*cells, r[-1]]).rstrip())
    return 0 if all(n.sshd_up for n in nodes) else 1


def _node_json(node: NodeStatus, sut: dict[str, SutStatus] | None) -> dict[str, Any]:
    doc = node.as_json()
    if sut is not None and node.name in sut:
        doc["sut"] = {"state": sut[node.name].state, "reason": sut[node.name].reason}
    return doc


def _yn(flag: bool) -> str:
    return "up" if flag else "down"
