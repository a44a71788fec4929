"""Throughput: per pair Mbps (avg/min/max over K streams) through the probe contract.

Where ``iperf3`` exists on both nodes and one end is reachable without a NAT, the pair's iperf3
ceiling is measured in the same test (a one-off server bound to the reachable node's data
address, the client on the other, ``--json``) and reported beside the probe's figure.
"""

from __future__ import annotations

import json
import time
import zlib

import pytest

from pytest_vpstest.fleet.judging import path_of
from pytest_vpstest.fleet.probes import ProbeRunner, Transport
from pytest_vpstest.fleet.remote import quote_command
from pytest_vpstest.plugin.fixtures import (
    Recorder,
    RunContext,
    parametrize,
    skip_if_not_deployed,
    skip_if_unreachable,
)
from pytest_vpstest.plugin.pairs import Pair, throughput_pairs
from pytest_vpstest.suite import ThroughputMeasurement

from ._support import describe

pytestmark = [pytest.mark.vps_suite("throughput")]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    def pairs(run: RunContext) -> list[Pair]:
        return throughput_pairs(run.inventory, str(run.suite_extra("throughput", "pairs", "ring")))

    parametrize(metafunc, "pair", pairs, lambda p: p.id)


def _has_iperf3(transport: Transport, node: str) -> bool:
    r = transport.run(node, "command -v iperf3 >/dev/null 2>&1 && echo yes", 10.0)
    return r.exit_code == 0 and "yes" in r.stdout


def iperf3_ceiling(
    probe: ProbeRunner, run: RunContext, pair: Pair, seconds: float
) -> tuple[float | None, str]:
    """The pair's iperf3 Mbps (sender ``pair.src`` → receiver ``pair.dst``), or None with a reason."""
    inv, transport = run.inventory, probe.transport
    src, dst = inv.node(pair.src), inv.node(pair.dst)
    if not (_has_iperf3(transport, src.name) and _has_iperf3(transport, dst.name)):
        return None, "iperf3 not installed on both nodes"
    # The server must sit on a node others can reach; -R makes the server the sender.
    if dst.nat == "none":
        server, client, reverse = dst, src, False
    elif src.nat == "none":
        server, client, reverse = src, dst, True
    else:
        return None, "both nodes are behind NATs: no iperf3 path without traversal"
    address = probe.plan_for(server.name).p2p_address
    port = 5300 + zlib.crc32(pair.id.encode()) % 500
    # --idle-timeout: a one-off server whose client never came exits on its own.
    server_cmd = "iperf3 -s -1 -D -B {a} -p {p} --idle-timeout {idle}"
    client_cmd = "iperf3 -c {a} -p {p} -t {t} --json --connect-timeout 5000" + (" -R" if reverse else "")
    with probe.slots.hold(src.name, dst.name):
        start = transport.run(
            server.name, quote_command(server_cmd, a=address, p=port, idle=int(seconds) + 30), 10.0
        )
        if start.exit_code != 0:
            return None, f"iperf3 server did not start: {start.stderr.strip()[:200]}"
        for _ in range(3):  # the daemon may not listen yet when -D returns
            r = transport.run(
                client.name,
                quote_command(client_cmd, a=address, p=port, t=max(1, int(seconds))),
                seconds + 20.0,
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


def test_throughput(pair: Pair, probe: ProbeRunner, vps_run: RunContext, vps_record: Recorder) -> None:
    skip_if_not_deployed(vps_run, pair.src, pair.dst)
    settings = vps_run.suite("throughput")
    seconds = float(vps_run.suite_extra("throughput", "seconds", 2))
    attempts = vps_run.attempts_for("throughput")
    results = [
        probe.throughput(pair.src, pair.dst, seconds, seconds + settings.timeout_seconds)
        for _ in range(attempts)
    ]
    skip_if_unreachable(vps_run, results)
    measured = [r for r in results if r.ok and isinstance(r.get("mbps"), int | float)]
    mbps = [round(float(r.get("mbps")), 3) for r in measured]
    ceiling, note = iperf3_ceiling(probe, vps_run, pair, seconds)
    vps_record(
        ThroughputMeasurement(
            suite="throughput",
            src=pair.src,
            dst=pair.dst,
            method="direct",
            attempts=attempts,
            success=len(mbps),
            mbps=mbps,
            iperf3_mbps=ceiling,
            iperf3_note=note,
            paths=[path_of(r) for r in measured],
            failures=[r.evidence() for r in results if not r.ok][:3],
        ),
        nodes=(pair.src, pair.dst),
        avg_mbps=round(sum(mbps) / len(mbps), 1) if mbps else None,
        iperf3_mbps=ceiling,
    )
    if not mbps:
        pytest.fail(f"{pair.id}: no throughput measured\n{describe(results)}", pytrace=False)
