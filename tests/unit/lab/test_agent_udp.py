"""The agent's UDP endpoint on loopback: datagrams sent in one segmentation-offload batch (or one by
one) reach the handler as the same datagrams, and a receive-offload read holding bulk data followed
by a control message is split correctly: data counted in place, the control message handled."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from pathlib import Path

import pytest

from pytest_vpstest.lab.agent import wire
from pytest_vpstest.lab.agent.node import Node, Route, RxSession
from pytest_vpstest.lab.agent.udp import UdpEndpoint

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="UDP offloads are Linux features")


@linux_only
def test_offloaded_batches_arrive_as_the_datagrams_that_were_sent() -> None:
    received: list[tuple[bytes, wire.Addr]] = []
    endpoint = UdpEndpoint(("127.0.0.91", 0), lambda data, src: received.append((data, src)))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.92", 0))
    source = sender.getsockname()
    datagrams = [wire.data_header(1, n) + bytes([n]) * 100 for n in range(5)]

    async def exchange() -> None:
        endpoint.start(asyncio.get_running_loop())
        segment = struct.pack("=H", len(datagrams[0]))
        sender.sendmsg([b"".join(datagrams)], [(socket.SOL_UDP, 103, segment)], 0, endpoint.local)
        sender.sendto(b'{"t":"ping"}', endpoint.local)
        for _ in range(200):
            if len(received) >= 6:
                return
            await asyncio.sleep(0.01)

    try:
        asyncio.run(exchange())
    finally:
        endpoint.close()
        sender.close()
    assert [d for d, _ in received] == [*datagrams, b'{"t":"ping"}']
    assert {src for _, src in received} == {source}


def test_a_segment_batch_counts_data_in_place_and_handles_a_trailing_control_message(tmp_path: Path) -> None:
    node = Node("me", ("127.0.0.93", 0), "http://127.0.0.1:9", [("127.0.0.94", 3478)], tmp_path)
    try:
        node.rx[7] = RxSession("peer", Route("direct", ("127.0.0.95", 9000)), started=0.0)
        size = wire.DATA_HEADER.size + 50
        control = wire.encode({"t": "crdt", "from": "peer", "counts": {"peer": 3}})
        batch = b"".join(wire.data_header(7, n) + b"x" * 50 for n in range(3)) + control
        assert len(control) < size  # a receive-offload read may end with one shorter datagram
        node._on_segments(batch, size, ("127.0.0.95", 9000))
        rx = node.rx[7]
        assert (rx.packets, rx.bytes, rx.highest) == (3, 150, 2)
        assert node.crdt.counts == {"peer": 3}
    finally:
        node.udp.close()


def test_an_all_data_read_is_counted_at_once_and_acknowledged(tmp_path: Path) -> None:
    node = Node("me", ("127.0.0.96", 0), "http://127.0.0.1:9", [("127.0.0.94", 3478)], tmp_path)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.97", 0))
    peer.settimeout(2)
    try:
        route = Route("direct", peer.getsockname())
        node.rx[7] = RxSession("peer", route, started=0.0, packets=15, bytes=0, highest=14)
        node.rx[8] = RxSession("peer", route, started=0.0)
        size = wire.DATA_HEADER.size + 50
        node._on_segments(
            b"".join(wire.data_header(7, n) + b"x" * 50 for n in (15, 16, 17)), size, route.addr
        )
        assert (node.rx[7].packets, node.rx[7].bytes, node.rx[7].highest) == (18, 150, 17)
        # Crossing a multiple of 16 datagrams sends one acknowledgement with the highest sequence.
        assert wire.parse_ack(peer.recv(100)) == (7, 17)
        # Two sessions in one read: each datagram is counted for its own session.
        mixed = wire.data_header(7, 18) + b"y" * 50 + wire.data_header(8, 0) + b"z" * 50
        node._on_segments(mixed, size, route.addr)
        assert (node.rx[7].packets, node.rx[8].packets, node.rx[8].bytes) == (19, 1, 50)
    finally:
        node.udp.close()
        peer.close()
