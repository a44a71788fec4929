"""One non-blocking UDP socket driven by the asyncio loop's reader callback.

The node owns the socket itself (instead of an asyncio transport) so one readable event drains
many datagrams, which is what lets bulk transfer keep up with the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from .wire import Addr, format_addr

log = logging.getLogger("udp")

BUFFER_BYTES = 8 * 1024 * 1024
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
    def __init__(self, bind: Addr, on_datagram: Callable[[bytes, Addr], None]) -> None:
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        _grow_buffers(self.sock)
        self.sock.bind(bind)
        self.sock.setblocking(False)
        host, port = self.sock.getsockname()[:2]
        self.local: Addr = (str(host), int(port))
        self._on_datagram = on_datagram
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        for _ in range(DRAIN_BATCH):
            try:
                data, src = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error queued on the socket
                log.debug("recv error: %s", exc)
                continue
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
