"""Connectivity: every ordered pair of peer nodes × {direct, holepunch, relay}, K attempts each
(direct dials into NATed nodes only with ``direct_to_nat: true``; see pairs.connectivity_pairs).

Per-category attempts/success/rate go to the state file's ``test_results.suites.connectivity``. A pair's
test passes only when every attempt connected (``ok: true``; a hole punch not relayed); where NAT
theory expects a hole punch to fail it is an expected failure, and a success there an unexpected
pass (fleet/judging.py). Success rates are judged by the criteria.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_vpstest.fleet.judging import judge_connect
from pytest_vpstest.fleet.probes import ProbeResult
from pytest_vpstest.nat_theory import expected_failure, may_fail
from pytest_vpstest.plugin.engine import ProbeSpec
from pytest_vpstest.plugin.fixtures import (
    Recorder,
    RunContext,
    parametrize,
    skip_if_not_deployed,
    skip_if_unreachable,
)
from pytest_vpstest.plugin.pairs import Pair, connectivity_pairs
from pytest_vpstest.suite import ConnectivityMeasurement

from ._support import connected, failure_evidence, rtts, settle

pytestmark = [pytest.mark.vps_suite("connectivity"), pytest.mark.soak]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize(
        metafunc,
        "pair",
        lambda run: connectivity_pairs(
            run.inventory, direct_to_nat=bool(run.suite_extra("connectivity", "direct_to_nat", False))
        ),
        lambda p: p.id,
    )


def matrix_cell(pair: Pair, run: RunContext) -> ProbeSpec:
    """The pair's K connect attempts, measured by the run's matrix engine. No cool-off is asked
    for here, so the attempts of one pair may run at the same time."""
    return ProbeSpec(
        action="connect",
        node=pair.src,
        peer=pair.dst,
        attempts=run.attempts_for("connectivity"),
        timeout=run.suite("connectivity").timeout_seconds,
        method=pair.method,
    )


def test_connect(
    pair: Pair, matrix_cell: Callable[[], list[ProbeResult]], vps_run: RunContext, vps_record: Recorder
) -> None:
    skip_if_not_deployed(vps_run, pair.src, pair.dst)
    attempts = vps_run.attempts_for("connectivity")
    results = matrix_cell()
    skip_if_unreachable(vps_run, results)
    success = sum(connected(r, pair.method) for r in results)
    expected = expected_failure(pair.src_nat, pair.dst_nat, pair.method)
    verdict = judge_connect(
        pair.id, results, pair.method, expected, may_fail(pair.src_nat, pair.dst_nat, pair.method)
    )
    vps_record(
        ConnectivityMeasurement(
            suite="connectivity",
            src=pair.src,
            dst=pair.dst,
            method=pair.method,
            category=pair.category,
            attempts=attempts,
            success=success,
            paths=[r.get("path") for r in results],
            rtt_ms=rtts(results),
            failures=failure_evidence(results, pair.method),
            outcome=verdict.outcome,
        ),
        nodes=(pair.src, pair.dst),
        success=f"{success}/{attempts}",
    )
    settle(verdict, vps_record.item)
