"""An RFC 5780-style NAT behaviour discovery for UDP and TCP: a reflector and a classifier, stdlib only.

Two reflectors run on public hosts A and B, each bound to two ports P1 and P2 (UDP and TCP). A
reflector answers a probe with the source address and port it observed (the client's mapped
endpoint), from the port the probe reached, from its other port (``other-port``), or, by asking its
alternate server, from the other address and port (``other-addr``). Over TCP a probe is a JSON line
on a connection; the ``same`` answer comes back on it, the others on a new connection the reflector
opens to the observed endpoint (the classifier listens there with ``SO_REUSEPORT``).

The classifier, run behind the NAT under test:

* mapping (RFC 5780 section 4.3): from one socket, probe A:P1, B:P1 and B:P2. The same mapped
  endpoint every time is endpoint-independent; one per remote address is address-dependent; one per
  remote address and port is address-and-port-dependent.
* filtering (section 4.4): from a fresh socket that has contacted only A:P1, ask for an answer from
  B:P2 (arrives: endpoint-independent), else from A:P2 (arrives: address-dependent), else
  address-and-port-dependent.

Run ``python -m pytest_vpstest.lab.natcheck serve --bind ADDR --alt ADDR`` on each public host and
``python -m pytest_vpstest.lab.natcheck classify --server A --alt-server B [--protocol tcp]`` behind
the NAT; the classifier prints one JSON object.
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
from typing import Any, Literal

__all__ = [
    "ANSWER_TIMEOUT_S",
    "ATTEMPTS",
    "DEFAULT_PORTS",
    "MAX_LIFETIME_S",
    "Classification",
    "Protocol",
    "classify",
    "main",
    "serve",
]

Protocol = Literal["udp", "tcp"]
DEFAULT_PORTS = (3479, 3480)
ANSWER_TIMEOUT_S = 0.4
ATTEMPTS = 3
MAX_LIFETIME_S = 3600.0
# A TCP answer from another endpoint: how long the reflector tries to connect, the classifier waits.
TCP_CONNECT_TIMEOUT_S = 1.0
TCP_ANSWER_WAIT_S = 1.5


# --- reflector -----------------------------------------------------------------------------------


def serve(
    bind: str,
    alt: str | None,
    ports: tuple[int, int] = DEFAULT_PORTS,
    lifetime_s: float = 600.0,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Answer probes on ``bind``:P1 and :P2 for at most ``lifetime_s`` seconds (or until ``stop``);
    ``ready`` is set once every socket is bound and listening."""
    with contextlib.ExitStack() as stack:
        socks = []
        for port in ports:
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((bind, port))
            socks.append(s)
        listeners = [stack.enter_context(_tcp_socket(bind, port)) for port in ports]
        for lst in listeners:
            lst.listen(64)
        sel = stack.enter_context(selectors.DefaultSelector())
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        for i, lst in enumerate(listeners):
            sel.register(lst, selectors.EVENT_READ, ("tcp", i))
        print(f"natcheck reflector on {bind} ports {ports[0]},{ports[1]} (udp, tcp)", flush=True)
        if ready is not None:
            ready.set()
        deadline = time.monotonic() + min(lifetime_s, MAX_LIFETIME_S)
        done = threading.Event()
        stack.callback(done.set)
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            for key, _ in sel.select(timeout=0.1):
                if isinstance(key.data, tuple):
                    _accept(listeners[key.data[1]], bind, alt, ports, key.data[1], done)
                    continue
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
    if op == "relay" and msg.get("proto") == "tcp":
        # From our alternate: connect to ``to`` from our other port and answer there.
        answer = {"id": msg.get("id"), "mapped": msg.get("mapped"), "server": f"{bind}:{ports[1]}"}
        _spawn(_tcp_answer, bind, ports[1], answer, str(msg.get("to")))
        return
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


# --- TCP side of the reflector -------------------------------------------------------------------


def _tcp_socket(bind: str, port: int) -> socket.socket:
    """A TCP socket on ``bind:port`` that may share the port with a listener and other connections."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((bind, port))
    return s


def _spawn(target: Any, *args: Any) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def _accept(
    listener: socket.socket,
    bind: str,
    alt: str | None,
    ports: tuple[int, int],
    index: int,
    done: threading.Event,
) -> None:
    try:
        conn, (host, port) = listener.accept()
    except OSError:
        return
    _spawn(_tcp_session, conn, f"{host}:{port}", bind, alt, ports, index, done)


def _tcp_session(
    conn: socket.socket,
    observed: str,
    bind: str,
    alt: str | None,
    ports: tuple[int, int],
    index: int,
    done: threading.Event,
) -> None:
    """Answer each JSON line of one connection until the client closes it (or the reflector stops)."""
    with conn, contextlib.suppress(OSError):
        conn.settimeout(0.2)
        buffer = b""
        while not done.is_set():
            try:
                chunk = conn.recv(2048)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("op") == "probe":
                    _tcp_probe(conn, msg, observed, bind, alt, ports, index)


def _tcp_probe(
    conn: socket.socket,
    msg: dict[str, Any],
    observed: str,
    bind: str,
    alt: str | None,
    ports: tuple[int, int],
    index: int,
) -> None:
    answer = {"id": msg.get("id"), "mapped": observed}
    reply_from = msg.get("reply_from", "same")
    if reply_from == "same":
        answer["server"] = f"{bind}:{ports[index]}"
        conn.sendall(json.dumps(answer).encode() + b"\n")
    elif reply_from == "other-port":
        other = ports[1 - index]
        _spawn(_tcp_answer, bind, other, answer | {"server": f"{bind}:{other}"}, observed)
    elif reply_from == "other-addr" and alt is not None:
        relay = {"op": "relay", "proto": "tcp", "id": msg.get("id"), "to": observed, "mapped": observed}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _send(s, relay, f"{alt}:{ports[0]}")


def _tcp_answer(bind: str, port: int, answer: dict[str, Any], endpoint: str) -> None:
    """Open a connection from ``bind:port`` to ``endpoint`` and send ``answer`` on it (best effort:
    a NAT that filters it drops the SYN and the attempt times out)."""
    host, dport = endpoint.rsplit(":", 1)
    with contextlib.suppress(OSError, ValueError), _tcp_socket(bind, port) as s:
        s.settimeout(TCP_CONNECT_TIMEOUT_S)
        s.connect((host, int(dport)))
        s.sendall(json.dumps(answer).encode() + b"\n")
        # Let the client read before the close.
        s.settimeout(TCP_CONNECT_TIMEOUT_S)
        with contextlib.suppress(OSError):
            s.recv(1)


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
    server: str,
    alt_server: str,
    ports: tuple[int, int] = DEFAULT_PORTS,
    bind: str = "",
    protocol: Protocol = "udp",
) -> Classification:
    """Discover the mapping and filtering behaviour of the NAT between us and the reflectors."""
    if protocol == "tcp":
        return _classify_tcp(server, alt_server, ports, bind)
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
    mapping = _mapping_label(*(mapped[f"{h}:{p}"] for h, p in (a1, b1, b2)))
    with _udp_socket(bind) as s:
        if _ask(s, a1, "same", ATTEMPTS) is None:
            raise RuntimeError(f"no answer from reflector {a1[0]}:{a1[1]}")
        from_other_address = _ask(s, a1, "other-addr", 2) is not None
        from_other_port = _ask(s, a1, "other-port", 2) is not None
    filtering = _filtering_label(from_other_address, from_other_port)
    return Classification(mapping, filtering, local, mapped, from_other_address, from_other_port)


def _mapping_label(m_a1: str, m_b1: str, m_b2: str) -> str:
    if m_a1 == m_b1 == m_b2:
        return "endpoint-independent"
    if m_b1 == m_b2:
        return "address-dependent"
    return "address-and-port-dependent"


def _filtering_label(from_other_address: bool, from_other_port: bool) -> str:
    if from_other_address:
        return "endpoint-independent"
    if from_other_port:
        return "address-dependent"
    return "address-and-port-dependent"


def _tcp_ask(sock: socket.socket, reply_from: str, probe_id: str) -> None:
    sock.sendall(json.dumps({"op": "probe", "id": probe_id, "reply_from": reply_from}).encode() + b"\n")


def _read_line(sock: socket.socket, timeout: float) -> dict[str, Any] | None:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while b"\n" not in data:
            chunk = sock.recv(2048)
            if not chunk:
                break
            data += chunk
    try:
        value = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _tcp_mapped(bind: str, port: int, dest: tuple[str, int]) -> tuple[socket.socket, str]:
    """Connect from ``bind:port`` to ``dest``; the open connection and the endpoint ``dest`` saw."""
    s = _tcp_socket(bind, port)
    try:
        s.settimeout(ATTEMPTS * ANSWER_TIMEOUT_S * 2)
        s.connect(dest)
        probe_id = secrets.token_hex(6)
        _tcp_ask(s, "same", probe_id)
        answer = _read_line(s, ATTEMPTS * ANSWER_TIMEOUT_S * 2)
    except OSError as exc:
        s.close()
        raise RuntimeError(f"no answer from reflector {dest[0]}:{dest[1]} over tcp: {exc}") from None
    if answer is None or answer.get("id") != probe_id:
        s.close()
        raise RuntimeError(f"no answer from reflector {dest[0]}:{dest[1]} over tcp")
    return s, str(answer["mapped"])


def _tcp_answer_arrives(listener: socket.socket, probe_id: str) -> bool:
    """Whether a connection carrying the answer to ``probe_id`` reaches ``listener`` in time."""
    deadline = time.monotonic() + TCP_ANSWER_WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        listener.settimeout(left)
        try:
            conn, _ = listener.accept()
        except (TimeoutError, OSError):
            return False
        with conn:
            answer = _read_line(conn, max(0.1, deadline - time.monotonic()))
        if answer is not None and answer.get("id") == probe_id:
            return True
    return False


def _classify_tcp(server: str, alt_server: str, ports: tuple[int, int], bind: str) -> Classification:
    """The TCP classification: every probe travels on a connection opened from one local port, where
    a listener (``SO_REUSEPORT``) waits for the answers that come on connections from elsewhere."""
    a1, b1, b2 = (server, ports[0]), (alt_server, ports[0]), (alt_server, ports[1])
    mapped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(_tcp_socket(bind, 0))
        listener.listen(8)
        host, port = listener.getsockname()
        local = f"{host}:{port}"
        for dest in (a1, b1, b2):
            conn, seen = _tcp_mapped(bind, port, dest)
            stack.enter_context(conn)
            mapped[f"{dest[0]}:{dest[1]}"] = seen
    mapping = _mapping_label(*(mapped[f"{h}:{p}"] for h, p in (a1, b1, b2)))
    with contextlib.ExitStack() as stack:
        # A fresh local port that has contacted A:P1 only.
        listener = stack.enter_context(_tcp_socket(bind, 0))
        listener.listen(8)
        conn, _ = _tcp_mapped(bind, listener.getsockname()[1], a1)
        stack.enter_context(conn)
        seen_from: dict[str, bool] = {}
        for reply_from in ("other-addr", "other-port"):
            probe_id = secrets.token_hex(6)
            _tcp_ask(conn, reply_from, probe_id)
            seen_from[reply_from] = _tcp_answer_arrives(listener, probe_id)
    from_other_address, from_other_port = seen_from["other-addr"], seen_from["other-port"]
    filtering = _filtering_label(from_other_address, from_other_port)
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
    c.add_argument("--protocol", choices=("udp", "tcp"), default="udp")
    args = parser.parse_args(argv)
    p1, p2 = (int(p) for p in args.ports.split(","))
    if args.cmd == "serve":
        serve(args.bind, args.alt, (p1, p2), args.lifetime)
        return 0
    try:
        result = classify(args.server, args.alt_server, (p1, p2), protocol=args.protocol)
    except (RuntimeError, OSError) as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    print(json.dumps({"ok": True, "protocol": args.protocol, **result.as_json()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
