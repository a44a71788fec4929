#!/usr/bin/env python3
"""A minimal P2P node over plain TCP, wrapped for the vpstest probe contract (standard library only).

It shares nothing with the harness or its reference agent: it is what a user's adapter looks like.
The node runs as a daemon; every probe is a separate short command that prints one JSON object.

    tcpnode.py run --node NAME --listen HOST:PORT --state DIR      the daemon (deploy.start_command)
    tcpnode.py status --state DIR                                   is my daemon up, who am I
    tcpnode.py connect --peer-address HOST --port PORT --method M --timeout S
    tcpnode.py throughput --peer-address HOST --port PORT --seconds S
    tcpnode.py reset --state DIR

Only direct connections are implemented; asked for ``holepunch`` or ``relay`` it answers
``ok: false`` with the reason, as the contract asks (never a crash, never an exit status alone).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import socketserver
import sys
import time
from pathlib import Path

CHUNK = 64 * 1024


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline().strip()
        if line == b"PING":
            self.wfile.write(b"PONG\n")
        elif line == b"SINK":
            received, first, last = 0, None, None
            while chunk := self.rfile.read1(CHUNK):
                now = time.monotonic()
                first = first or now
                last = now
                received += len(chunk)
            span = (last - first) if first is not None and last is not None and last > first else 0.0
            self.wfile.write(json.dumps({"bytes": received, "seconds": span}).encode() + b"\n")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def _answer(**fields: object) -> int:
    print(json.dumps(fields))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    host, port = args.listen.rsplit(":", 1)
    with Server((host, int(port)), Handler) as server:
        peer_id = hashlib.sha256(f"{args.node}@{args.listen}".encode()).hexdigest()[:16]
        (state / "node.json").write_text(
            json.dumps({"node": args.node, "listen": args.listen, "peer_id": peer_id, "pid": os.getpid()})
        )
        server.serve_forever()
    return 0


def _dial(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        info = json.loads((Path(args.state) / "node.json").read_text())
    except (OSError, ValueError) as exc:
        return _answer(ok=False, node=None, addresses=None, error=f"not running: {exc}")
    host, port = info["listen"].rsplit(":", 1)
    try:
        with _dial(host, int(port), 2.0) as s:
            s.sendall(b"PING\n")
            up = s.makefile("rb").readline().strip() == b"PONG"
    except OSError as exc:
        return _answer(ok=False, node=info["node"], addresses=None, error=f"daemon not answering: {exc}")
    return _answer(ok=up, node=info["node"], addresses=[info["listen"]], peer_id=info["peer_id"],
                   ready=up, error=None if up else "daemon answered garbage")


def cmd_connect(args: argparse.Namespace) -> int:
    if args.method != "direct":
        return _answer(ok=False, method=args.method, path=None, rtt_ms=None,
                       error=f"method {args.method} is not implemented by this node")
    start = time.monotonic()
    try:
        # {timeout} is the time to *answer*: dial for most of it, keep the rest for printing.
        with _dial(args.peer_address, args.port, max(0.1, args.timeout * 0.8)) as s:
            s.sendall(b"PING\n")
            if s.makefile("rb").readline().strip() != b"PONG":
                raise OSError("no PONG")
    except OSError as exc:
        print(f"connect: {args.peer_address}:{args.port}: {exc}", file=sys.stderr)
        return _answer(ok=False, method="direct", path=None, rtt_ms=None, error=str(exc))
    rtt = (time.monotonic() - start) * 1000
    return _answer(ok=True, method="direct", path="direct", rtt_ms=round(rtt, 3), error=None)


def cmd_throughput(args: argparse.Namespace) -> int:
    block = b"\0" * CHUNK
    try:
        with _dial(args.peer_address, args.port, 5.0) as s:
            s.sendall(b"SINK\n")
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)
            report = json.loads(s.makefile("rb").readline())
    except (OSError, ValueError) as exc:
        return _answer(ok=False, bytes=None, seconds=None, mbps=None, error=str(exc))
    seconds = max(float(report["seconds"]), 1e-6)
    mbps = report["bytes"] * 8 / seconds / 1e6
    return _answer(ok=True, bytes=report["bytes"], seconds=round(seconds, 6), mbps=round(mbps, 3),
                   path="direct", error=None)


def cmd_reset(args: argparse.Namespace) -> int:
    return _answer(ok=True, error=None)  # no connection state is kept between probes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tcpnode")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--node", required=True)
    r.add_argument("--listen", required=True)
    r.add_argument("--state", required=True)
    r.set_defaults(func=cmd_run)
    for name, func in (("status", cmd_status), ("reset", cmd_reset)):
        c = sub.add_parser(name)
        c.add_argument("--state", required=True)
        c.set_defaults(func=func)
    c = sub.add_parser("connect")
    c.add_argument("--peer-address", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--method", default="direct")
    c.add_argument("--timeout", type=float, default=10.0)
    c.set_defaults(func=cmd_connect)
    t = sub.add_parser("throughput")
    t.add_argument("--peer-address", required=True)
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--seconds", type=float, default=2.0)
    t.set_defaults(func=cmd_throughput)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
