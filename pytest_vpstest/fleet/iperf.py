"""A pair's iperf3 ceiling: what plain TCP reaches between two nodes, measured beside the SUT.

A one-off ``iperf3`` server is started on whichever node of the pair others can reach (not behind
a NAT), bound to its data address, and the client runs on the other (``-R`` when the sender is
the server's side). The caller keeps the link to itself while this runs (the engine's exclusive
throughput steps do).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable

from pytest_vpstest.config import Inventory
from pytest_vpstest.fleet.node import NodePlan
from pytest_vpstest.fleet.probes import Transport
from pytest_vpstest.fleet.remote import quote_command

__all__ = ["iperf3_ceiling"]


def _has_iperf3(transport: Transport, node: str) -> bool:
    r = transport.run(node, "command -v iperf3 >/dev/null 2>&1 && echo yes", 10.0)
    return r.exit_code == 0 and "yes" in r.stdout


def iperf3_ceiling(
    transport: Transport,
    inventory: Inventory,
    plan_for: Callable[[str], NodePlan],
    src_name: str,
    dst_name: str,
    seconds: float,
) -> tuple[float | None, str]:
    """The pair's iperf3 Mbps (sender ``src_name`` → receiver ``dst_name``), or None with a reason.
    The server binds the reachable node's data address from its plan."""
    src, dst = inventory.node(src_name), inventory.node(dst_name)
    if not (_has_iperf3(transport, src.name) and _has_iperf3(transport, dst.name)):
        return None, "iperf3 not installed on both nodes"
    # The server must sit on a node others can reach; -R makes the server the sender.
    if dst.nat == "none":
        server, client, reverse = dst, src, False
    elif src.nat == "none":
        server, client, reverse = src, dst, True
    else:
        return None, "both nodes are behind NATs: no iperf3 path without traversal"
    address = plan_for(server.name).p2p_address
    # One port per ordered pair: two servers of disjoint links on one host never collide.
    port = 5300 + zlib.crc32(f"{src.name}->{dst.name}".encode()) % 500
    # --idle-timeout: a one-off server whose client never came exits on its own.
    server_cmd = "iperf3 -s -1 -D -B {a} -p {p} --idle-timeout {idle}"
    client_cmd = "iperf3 -c {a} -p {p} -t {t} --json --connect-timeout 5000" + (" -R" if reverse else "")
    start = transport.run(
        server.name, quote_command(server_cmd, a=address, p=port, idle=int(seconds) + 30), 10.0
    )
    if start.exit_code != 0:
        return None, f"iperf3 server did not start: {start.stderr.strip()[:200]}"
    for _ in range(3):  # the daemon may not listen yet when -D returns
        r = transport.run(
            client.name, quote_command(client_cmd, a=address, p=port, t=max(1, int(seconds))), seconds + 20.0
        )
        if "refused" not in r.stdout + r.stderr:
            break
        time.sleep(0.3)
    try:
        data = json.loads(r.stdout)
        bps = float(data["end"]["sum_received"]["bits_per_second"])
    except (ValueError, KeyError, TypeError):
        return None, f"iperf3 client gave no result (exit {r.exit_code}): {r.stderr.strip()[:200]}"
    return round(bps / 1e6, 1), "ok"
