"""Command line: ``agent run | probe | registry | bootstrap``.

Exit status: 0 on success and for every probe answer (a failed probe is ``"ok": false`` in
its JSON), 2 for usage errors, 1 when a service cannot start (e.g. its address is taken).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__, wire

__all__ = ["build_parser", "main"]


def _addr(default_port: int | None) -> Callable[[str], wire.Addr]:
    def parse(text: str) -> wire.Addr:
        try:
            return wire.parse_addr(text, default_port)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _bootstraps(text: str) -> list[wire.Addr]:
    try:
        addrs = [wire.parse_addr(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not addrs:
        raise argparse.ArgumentTypeError("at least one HOST:PORT is required")
    return addrs


def _name(text: str) -> str:
    if not wire.valid_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid node name ([A-Za-z0-9][A-Za-z0-9._-]*)")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent", description="The pytest-vpstest reference P2P node.")
    parser.add_argument("--version", action="version", version=f"agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the P2P node")
    run.add_argument("--node", required=True, type=_name)
    run.add_argument("--bind", required=True, type=_addr(9000), help="ADDR[:PORT] (port 9000 by default)")
    run.add_argument("--registry", required=True, help="registry URL, e.g. http://198.18.0.1:8080")
    run.add_argument("--bootstrap", required=True, type=_bootstraps, help="HOST:PORT[,HOST:PORT]")
    run.add_argument("--home", type=Path, help="runtime directory (default: the zipapp's directory)")

    reg = sub.add_parser("registry", help="serve the HTTP peer registry")
    reg.add_argument("--bind", required=True, type=_addr(8080), help="ADDR[:PORT] (port 8080 by default)")
    reg.add_argument("--data", type=Path, help="persist peers to this JSON file")

    boot = sub.add_parser("bootstrap", help="serve UDP address discovery, rendezvous and relay")
    boot.add_argument("--bind", required=True, type=_addr(3478), help="ADDR[:PORT] (port 3478 by default)")

    from .probe import add_probe_parser

    add_probe_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "probe":
        from .probe import run_probe

        return run_probe(args)
    import logging  # not on the probe path: a probe's start-up is most of its cost

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "registry":
            from .registry import serve as serve_registry

            return serve_registry(args.bind, args.data)
        if args.command == "bootstrap":
            from .bootstrap import serve as serve_bootstrap

            return serve_bootstrap(args.bind)
        from .node import run_node

        return run_node(args.node, args.bind, args.registry, args.bootstrap, args.home)
    except OSError as exc:
        logging.getLogger("agent").error(
            "%s: cannot start on %s: %s", args.command, wire.format_addr(args.bind), exc
        )
        return 1
