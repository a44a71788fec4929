"""The bootstrap service: address discovery, hole-punch rendezvous, relay and keepalives (UDP).

``BootstrapState.handle`` is the whole protocol as a pure function of (datagram, source,
time) returning the datagrams to send; ``serve`` is the socket loop around it.

Messages (JSON unless noted; see ``wire.py`` for framing):

- ``hello {node, id}`` → ``hello_ok {id, mapped}``: registers ``node`` at the source address
  the bootstrap saw (its mapped public address) and refreshes it; doubles as the keepalive
  that holds the node's NAT mapping open.
- ``punch_req {node, peer, session, timeout, id}`` → ``punch`` to *both* nodes at the same
  moment, each carrying the other's observed address (``initiator`` true for the requester),
  or ``error {id, error}`` when the peer is unknown here.
- ``R`` relay datagrams from a registered node → ``F`` datagrams to the named registered node,
  or ``relay_error {to, error}`` back to the sender.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from types import FrameType

from . import wire
from .wire import Addr

__all__ = ["NODE_TTL_SECONDS", "BootstrapState", "Outbox", "serve"]

log = logging.getLogger("bootstrap")

Outbox = list[tuple[bytes, Addr]]

# A node that sent nothing for this long is forgotten (keepalives come every few seconds).
NODE_TTL_SECONDS = 60.0


@dataclass
class _Entry:
    addr: Addr
    last_seen: float


@dataclass
class BootstrapState:
    """Registered nodes by name and by observed address."""

    ttl: float = NODE_TTL_SECONDS
    by_name: dict[str, _Entry] = field(default_factory=dict)
    by_addr: dict[Addr, str] = field(default_factory=dict)
    relayed_datagrams: int = 0

    def _register(self, name: str, addr: Addr, now: float) -> None:
        old = self.by_name.get(name)
        if old is not None and old.addr != addr:
            self.by_addr.pop(old.addr, None)
        previous_owner = self.by_addr.get(addr)
        if previous_owner is not None and previous_owner != name:
            self.by_name.pop(previous_owner, None)
        self.by_name[name] = _Entry(addr, now)
        self.by_addr[addr] = name

    def lookup(self, name: str, now: float) -> Addr | None:
        """The observed address of a registered, fresh node."""
        entry = self.by_name.get(name)
        if entry is None or now - entry.last_seen > self.ttl:
            return None
        return entry.addr

    def expire(self, now: float) -> None:
        for name, entry in list(self.by_name.items()):
            if now - entry.last_seen > self.ttl:
                del self.by_name[name]
                self.by_addr.pop(entry.addr, None)

    def handle(self, data: bytes, src: Addr, now: float) -> Outbox:
        """The datagrams to send in answer to ``data`` from ``src``."""
        if not data:
            return []
        kind = data[0]
        if kind == wire.KIND_RELAY:
            return self._relay(data, src, now)
        if kind != wire.KIND_JSON:
            return []
        msg = wire.decode(data)
        if msg is None:
            return []
        kind_name = msg["t"]
        if kind_name == "hello":
            return self._hello(msg, src, now)
        if kind_name == "punch_req":
            return self._punch(msg, src, now)
        return self._err(msg.get("id"), f"unknown type {kind_name!r}", src)

    @staticmethod
    def _err(rid: object, error: str, dest: Addr, kind: str = "error", key: str = "id") -> Outbox:
        return [(wire.encode({"t": kind, key: rid, "error": error}), dest)]

    def _hello(self, msg: wire.Message, src: Addr, now: float) -> Outbox:
        name = msg.get("node")
        if not wire.valid_name(name):
            return self._err(msg.get("id"), "hello needs a valid 'node'", src)
        assert isinstance(name, str)
        self._register(name, src, now)
        return [(wire.encode({"t": "hello_ok", "id": msg.get("id"), "mapped": wire.format_addr(src)}), src)]

    def _punch(self, msg: wire.Message, src: Addr, now: float) -> Outbox:
        name, peer, session = msg.get("node"), msg.get("peer"), msg.get("session")
        rid = msg.get("id")
        if not (wire.valid_name(name) and wire.valid_name(peer) and isinstance(session, str)):
            return self._err(rid, "punch_req needs node, peer, session", src)
        assert isinstance(name, str) and isinstance(peer, str)
        # The requester's punch address must be the one this request came from.
        self._register(name, src, now)
        peer_addr = self.lookup(peer, now)
        if peer_addr is None:
            return self._err(rid, f"peer {peer} is not registered here", src)
        timeout = msg.get("timeout", 10)
        if not isinstance(timeout, int | float) or not 0 < timeout <= 120:
            timeout = 10
        base = {"t": "punch", "session": session, "timeout": timeout}
        to_requester = {
            **base,
            "id": rid,
            "peer": peer,
            "addr": wire.format_addr(peer_addr),
            "initiator": True,
        }
        to_peer = {**base, "peer": name, "addr": wire.format_addr(src), "initiator": False}
        return [(wire.encode(to_requester), src), (wire.encode(to_peer), peer_addr)]

    def _relay(self, data: bytes, src: Addr, now: float) -> Outbox:
        parsed = wire.parse_relay(data)
        if parsed is None:
            return []
        to, inner = parsed
        sender = self.by_addr.get(src)
        if sender is None or self.lookup(sender, now) is None:
            return self._err(to, "sender not registered here (send hello first)", src, "relay_error", "to")
        self.by_name[sender].last_seen = now
        target = self.lookup(to, now)
        if target is None:
            return self._err(to, f"peer {to} is not registered here", src, "relay_error", "to")
        self.relayed_datagrams += 1
        return [(wire.forward(sender, inner), target)]


_stopping = False


def _stop(signum: int, frame: FrameType | None) -> None:
    global _stopping
    _stopping = True


def serve(bind: Addr) -> int:
    """Run the bootstrap service on ``bind`` until SIGTERM/SIGINT."""
    family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
    sock.bind(bind)
    sock.settimeout(0.2)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    state = BootstrapState()
    log.info("bootstrap listening on udp %s", wire.format_addr(sock.getsockname()[:2]))
    last_expire = time.monotonic()
    while not _stopping:
        try:
            data, src = sock.recvfrom(65535)
        except TimeoutError:
            data, src = b"", ("", 0)
        except InterruptedError:
            continue
        now = time.monotonic()
        if data:
            for out, dest in state.handle(data, (src[0], src[1]), now):
                try:
                    sock.sendto(out, dest)
                except OSError as exc:
                    log.debug("send to %s failed: %s", wire.format_addr(dest), exc)
        if now - last_expire > 5:
            state.expire(now)
            last_expire = now
    sock.close()
    log.info("bootstrap stopped (relayed %d datagrams)", state.relayed_datagrams)
    return 0
