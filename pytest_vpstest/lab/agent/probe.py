"""``agent probe ACTION ... --json``: the probe contract, answered by the running agent.

Prints exactly one JSON object on stdout. Exit status is non-zero only for usage errors
(argparse exits 2); an agent that is not running, a timeout or a failed action is
``"ok": false`` with an ``error``. Every answer carries the action's contract keys (null when
unknown), so a consumer can index them without guards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import control, wire
from .contract import CONTRACT_KEYS, METHODS, failure
from .paths import control_socket, default_home

__all__ = ["CONTRACT_KEYS", "METHODS", "add_probe_parser", "build_request", "failure", "run_probe"]

def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be > 0 and at most 3600")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 10**12:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return int(text)


def _concurrency(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 1024")
    return int(text)


def _peer(text: str) -> str:
    if not wire.valid_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid node name")
    return text


def add_probe_parser(sub: Any) -> None:
    probe: argparse.ArgumentParser = sub.add_parser("probe", help="ask the running agent (probe contract)")
    actions = probe.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="print JSON (always on; accepted for templates)")
        p.add_argument("--home", type=Path, help="the agent's runtime directory")
        return p

    action("status", "node name, addresses, mapped address, known peers")
    p = action("connect", "connect to a peer by a method")
    p.add_argument("--peer", required=True, type=_peer)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--timeout", type=_positive, default=10.0)
    p = action("publish", "flood a gossip message")
    p.add_argument("--topic", default="probe")
    p = action("received", "was a gossip message received here")
    p.add_argument("--id", required=True, dest="message_id")
    p = action("throughput", "stream bulk data to a peer")
    p.add_argument("--peer", required=True, type=_peer)
    p.add_argument("--seconds", type=_positive, default=5.0)
    p = action("crdt", "increment (0 = read) the replicated counter")
    p.add_argument("--increment", type=_count, default=0)
    p = action("batch", "JSON request lines on stdin, one result line each as it finishes (docs/agent.md)")
    p.add_argument("--concurrency", type=_concurrency, default=64, help="requests run at once (default 64)")


def build_request(args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """The control request for the parsed probe arguments and how long to wait for it."""
    action: str = args.action
    if action == "connect":
        return {
            "action": action,
            "peer": args.peer,
            "method": args.method,
            "timeout": args.timeout,
        }, args.timeout + 10
    if action == "publish":
        return {"action": action, "topic": args.topic}, 10
    if action == "received":
        return {"action": action, "id": args.message_id}, 10
    if action == "throughput":
        return {"action": action, "peer": args.peer, "seconds": args.seconds}, args.seconds + 30
    if action == "crdt":
        return {"action": action, "increment": args.increment}, 10
    return {"action": action}, 10


def run_probe(args: argparse.Namespace) -> int:
    home: Path = args.home if args.home is not None else default_home()
    if args.action == "batch":
        import sys

        from .batch import run_batch

        return run_batch(control_socket(home), sys.stdin, sys.stdout, args.concurrency)
    payload, timeout = build_request(args)
    known = {"method": args.method} if args.action == "connect" else {}
    try:
        answer = control.request(control_socket(home), payload, timeout)
    except control.AgentNotRunning as exc:
        answer = failure(args.action, f"agent not running: {exc}", **known)
    except TimeoutError:
        answer = failure(args.action, f"agent did not answer within {timeout:g} s", **known)
    except (OSError, ValueError) as exc:
        answer = failure(args.action, f"agent gave no usable answer: {exc}", **known)
    print(json.dumps(answer, sort_keys=True))
    return 0
