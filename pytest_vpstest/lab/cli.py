"""``vpstest lab up | down | status``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("lab", help="build, inspect or remove the embedded lab")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    for name, text in (("up", "build the lab"), ("down", "remove the lab"), ("status", "show nodes")):
        q = lab_sub.add_parser(name, help=text)
        q.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    raise SystemExit(f"vpstest lab {args.lab_command}: not built yet")
