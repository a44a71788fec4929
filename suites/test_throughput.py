"""Throughput: per pair Mbps (avg/min/max over K streams) through the probe contract.

Where ``iperf3`` exists on both nodes and one end is reachable without a NAT, the pair's iperf3
ceiling is measured right after the pair's transfers (``fleet/iperf.py``: a one-off server bound to
the reachable node's data address, the client on the other) and reported beside the probe's
figure. The run's matrix engine measures the pairs: a transfer holds both its nodes alone, pairs
on disjoint nodes run at the same time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_vpstest.fleet.judging import path_of
from pytest_vpstest.fleet.probes import ProbeResult
from pytest_vpstest.plugin.engine import ProbeSpec
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


def matrix_cell(pair: Pair, run: RunContext) -> ProbeSpec:
    """K transfers, then the pair's iperf3 ceiling, holding both nodes alone (no two transfers share
    a node); pairs on disjoint nodes run at the same time."""
    seconds = float(run.suite_extra("throughput", "seconds", 2))
    return ProbeSpec(
        action="throughput",
        node=pair.src,
        peer=pair.dst,
        attempts=run.attempts_for("throughput"),
        timeout=seconds + run.suite("throughput").timeout_seconds,
        seconds=seconds,
        exclusive=True,
        ceiling=True,
    )


def test_throughput(
    pair: Pair, matrix_cell: Callable[[], list[ProbeResult]], vps_run: RunContext, vps_record: Recorder
) -> None:
    skip_if_not_deployed(vps_run, pair.src, pair.dst)
    attempts = vps_run.attempts_for("throughput")
    *results, ceiling_result = matrix_cell()
    skip_if_unreachable(vps_run, results)
    measured = [r for r in results if r.ok and isinstance(r.get("mbps"), int | float)]
    mbps = [round(float(r.get("mbps")), 3) for r in measured]
    ceiling, note = ceiling_result.get("mbps"), str(ceiling_result.get("note") or "")
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
