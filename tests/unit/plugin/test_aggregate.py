"""Aggregation of recorded measurements into the state file's test_results shape: per-category rates,
NAT groups with Wilson intervals, gossip delivery/latency/convergence, throughput with iperf3
beside it; the outcome does not depend on the order reports arrive in (xdist)."""

from __future__ import annotations

import json
import random
from typing import Any

from pytest_vpstest.plugin.aggregate import (
    Collector,
    aggregate,
    build_test_results,
    encode,
    metrics_of,
    node_rows,
    pair_rows,
    percentile,
)


def conn(src: str, dst: str, method: str, category: str, attempts: int, success: int) -> dict[str, Any]:
    return {
        "suite": "connectivity",
        "src": src,
        "dst": dst,
        "method": method,
        "category": category,
        "attempts": attempts,
        "success": success,
        "test": f"c::{src}->{dst}[{method}]",
    }


MEASUREMENTS: list[dict[str, Any]] = [
    conn("a", "b", "direct", "direct", 3, 3),
    conn("b", "a", "direct", "direct", 3, 2),
    conn("a", "b", "holepunch", "nat_traversed", 3, 1),
    conn("a", "b", "relay", "relay", 3, 3),
    {
        "suite": "nat_traversal",
        "src": "a",
        "dst": "b",
        "group": "full-cone~symmetric",
        "attempts": 10,
        "success": 7,
        "test": "n::1",
    },
    {
        "suite": "nat_traversal",
        "src": "b",
        "dst": "a",
        "group": "full-cone~symmetric",
        "attempts": 10,
        "success": 9,
        "test": "n::2",
    },
    {
        "suite": "gossip",
        "kind": "delivery",
        "expected": 4,
        "delivered": 3,
        "latencies_ms": [10, 20, 30],
        "duplicates": 1,
        "test": "g::1",
    },
    {
        "suite": "gossip",
        "kind": "delivery",
        "expected": 4,
        "delivered": 4,
        "latencies_ms": [5, 15, 25, 100],
        "duplicates": 0,
        "test": "g::2",
    },
    {
        "suite": "gossip",
        "kind": "crdt",
        "expected": 10,
        "values": {"a": 10, "b": 10},
        "digests": {"a": "x", "b": "x"},
        "converged": True,
        "test": "g::3",
    },
    {
        "suite": "throughput",
        "src": "a",
        "dst": "b",
        "mbps": [10.0, 20.0],
        "iperf3_mbps": 900.0,
        "test": "t::1",
    },
    {"suite": "throughput", "src": "b", "dst": "a", "mbps": [30.0], "iperf3_mbps": None, "test": "t::2"},
]


def test_aggregate_matches_the_state_file_shape() -> None:
    suites = aggregate(MEASUREMENTS)
    assert suites["connectivity"] == {
        "direct": {"attempts": 6, "success": 5, "rate": 83.3},
        "nat_traversed": {"attempts": 3, "success": 1, "rate": 33.3},
        "relay": {"attempts": 3, "success": 3, "rate": 100.0},
    }
    assert suites["nat_traversal"] == {
        "full-cone~symmetric": {"attempts": 20, "success": 16, "rate": 80.0, "ci95": [58.4, 91.93]}
    }
    gossip = suites["gossip"]
    assert gossip["delivery_rate"] == 87.5 and gossip["duplicates"] == 1 and gossip["messages"] == 2
    assert gossip["latency_ms"] == {"p50": 20.0, "p95": 100.0, "max": 100.0}
    assert gossip["crdt"] == {"converged": True, "expected": 10, "nodes": 2, "distinct_digests": 1}
    assert suites["throughput"] == {
        "pairs": 2,
        "avg_mbps": 20.0,
        "min_mbps": 10.0,
        "max_mbps": 30.0,
        "iperf3_avg_mbps": 900.0,
        "iperf3_min_mbps": 900.0,
        "iperf3_max_mbps": 900.0,
        "iperf3_pairs": 1,
        # these measurements name no path: never guessed
        "by_path": {"unreported": {"samples": 3, "avg_mbps": 20.0, "min_mbps": 10.0}},
    }


def test_throughput_is_grouped_by_the_path_each_sample_took() -> None:
    base = {"suite": "throughput", "method": "direct", "attempts": 2, "success": 2, "failures": []}
    ms = [
        base | {"src": "a", "dst": "b", "mbps": [90.0, 10.0], "paths": ["direct", "relayed"], "test": "t1"},
        base | {"src": "b", "dst": "a", "mbps": [70.0, 50.0], "paths": ["punched", "direct"], "test": "t2"},
    ]
    by_path = aggregate(ms)["throughput"]["by_path"]
    assert by_path == {
        "direct": {"samples": 2, "avg_mbps": 70.0, "min_mbps": 50.0},
        "punched": {"samples": 1, "avg_mbps": 70.0, "min_mbps": 70.0},
        "relayed": {"samples": 1, "avg_mbps": 10.0, "min_mbps": 10.0},
    }


def test_nat_groups_count_expected_failures_and_unexpected_passes() -> None:
    base = {"suite": "nat_traversal", "method": "holepunch", "group": "port-restricted~symmetric",
            "attempts": 1, "paths": [], "rtt_ms": [], "failures": []}
    ms = [
        base | {"src": "a", "dst": "b", "success": 0, "outcome": "xfail", "test": "t1"},
        base | {"src": "b", "dst": "a", "success": 1, "outcome": "xpass", "test": "t2"},
    ]
    group = aggregate(ms)["nat_traversal"]["port-restricted~symmetric"]
    assert group["expected_failures"] == 1 and group["unexpected_passes"] == 1


def test_order_of_arrival_does_not_change_the_numbers() -> None:
    expected = json.dumps(aggregate(MEASUREMENTS), sort_keys=True)
    rng = random.Random(4)
    for _ in range(20):
        shuffled = MEASUREMENTS[:]
        rng.shuffle(shuffled)
        assert json.dumps(aggregate(shuffled), sort_keys=True) == expected


def test_collector_reads_properties_and_outcomes() -> None:
    c = Collector()
    c.add("t1", "setup", "passed", 0.1, [])
    c.add("t1", "call", "passed", 1.0, [("vpstest", encode(MEASUREMENTS[0])), ("vpstest.nodes", "a,b")])
    c.add("t1", "teardown", "passed", 0.0, [])
    c.add(
        "t2",
        "call",
        "failed",
        1.0,
        [("vpstest", encode(MEASUREMENTS[3])), ("vpstest.nodes", "a,b")],
        "relay never connected",
    )
    c.add("t3", "setup", "skipped", 0.0, [], "needs NAT")
    c.add("plain", "call", "passed", 0.0, [])
    c.add("t4", "call", "xfailed", 0.0, [], "expected by NAT theory: ...")
    c.add("t5", "call", "xpassed", 0.0, [])
    assert c.counts() == {
        "passed": 2, "failed": 1, "skipped": 1, "xfailed": 1, "xpassed": 1, "infrastructure_failed": 0
    }
    # A failure touching a node found unhealthy is the node's, not the software's.
    assert c.counts(unhealthy={"b"}) == {
        "passed": 2, "failed": 0, "skipped": 1, "xfailed": 1, "xpassed": 1, "infrastructure_failed": 1
    }
    assert [t.nodeid for t in c.vps_tests] == ["t1", "t2"]
    rows = node_rows(c, ["a", "b", "z"])
    assert rows["a"]["passed"] == 1 and rows["a"]["failed"] == 1
    assert rows["a"]["output"] == ["t2: relay never connected"]
    assert rows["z"] == {"passed": 0, "failed": 0, "output": []}
    assert {m["test"] for m in c.measurements()} == {"t1", "t2"}


def test_pair_rows_and_metrics() -> None:
    rows = pair_rows(MEASUREMENTS)
    assert rows[0]["from"] == "a" and rows[0]["rate"] == 100.0
    assert all("from" in r for r in rows) and len(rows) == 8
    results = build_test_results(MEASUREMENTS, True, "2026-01-01T00:00:00Z")
    assert results["last_run"] == "2026-01-01T00:00:00Z" and results["passed"] is True
    metrics = metrics_of(results, {"passed": 3, "failed": 0, "skipped": 1})
    assert metrics["connectivity.relay.rate"] == 100.0
    assert metrics["nat_traversal.full_cone_symmetric.rate"] == 80.0
    assert metrics["tests.failed"] == 0.0


def test_percentile_nearest_rank() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.0
    assert percentile([5], 95) == 5.0
    assert percentile(list(range(1, 101)), 95) == 95.0
