"""An RFC 5780-style NAT behaviour discovery: a UDP reflector and a classifier, stdlib only.

Two reflectors run on public hosts A and B, each bound to two ports P1 and P2. A reflector answers
a probe with the source address and port it observed (the client's mapped endpoint), from the port
the probe reached, from its other port (``other-port``), or, by asking its alternate server, from the
other address and port (``other-addr``).

The classifier, run behind the NAT under test:

* mapping (RFC 5780 section 4.3): from one socket, probe A:P1, B:P1 and B:P2. The same mapped
  endpoint every time is endpoint-independent; one per remote address is address-dependent; one per
  remote address and port is address-and-port-dependent.
* filtering (section 4.4): from a fresh socket that has contacted only A:P1, ask for an answer from
  B:P2 (arrives: endpoint-independent), else from A:P2 (arrives: address-dependent), else
  address-and-port-dependent.

Run ``python -m pytest_vpstest.lab.natcheck serve --bind ADDR --alt ADDR`` on each public host and
``python -m pytest_vpstest.lab.natcheck classify --server A --alt-server B`` behind the NAT; the
classifier prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import selectors
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ANSWER_TIMEOUT_S",
    "ATTEMPTS",
    "DEFAULT_PORTS",
    "MAX_LIFETIME_S",
    "Classification",
    "classify",
    "main",
    "serve",
]

DEFAULT_PORTS = (3479, 3480)
ANSWER_TIMEOUT_S = 0.4
ATTEMPTS = 3
MAX_LIFETIME_S = 3600.0


# --- reflector -----------------------------------------------------------------------------------


def serve(
    bind: str,
    alt: str | None,
    ports: tuple[int, int] = DEFAULT_PORTS,
    lifetime_s: float = 600.0,
    stop: threading.Event | None = None,
) -> None:
    """Answer probes on ``bind``:P1 and :P2 for at most ``lifetime_s`` seconds (or until ``stop``)."""
    with contextlib.ExitStack() as stack:
        socks = []
        for port in ports:
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((bind, port))
            socks.append(s)
        sel = stack.enter_context(selectors.DefaultSelector())
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        print(f"natcheck reflector on {bind} ports {ports[0]},{ports[1]}", flush=True)
        deadline = time.monotonic() + min(lifetime_s, MAX_LIFETIME_S)
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            for key, _ in sel.select(timeout=0.1):
                index = int(key.data)
                try:
                    data, (host, port) = socks[index].recvfrom(2048)
                    msg = json.loads(data)
                except (OSError, ValueError):
                    continue
                if isinstance(msg, dict):
                    _handle(msg, f"{host}:{port}", socks, index, bind, alt, ports)


def _handle(
    msg: dict[str, Any],
    observed: str,
    socks: list[socket.socket],
    index: int,
    bind: str,
    alt: str | None,
    ports: tuple[int, int],
) -> None:
    op, reply_from = msg.get("op"), msg.get("reply_from", "same")
    if op == "relay":
        # From our alternate: answer ``to`` from our other port (other address and other port).
        answer = {"id": msg.get("id"), "mapped": msg.get("mapped"), "server": f"{bind}:{ports[1]}"}
        _send(socks[1], answer, str(msg.get("to")))
        return
    if op != "probe":
        return
    answer = {"id": msg.get("id"), "mapped": observed}
    if reply_from == "other-addr":
        if alt is not None:
            relay = {"op": "relay", "id": msg.get("id"), "to": observed, "mapped": observed}
            _send(socks[0], relay, f"{alt}:{ports[0]}")
        return
    out = socks[1 - index] if reply_from == "other-port" else socks[index]
    answer["server"] = f"{bind}:{ports[socks.index(out)]}"
    _send(out, answer, observed)


def _send(sock: socket.socket, msg: dict[str, Any], endpoint: str) -> None:
    host, port = endpoint.rsplit(":", 1)
    with contextlib.suppress(OSError, ValueError):
        sock.sendto(json.dumps(msg).encode(), (host, int(port)))


# --- classifier ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Classification:
    mapping: str  # endpoint-independent | address-dependent | address-and-port-dependent
    filtering: str
    local: str
    mapped: dict[str, str]  # destination -> mapped endpoint seen there
    from_other_address: bool  # an unsolicited answer from B:P2 reached us
    from_other_port: bool  # an unsolicited answer from A:P2 reached us

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _ask(sock: socket.socket, dest: tuple[str, int], reply_from: str, attempts: int) -> dict[str, Any] | None:
    """Send a probe to ``dest``; return the first matching answer (None after ``attempts`` tries)."""
    probe_id = secrets.token_hex(6)
    payload = json.dumps({"op": "probe", "id": probe_id, "reply_from": reply_from}).encode()
    for _ in range(attempts):
        sock.sendto(payload, dest)
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(2048)
            except TimeoutError:
                break
            try:
                answer = json.loads(data)
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("id") == probe_id:
                return answer
    return None


def _udp_socket(bind: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind, 0))
    return s


def classify(
    server: str, alt_server: str, ports: tuple[int, int] = DEFAULT_PORTS, bind: str = ""
) -> Classification:
    """Discover the mapping and filtering behaviour of the NAT between us and the reflectors."""
    a1, b1, b2 = (server, ports[0]), (alt_server, ports[0]), (alt_server, ports[1])
    mapped: dict[str, str] = {}
    with _udp_socket(bind) as s:
        host, port = s.getsockname()
        local = f"{host}:{port}"
        for dest in (a1, b1, b2):
            answer = _ask(s, dest, "same", ATTEMPTS)
            if answer is None:
                raise RuntimeError(f"no answer from reflector {dest[0]}:{dest[1]}")
            mapped[f"{dest[0]}:{dest[1]}"] = str(answer["mapped"])
    m_a1, m_b1, m_b2 = (mapped[f"{h}:{p}"] for h, p in (a1, b1, b2))
    if m_a1 == m_b1 == m_b2:
        mapping = "endpoint-independent"
    elif m_b1 == m_b2:
        mapping = "address-dependent"
    else:
        mapping = "address-and-port-dependent"
    with _udp_socket(bind) as s:
        if _ask(s, a1, "same", ATTEMPTS) is None:
            raise RuntimeError(f"no answer from reflector {a1[0]}:{a1[1]}")
        from_other_address = _ask(s, a1, "other-addr", 2) is not None
        from_other_port = _ask(s, a1, "other-port", 2) is not None
    if from_other_address:
        filtering = "endpoint-independent"
    elif from_other_port:
        filtering = "address-dependent"
    else:
        filtering = "address-and-port-dependent"
    return Classification(mapping, filtering, local, mapped, from_other_address, from_other_port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="natcheck", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run a reflector")
    s.add_argument("--bind", required=True)
    s.add_argument("--alt", help="address of the alternate reflector (for other-address answers)")
    s.add_argument("--ports", default=f"{DEFAULT_PORTS[0]},{DEFAULT_PORTS[1]}")
    s.add_argument("--lifetime", type=float, default=600.0, help="seconds before exiting (max 3600)")
    c = sub.add_parser("classify", help="classify the NAT in front of this host; prints JSON")
    c.add_argument("--server", required=True)
    c.add_argument("--alt-server", required=True)
    c.add_argument("--ports", default=f"{DEFAULT_PORTS[0]},{DEFAULT_PORTS[1]}")
    args = parser.parse_args(argv)
    p1, p2 = (int(p) for p in args.ports.split(","))
    if args.cmd == "serve":
        serve(args.bind, args.alt, (p1, p2), args.lifetime)
        return 0
    try:
        result = classify(args.server, args.alt_server, (p1, p2))
    except (RuntimeError, OSError) as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    print(json.dumps({"ok": True, **result.as_json()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
