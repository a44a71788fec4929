"""Connectivity: every ordered pair of peer nodes × {direct, holepunch, relay}, K attempts each
(direct dials into NATed nodes only with ``direct_to_nat: true``; see pairs.connectivity_pairs).

Per-category attempts/success/rate go to the state file's ``test_results.suites.connectivity``. A pair's
test fails only on a hard error: a relay that never connects, a hole punch reported as relayed,
or a probe that never gave a valid answer. Success rates are judged by the criteria.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_vpstest.fleet.probes import ProbeResult
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

from ._support import connected, describe, failure_evidence, rtts

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
        ),
        nodes=(pair.src, pair.dst),
        success=f"{success}/{attempts}",
    )
    if not any(r.valid for r in results):
        pytest.fail(f"{pair.id}: the probe never gave a valid answer\n{describe(results)}", pytrace=False)
    relayed_punch = [r for r in results if pair.method == "holepunch" and r.ok and r.get("path") != "direct"]
    if relayed_punch:
        pytest.fail(
            f"{pair.id}: hole punch reported path {relayed_punch[0].get('path')!r}, not direct\n"
            f"{describe(results)}",
            pytrace=False,
        )
    if pair.method == "relay" and success == 0:
        pytest.fail(f"{pair.id}: relay never connected\n{describe(results)}", pytrace=False)
