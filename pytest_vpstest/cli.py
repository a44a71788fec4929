"""The ``vpstest`` command line: one subcommand per module that owns the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pytest_vpstest import __version__
from pytest_vpstest.errors import VpsTestError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpstest",
        description="Build, deploy, test, fix and soak P2P software across a fleet of nodes.",
    )
    parser.add_argument("--version", action="version", version=f"vpstest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from pytest_vpstest.lab import cli as lab_cli

    lab_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.handler(args)
    except VpsTestError as exc:
        print(f"vpstest: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vpstest: interrupted", file=sys.stderr)
        return 130
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
