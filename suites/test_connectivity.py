"""Connectivity: every ordered pair of peer nodes × {direct, holepunch, relay}, K attempts each
(direct dials into NATed nodes only with ``direct_to_nat: true``; see pairs.connectivity_pairs).

Per-category attempts/success/rate go to the state file's ``test_results.suites.connectivity``. A pair's
test fails only on a hard error: a relay that never connects, a hole punch reported as relayed,
or a probe that never gave a valid answer. Success rates are judged by the criteria.
"""

from __future__ import annotations

import pytest

from pytest_vpstest.fleet.probes import ProbeRunner
from pytest_vpstest.plugin.fixtures import Recorder, RunContext, parametrize, skip_if_not_deployed
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


def test_connect(pair: Pair, probe: ProbeRunner, vps_run: RunContext, vps_record: Recorder) -> None:
    skip_if_not_deployed(vps_run, pair.src, pair.dst)
    settings = vps_run.suite("connectivity")
    attempts = vps_run.attempts_for("connectivity")
    results = [
        probe.connect(pair.src, pair.dst, pair.method, settings.timeout_seconds) for _ in range(attempts)
    ]
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
