"""Verdicts (all-pass, threshold, improvement, custom), the Wilson interval, and one-line
CriteriaErrors that point at the column of a bad expression."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.criteria import (
    Check,
    CriteriaSpec,
    Verdict,
    custom,
    flatten_metrics,
    improvement,
    judge,
    threshold,
    wilson_interval,
)
from pytest_vpstest.errors import CriteriaError

METRICS = {
    "connectivity.direct.rate": 98.6,
    "connectivity.nat_traversed.rate": 87.5,
    "connectivity.relay.rate": 100.0,
    "throughput.avg_mbps": 45.3,
    "tests.failed": 0.0,
}


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(63, 72) == (77.92, 93.28)
    assert wilson_interval(0, 10) == (0.0, 27.75)
    assert wilson_interval(10, 10) == (72.25, 100.0)
    assert wilson_interval(0, 0) == (0.0, 100.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_threshold_uses_default_targets_and_reports_gap() -> None:
    v = threshold(METRICS, {}, ("connectivity",))
    assert not v.passed
    failed = v.failures
    assert failed == [
        {"metric": "connectivity.direct.rate", "op": ">=", "target": 99.0, "measured": 98.6, "gap": -0.4}
    ]
    assert any("gap -0.4" in line for line in v.summary_lines())


def test_threshold_configured_targets_floors_and_ceilings() -> None:
    metrics = METRICS | {"gossip.latency_ms.p95": 120.0, "gossip.delivery_rate": 100.0}
    v = threshold(
        metrics,
        {"connectivity": {"direct": 98}, "gossip": {"latency_ms.p95": 100, "delivery": 99}},
        ("connectivity", "gossip", "throughput"),
    )
    by_metric = {c.metric: c for c in v.checks}
    assert by_metric["connectivity.direct.rate"].passed
    assert by_metric["gossip.latency_ms.p95"].op == "<=" and not by_metric["gossip.latency_ms.p95"].passed
    assert not by_metric["gossip.delivery"].passed and by_metric["gossip.delivery"].measured is None
    # throughput has no configured target: its default floor applies.
    assert by_metric["throughput.avg_mbps"].target == 1.0
    assert by_metric["throughput.avg_mbps"].passed


def test_nat_traversal_defaults_per_pairing_from_expected_rates() -> None:
    metrics = {
        "tests.failed": 0.0,
        "nat_traversal.full_cone_symmetric.rate": 72.0,
        "nat_traversal.none_full_cone.rate": 90.0,
        "nat_traversal.port_restricted_symmetric.rate": 0.0,
    }
    v = threshold(metrics, {}, ("nat_traversal",))
    by_metric = {c.metric: c for c in v.checks}
    # the harder side sets the target: symmetric 70, full cone 95
    assert by_metric["nat_traversal.full_cone_symmetric.rate"].target == 70.0
    assert by_metric["nat_traversal.full_cone_symmetric.rate"].passed
    assert by_metric["nat_traversal.none_full_cone.rate"].target == 95.0
    assert not by_metric["nat_traversal.none_full_cone.rate"].passed
    # theory expects port-restricted~symmetric to fail: noted, not judged
    assert "nat_traversal.port_restricted_symmetric.rate" not in by_metric
    assert any("port-restricted~symmetric" in n and "expected by NAT theory" in n for n in v.notes)
    assert not v.passed


def test_nat_traversal_with_no_pairing_measured_cannot_pass() -> None:
    v = threshold({"tests.failed": 0.0}, {}, ("nat_traversal",))
    assert not v.passed
    assert any(c.metric == "nat_traversal.groups" and not c.passed for c in v.checks)


def test_nat_traversal_zero_percent_group_fails_by_default() -> None:
    metrics = {"tests.failed": 0.0, "nat_traversal.full_cone_address_restricted.rate": 0.0}
    v = threshold(metrics, {}, ("nat_traversal",))
    assert not v.passed


def test_test_failures_fail_every_mode() -> None:
    broken = METRICS | {"tests.failed": 2.0}
    assert not judge(CriteriaSpec("all-pass"), broken, ()).passed
    assert not judge(
        CriteriaSpec("threshold", targets={"connectivity": {"direct": 0}}), broken, ("connectivity",)
    ).passed
    assert not judge(CriteriaSpec("improvement"), broken, ()).passed
    assert not judge(CriteriaSpec("custom", "1 > 0"), broken, ()).passed


def test_all_pass_needs_every_rate_at_100() -> None:
    assert not judge(CriteriaSpec("all-pass"), METRICS, ()).passed
    perfect = {k: (100.0 if k.endswith("rate") else v) for k, v in METRICS.items()}
    assert judge(CriteriaSpec("all-pass"), perfect | {"gossip.crdt.converged": 1.0}, ()).passed
    assert not judge(CriteriaSpec("all-pass"), perfect | {"gossip.crdt.converged": 0.0}, ()).passed


def test_improvement_first_run_passes_with_note_then_compares() -> None:
    first = improvement(METRICS, None)
    assert first.passed and "first run" in first.notes[0]
    worse = METRICS | {"connectivity.relay.rate": 90.0}
    v = improvement(worse, METRICS)
    assert not v.passed
    assert [c.metric for c in v.checks if not c.passed] == ["connectivity.relay.rate"]
    assert improvement(worse, METRICS, tolerance=10).passed
    better = METRICS | {"connectivity.direct.rate": 99.9}
    assert "connectivity.direct.rate" in improvement(better, METRICS).notes[0]


def test_custom_expression_checks_each_conjunct() -> None:
    v = custom(METRICS, "connectivity.relay.rate >= 99 and throughput.avg_mbps * 2 > 100")
    assert not v.passed
    failing = [c for c in v.checks if not c.passed]
    assert len(failing) == 1 and failing[0].measured == pytest.approx(90.6) and failing[0].target == 100.0
    assert custom(METRICS, "not (connectivity.direct.rate < 50) or false").passed


@pytest.mark.parametrize(
    ("expression", "column", "text"),
    [
        ("", 1, "empty expression"),
        ("connectivity.relay.rate >", 26, "expected a number"),
        ("(1 < 2", 7, "expected ')'"),
        ("1 < 2 < 3", 7, "chained comparison"),
        ("connectivity.relay.rate >= 99 @ 1", 31, "unexpected character '@'"),
        ("nope.rate > 1", 1, "unknown metric 'nope.rate'"),
        ("connectivity.relay.rate", 1, "expected a condition"),
        ("1 + (2 > 1) > 0", 6, "expected a number, got a condition"),
        ("1 / 0 > 1", 3, "division by zero"),
        ("1 > 0 1", 7, "unexpected '1'"),
        ("a.and > 1", 1, "keyword used inside a metric name"),
    ],
)
def test_bad_expressions_raise_one_line_errors_at_the_column(expression: str, column: int, text: str) -> None:
    with pytest.raises(CriteriaError) as info:
        custom(METRICS, expression)
    message = str(info.value)
    assert "\n" not in message
    assert f"column {column}:" in message and text in message


def test_judge_custom_without_expression_and_unknown_mode() -> None:
    with pytest.raises(CriteriaError, match="needs an expression"):
        judge(CriteriaSpec("custom"), METRICS, ())
    with pytest.raises(CriteriaError, match="unknown criteria"):
        judge(CriteriaSpec("best-effort"), METRICS, ())


def test_flatten_metrics_normalises_keys() -> None:
    tree = {
        "nat_traversal": {"full-cone~symmetric": {"rate": 50.0, "ci95": [1, 2]}},
        "gossip": {"crdt": {"converged": True}},
    }
    assert flatten_metrics(tree) == {
        "nat_traversal.full_cone_symmetric.rate": 50.0,
        "gossip.crdt.converged": 1.0,
    }


@given(st.integers(min_value=1, max_value=10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_brackets_the_observed_rate(case: tuple[int, int]) -> None:
    success, attempts = case
    lo, hi = wilson_interval(success, attempts)
    observed = 100.0 * success / attempts
    assert 0.0 <= lo <= hi <= 100.0
    assert lo - 0.01 <= observed <= hi + 0.01


# --------------------------------------------------------------------------------------------
# Verdict.from_json beside to_json

_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
_checks = st.builds(
    Check,
    metric=st.text(max_size=20),
    op=st.sampled_from([">=", ">", "<=", "<", "==", "!=", "is"]),
    target=st.none() | _finite,
    measured=st.none() | _finite,
    passed=st.booleans(),
    note=st.text(max_size=20),
)
_verdicts = st.builds(
    Verdict,
    passed=st.booleans(),
    criteria=st.sampled_from(["all-pass", "threshold", "improvement", "custom"]),
    checks=st.lists(_checks, max_size=5).map(tuple),
    notes=st.lists(st.text(max_size=20), max_size=3).map(tuple),
    expression=st.none() | st.text(max_size=30),
)


@given(_verdicts)
def test_verdict_round_trips_through_results_json(verdict: Verdict) -> None:
    on_disk = json.loads(json.dumps(verdict.to_json()))
    assert Verdict.from_json(on_disk) == verdict


def test_verdict_from_json_reads_integers_as_floats_and_defaults_missing_keys() -> None:
    check = {"metric": "tests.failed", "target": 0, "measured": 0}
    v = Verdict.from_json({"passed": True, "checks": [check]})
    assert v == Verdict(True, "", (Check("tests.failed", ">=", 0.0, 0.0, False),))
    assert isinstance(v.checks[0].target, float)


def test_verdict_from_json_names_a_malformed_field() -> None:
    with pytest.raises(ValueError, match="measured must be a number"):
        Verdict.from_json({"checks": [{"metric": "m", "measured": [1]}]})
    with pytest.raises(ValueError, match="'checks' must be a list of objects"):
        Verdict.from_json({"checks": ["m >= 1"]})
