"""One non-blocking UDP socket driven by the asyncio loop's reader callback.

The node owns the socket itself (instead of an asyncio transport) so one readable event drains
many datagrams, which is what lets bulk transfer keep up with the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Callable

from .wire import Addr, format_addr

__all__ = ["BUFFER_BYTES", "DRAIN_BATCH", "SOL_UDP", "UDP_GRO", "UdpEndpoint"]

log = logging.getLogger("udp")

BUFFER_BYTES = 8 * 1024 * 1024
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_GRO = 104  # Linux >= 5.0; not exported by the socket module
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
DRAIN_BATCH = 512


def _grow_buffers(sock: socket.socket) -> None:
    force = {
        socket.SO_RCVBUF: getattr(socket, "SO_RCVBUFFORCE", None),
        socket.SO_SNDBUF: getattr(socket, "SO_SNDBUFFORCE", None),
    }
    for option, forced in force.items():
        # The *FORCE variants pass the sysctl cap but need CAP_NET_ADMIN; fall back quietly.
        try:
            if forced is None:
                raise OSError
            sock.setsockopt(socket.SOL_SOCKET, forced, BUFFER_BYTES)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)


class UdpEndpoint:
    def __init__(
        self,
        bind: Addr,
        on_datagram: Callable[[bytes, Addr], None],
        on_segments: Callable[[bytes, int, Addr], None] | None = None,
    ) -> None:
        """``on_datagram(data, source)`` for each datagram; ``on_segments(data, size, source)``, when
        given, for a receive-offload read holding several datagrams of ``size`` bytes back to back."""
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        _grow_buffers(self.sock)
        self.sock.bind(bind)
        self.sock.setblocking(False)
        host, port = self.sock.getsockname()[:2]
        self.local: Addr = (str(host), int(port))
        self._on_datagram = on_datagram
        self._on_segments = on_segments
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gro = False
        if sys.platform == "linux":
            try:
                self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self._gro = True
            except OSError:
                pass

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        if self._gro:
            self._readable_gro()
            return
        recvfrom = self.sock.recvfrom
        for _ in range(DRAIN_BATCH):
            try:
                data, src = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error queued on the socket
                log.debug("recv error: %s", exc)
                continue
            self._deliver(data, src)

    def _readable_gro(self) -> None:
        """Receive with UDP generic receive offload: one read may hold several datagrams of one
        flow, back to back, each ``gso_size`` bytes long (the last may be shorter)."""
        recvmsg = self.sock.recvmsg
        for _ in range(DRAIN_BATCH):
            try:
                data, ancdata, _flags, src = recvmsg(65535, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("recv error: %s", exc)
                continue
            size = 0
            for level, kind, value in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                    size = int.from_bytes(value[:4], sys.byteorder)
            if size <= 0 or size >= len(data):
                self._deliver(data, src)
                continue
            if self._on_segments is not None:
                try:
                    self._on_segments(data, size, (src[0], src[1]))
                except Exception:
                    log.exception("error handling datagrams from %s", format_addr((src[0], src[1])))
                continue
            for start in range(0, len(data), size):
                self._deliver(data[start : start + size], src)

    def _deliver(self, data: bytes, src: tuple[str, int]) -> None:
        try:
            self._on_datagram(data, (src[0], src[1]))
        except Exception:  # one bad datagram must not stop the reader
            log.exception("error handling a datagram from %s", format_addr((src[0], src[1])))

    def send(self, data: bytes | bytearray, addr: Addr) -> bool:
        """Send without blocking; False when the datagram could not be queued."""
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            log.debug("send to %s failed: %s", format_addr(addr), exc)
            return False
        return True

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
