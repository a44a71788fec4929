"""NAT traversal: hole punches between pairs with at least one NATed side, grouped by NAT-type pair.

K attempts per ordered pair with a cool-off between attempts (``tests.nat_traversal.nat_cooloff_seconds``)
so a NAT mapping from the previous attempt does not help the next. With a ``probes.reset`` template,
both nodes are reset before every attempt after the first (so the previous punch's connection and
caches do not help either); such an attempt holds both nodes alone while it runs. A punch counts only when the
connection is not relayed (path ``direct`` or ``punched``); any failed attempt fails the test, except
where NAT theory expects the punch to fail (an expected failure; a success there is an unexpected
pass). Per group: attempts, success, rate and a 95% Wilson interval.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_vpstest.fleet.judging import judge_connect
from pytest_vpstest.fleet.probes import ProbeResult
from pytest_vpstest.nat_theory import expected_failure
from pytest_vpstest.plugin.engine import ProbeSpec
from pytest_vpstest.plugin.fixtures import (
    Recorder,
    RunContext,
    parametrize,
    skip_if_not_deployed,
    skip_if_unreachable,
)
from pytest_vpstest.plugin.pairs import Pair, nat_traversal_pairs
from pytest_vpstest.suite import NatTraversalMeasurement

from ._support import connected, failure_evidence, rtts, settle

pytestmark = [pytest.mark.vps_suite("nat_traversal"), pytest.mark.needs_nat, pytest.mark.soak]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize(metafunc, "pair", lambda run: nat_traversal_pairs(run.inventory), lambda p: p.id)


def matrix_cell(pair: Pair, run: RunContext) -> ProbeSpec:
    """The pair's K punches, one after another with the cool-off between them; other pairs punch
    meanwhile."""
    settings = run.suite("nat_traversal")
    return ProbeSpec(
        action="connect",
        node=pair.src,
        peer=pair.dst,
        attempts=run.attempts_for("nat_traversal"),
        timeout=settings.timeout_seconds,
        method="holepunch",
        cooloff=settings.nat_cooloff_seconds,
        reset=bool(run.project_config.probes.reset),
    )


def test_hole_punch(
    pair: Pair, matrix_cell: Callable[[], list[ProbeResult]], vps_run: RunContext, vps_record: Recorder
) -> None:
    skip_if_not_deployed(vps_run, pair.src, pair.dst)
    attempts = vps_run.attempts_for("nat_traversal")
    results = matrix_cell()
    skip_if_unreachable(vps_run, results)
    success = sum(connected(r, "holepunch") for r in results)
    expected = expected_failure(pair.src_nat, pair.dst_nat, "holepunch")
    verdict = judge_connect(f"{pair.id} ({pair.nat_group})", results, "holepunch", expected)
    vps_record(
        NatTraversalMeasurement(
            suite="nat_traversal",
            src=pair.src,
            dst=pair.dst,
            method="holepunch",
            group=pair.nat_group,
            attempts=attempts,
            success=success,
            paths=[r.get("path") for r in results],
            rtt_ms=rtts(results),
            failures=failure_evidence(results, "holepunch"),
            outcome=verdict.outcome,
        ),
        nodes=(pair.src, pair.dst),
        nat_group=pair.nat_group,
        success=f"{success}/{attempts}",
    )
    settle(verdict, vps_record.item)
