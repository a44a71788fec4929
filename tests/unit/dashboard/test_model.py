"""The dashboard's pure decisions: Tests colour and tooltip, Wilson interval, NAT theory, matrix, series."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.dashboard.model import (
    NodeTestFacts,
    ago,
    history_series,
    matrix_cells,
    node_tests_colour,
    node_tests_tooltip,
    theory_expects,
    wilson,
)

times = st.none() | st.floats(min_value=0, max_value=1e9, allow_nan=False)
facts = st.builds(
    NodeTestFacts,
    mode=st.sampled_from(["auto", "manual", "disabled"]),
    running=st.booleans(),
    loop_testing=st.booleans(),
    deploying=st.booleans(),
    changed_at=times,
    tested_at=times,
    passed=st.integers(0, 50),
    failed=st.integers(0, 50),
)


@given(facts)
def test_colour_follows_the_precedence_disabled_running_stale_failed_passed(f: NodeTestFacts) -> None:
    colour = node_tests_colour(f)
    if f.mode == "disabled":
        assert colour == "gray"
    elif f.running or (f.loop_testing and f.mode == "auto"):
        assert colour == "blue"  # the loop's TEST does not test manual nodes
    elif f.deploying or f.tested_at is None or (f.changed_at is not None and f.tested_at < f.changed_at):
        assert colour == "yellow"
    elif f.passed + f.failed == 0:
        assert colour == "yellow"  # nothing ran: not "all passed"
    else:
        assert colour == ("red" if f.failed else "green")


def test_the_loops_test_makes_only_auto_nodes_blue_and_manual_ones_wait_for_run_tests() -> None:
    deployed_after_test = {"tested_at": 100.0, "passed": 8, "changed_at": 150.0}
    assert node_tests_colour(NodeTestFacts(mode="auto", loop_testing=True, **deployed_after_test)) == "blue"
    manual = NodeTestFacts(mode="manual", loop_testing=True, **deployed_after_test)
    assert node_tests_colour(manual) == "yellow"
    assert node_tests_tooltip(manual, 210.0) == (
        "Last test: 1 min ago (8/8 passed); not run since the deploy 1 min ago; "
        "tests run manually for this node (Run tests)"
    )
    assert node_tests_colour(NodeTestFacts(mode="disabled", loop_testing=True)) == "gray"
    # Someone clicks Run tests: blue, then its result.
    assert node_tests_colour(NodeTestFacts(mode="manual", running=True, loop_testing=True)) == "blue"
    tested = NodeTestFacts(mode="manual", tested_at=200.0, passed=8, changed_at=150.0)
    assert node_tests_colour(tested) == "green"


def test_a_rollback_after_the_last_test_turns_the_node_yellow() -> None:
    tested = NodeTestFacts(tested_at=100.0, passed=8, changed_at=50.0)
    assert node_tests_colour(tested) == "green"
    assert node_tests_colour(NodeTestFacts(tested_at=100.0, passed=8, changed_at=150.0)) == "yellow"


def test_a_run_whose_every_test_skipped_is_not_green() -> None:
    skipped = NodeTestFacts(tested_at=100.0, passed=0, failed=0)
    assert node_tests_colour(skipped) == "yellow"
    assert node_tests_tooltip(skipped, 100.0) == "Last test: just now (0/0 passed); no test ran (all skipped)"


def test_tooltip_wording() -> None:
    f = NodeTestFacts(tested_at=1000.0, passed=8)
    assert node_tests_tooltip(f, 1000.0 + 125) == "Last test: 2 min ago (8/8 passed)"
    assert (
        node_tests_tooltip(NodeTestFacts(tested_at=0.0, passed=7, failed=1), 30.0)
        == "Last test: 30 s ago (7/8 passed)"
    )
    assert node_tests_tooltip(NodeTestFacts(mode="disabled"), 0) == "Tests disabled for this node"
    assert node_tests_tooltip(NodeTestFacts(tested_at=0.0, passed=1, changed_at=10.0), 70.0).endswith(
        "not run since the deploy 1 min ago"
    )
    assert [ago(s) for s in (1, 59, 3600, 86400 * 3)] == ["just now", "59 s ago", "1 h ago", "3 d ago"]


@given(st.integers(0, 500), st.integers(1, 500))
def test_wilson_interval_holds_the_observed_rate(success: int, attempts: int) -> None:
    success = min(success, attempts)
    lo, hi = wilson(success, attempts)
    rate = 100.0 * success / attempts
    assert 0.0 <= lo <= rate + 0.05 and rate - 0.05 <= hi <= 100.0


def test_theory_expectations_of_matrix_cells() -> None:
    assert theory_expects("direct", "symmetric", "none") is True
    assert theory_expects("direct", "none", "full-cone") is True
    assert theory_expects("direct", "none", "symmetric") is False
    # Into a port-restricted NAT a direct dial depends on earlier traffic: no mark either way.
    assert theory_expects("direct", "none", "port-restricted") is None
    assert theory_expects("holepunch", "symmetric", "symmetric") is False
    assert theory_expects("holepunch", "symmetric", "port-restricted") is False
    assert theory_expects("holepunch", "port-restricted", "symmetric") is False
    assert theory_expects("holepunch", "symmetric", "full-cone") is True
    assert theory_expects("holepunch", "port-restricted", "port-restricted") is True
    assert theory_expects("relay", "symmetric", "symmetric") is True
    assert theory_expects("carrier-pigeon", "none", "none") is None
    assert theory_expects("direct", "?", "none") is None


def test_matrix_cells_sum_suites_and_mark_theory_mismatches() -> None:
    nat = {"a": "none", "b": "full-cone", "c": "symmetric"}
    cells = matrix_cells(
        [
            {
                "suite": "connectivity",
                "from": "a",
                "to": "b",
                "method": "direct",
                "attempts": 5,
                "success": 0,
            },
            {
                "suite": "nat_traversal",
                "from": "a",
                "to": "b",
                "method": "direct",
                "attempts": 5,
                "success": 0,
            },
            {
                "suite": "connectivity",
                "from": "b",
                "to": "c",
                "method": "direct",
                "attempts": 4,
                "success": 4,
            },
            {"suite": "connectivity", "from": "c", "to": "a", "method": "relay", "attempts": 4, "success": 2},
        ],
        nat,
    )
    by = {(c["method"], c["from"], c["to"]): c for c in cells}
    assert by[("direct", "a", "b")]["attempts"] == 10 and by[("direct", "a", "b")]["mismatch"] is True
    assert by[("direct", "b", "c")]["mismatch"] is True  # connected into a symmetric NAT directly
    assert by[("relay", "c", "a")]["mismatch"] is False and by[("relay", "c", "a")]["rate"] == 50.0


def test_history_series_per_chart() -> None:
    runs = [
        (
            "r1",
            "t1",
            {
                "connectivity": {"direct": {"rate": 90.0}},
                "throughput": {"all": {"avg_mbps": 40.0, "iperf3_avg_mbps": 80.0}},
            },
        ),
        ("r2", "t2", {"gossip": {"all": {"delivery_rate": 100.0}, "latency_ms": {"p50": 5.0, "p95": 9.0}}}),
    ]
    s = history_series(runs)
    assert s["rates"] == {"connectivity.direct": [["r1", "t1", 90.0]]}
    assert s["throughput"] == {"avg % of iperf3": [["r1", "t1", 50.0]]}
    assert s["gossip_delivery"] == {"delivery": [["r2", "t2", 100.0]]}
    assert s["gossip_latency"]["p95"] == [["r2", "t2", 9.0]]
