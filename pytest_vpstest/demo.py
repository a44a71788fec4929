"""``vpstest demo``: the whole loop against the embedded lab (filled in below)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run the whole loop against the embedded lab")
    p.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--workspace", metavar="DIR", help="where to create the demo workspace")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    raise SystemExit("vpstest demo: not built yet")
