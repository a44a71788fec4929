"""Aggregate the suites' recorded measurements into the ``test_results`` shape (pure).

Each suite test records one measurement (a JSON object) as the user property ``vpstest``; it
travels with the test report from xdist workers to the controller, where a :class:`Collector`
gathers every report. Aggregation sorts by test id first, so a run split over workers gives
exactly the numbers of a serial run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pytest_vpstest.criteria import flatten_metrics, rate, wilson_interval
from pytest_vpstest.suite import (
    CATEGORIES,
    CONNECTIVITY,
    GOSSIP,
    NAT_TRAVERSAL,
    THROUGHPUT,
    ConnectivityMeasurement,
    GossipCrdtMeasurement,
    GossipDeliveryMeasurement,
    Measurement,
    NatTraversalMeasurement,
    ThroughputMeasurement,
)

__all__ = [
    "AGGREGATORS",
    "MEASUREMENT_KEY",
    "NODES_KEY",
    "Collector",
    "RecordedTest",
    "aggregate",
    "build_test_results",
    "encode",
    "failure_cause",
    "metric_rows",
    "metrics_of",
    "node_rows",
    "pair_rows",
    "percentile",
]

MEASUREMENT_KEY = "vpstest"
NODES_KEY = "vpstest.nodes"


def encode(measurement: Measurement | Mapping[str, Any]) -> str:
    """The property value a test records: compact, key-sorted JSON (readable in JUnit XML too)."""
    return json.dumps(measurement, sort_keys=True, separators=(",", ":"))


@dataclass
class RecordedTest:
    nodeid: str
    outcome: str = "passed"  # passed | failed | skipped | error | xfailed | xpassed
    duration: float = 0.0
    nodes: tuple[str, ...] = ()
    measurement: dict[str, Any] | None = None
    message: str = ""


@dataclass
class Collector:
    """Test outcomes and measurements of one run, fed from test reports (controller side)."""

    tests: dict[str, RecordedTest] = field(default_factory=dict)

    def add(
        self,
        nodeid: str,
        when: str,
        outcome: str,
        duration: float,
        user_properties: Iterable[tuple[str, object]],
        message: str = "",
    ) -> None:
        """Feed one report (``setup``/``call``/``teardown``) of one test."""
        t = self.tests.setdefault(nodeid, RecordedTest(nodeid))
        t.duration += duration
        for key, value in user_properties:
            if key == MEASUREMENT_KEY and isinstance(value, str):
                t.measurement = json.loads(value)
            elif key == NODES_KEY and isinstance(value, str):
                t.nodes = tuple(v for v in value.split(",") if v)
        if outcome == "failed":
            t.outcome = "error" if when != "call" else "failed"
            t.message = t.message or message
        elif outcome in ("skipped", "xfailed", "xpassed") and t.outcome == "passed":
            t.outcome = outcome
            t.message = message

    @property
    def vps_tests(self) -> list[RecordedTest]:
        """Tests that belong to the suites (they recorded nodes or a measurement)."""
        return [t for _, t in sorted(self.tests.items()) if t.nodes or t.measurement is not None]

    def counts(self, unhealthy: Collection[str] = ()) -> dict[str, int]:
        """Tests by outcome; ``xfailed``: failures NAT theory expected, ``xpassed``: unexpected passes.

        A failure touching an ``unhealthy`` node (one found not Live, before or during the run) is the
        node's fault, not the software's: it counts as ``infrastructure_failed``, not ``failed``, so
        ``tests.failed`` in the criteria counts software failures only."""
        out = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0, "xpassed": 0, "infrastructure_failed": 0}
        for t in self.tests.values():
            if t.outcome in ("failed", "error"):
                cause = failure_cause(t.nodes, unhealthy)
                out["infrastructure_failed" if cause == "infrastructure" else "failed"] += 1
            else:
                out[t.outcome] += 1
        return out

    def measurements(self, leave_out: Collection[str] = ()) -> list[dict[str, Any]]:
        """Every test's measurement, but those of tests touching a node in ``leave_out``."""
        return [
            t.measurement | {"test": t.nodeid}
            for t in self.vps_tests
            if t.measurement is not None and not set(t.nodes) & set(leave_out)
        ]


def failure_cause(nodes: Collection[str], unhealthy: Collection[str]) -> str:
    """``infrastructure`` when a failed test touched a node found unhealthy (the node's fault),
    else ``software``."""
    return "infrastructure" if set(nodes) & set(unhealthy) else "software"


# --------------------------------------------------------------------------------------------
# Aggregation (pure)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def _r(x: float, nd: int = 1) -> float:
    return round(float(x), nd)


def _connectivity(ms: list[ConnectivityMeasurement]) -> dict[str, Any]:
    acc: dict[str, list[int]] = {c: [0, 0] for c in CATEGORIES}
    for m in ms:
        a = acc.setdefault(m["category"], [0, 0])
        a[0] += int(m["attempts"])
        a[1] += int(m["success"])
    return {c: {"attempts": a, "success": s, "rate": rate(s, a)} for c, (a, s) in acc.items() if a}


def _nat(ms: list[NatTraversalMeasurement]) -> dict[str, Any]:
    acc: dict[str, list[int]] = {}
    outcomes: dict[str, dict[str, int]] = {}
    for m in ms:
        entry = acc.setdefault(m["group"], [0, 0])
        entry[0] += int(m["attempts"])
        entry[1] += int(m["success"])
        if "outcome" in m:
            per = outcomes.setdefault(m["group"], {})
            per[str(m["outcome"])] = per.get(str(m["outcome"]), 0) + 1
    out: dict[str, Any] = {}
    for g, (a, s) in sorted(acc.items()):
        out[g] = {"attempts": a, "success": s, "rate": rate(s, a), "ci95": list(wilson_interval(s, a))}
        per = outcomes.get(g, {})
        if per.get("xfail") or per.get("xpass"):
            # NAT theory expects this pairing to fail: how many pairs did, and how many surprised.
            out[g]["expected_failures"] = per.get("xfail", 0)
            out[g]["unexpected_passes"] = per.get("xpass", 0)
    return out


def _gossip(ms: list[GossipDeliveryMeasurement | GossipCrdtMeasurement]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    deliveries = [cast(GossipDeliveryMeasurement, m) for m in ms if m.get("kind") == "delivery"]
    if deliveries:
        expected = sum(int(m["expected"]) for m in deliveries)
        delivered = sum(int(m["delivered"]) for m in deliveries)
        latencies = [float(x) for m in deliveries for x in m.get("latencies_ms", [])]
        out.update(
            messages=len(deliveries),
            expected=expected,
            delivered=delivered,
            delivery_rate=rate(delivered, expected),
            duplicates=sum(int(m.get("duplicates", 0)) for m in deliveries),
        )
        if latencies:
            out["latency_ms"] = {
                "p50": _r(percentile(latencies, 50)),
                "p95": _r(percentile(latencies, 95)),
                "max": _r(max(latencies)),
            }
    crdts = [cast(GossipCrdtMeasurement, m) for m in ms if m.get("kind") == "crdt"]
    if crdts:
        c = crdts[-1]
        out["crdt"] = {
            "converged": bool(c["converged"]),
            "expected": c["expected"],
            "nodes": len(c.get("values", {})),
            "distinct_digests": len(set(c.get("digests", {}).values())),
        }
    return out


def _throughput(ms: list[ThroughputMeasurement]) -> dict[str, Any]:
    samples = [float(x) for m in ms for x in m.get("mbps", [])]
    out: dict[str, Any] = {"pairs": len(ms)}
    if samples:
        out.update(
            avg_mbps=_r(sum(samples) / len(samples)), min_mbps=_r(min(samples)), max_mbps=_r(max(samples))
        )
    by_path: dict[str, list[float]] = {}
    for m in ms:
        paths = list(m.get("paths") or [])
        for i, sample in enumerate(m.get("mbps", [])):
            by_path.setdefault(str(paths[i]) if i < len(paths) else "unreported", []).append(float(sample))
    if by_path:
        out["by_path"] = {
            p: {"samples": len(xs), "avg_mbps": _r(sum(xs) / len(xs)), "min_mbps": _r(min(xs))}
            for p, xs in sorted(by_path.items())
        }
    ceilings = [float(x) for m in ms if (x := m.get("iperf3_mbps")) is not None]
    if ceilings:
        out.update(
            iperf3_avg_mbps=_r(sum(ceilings) / len(ceilings)),
            iperf3_min_mbps=_r(min(ceilings)),
            iperf3_max_mbps=_r(max(ceilings)),
            iperf3_pairs=len(ceilings),
        )
    return out


# One aggregator per registered suite (suite.SUITES), keyed by suite name. Each reads the
# measurements of its suite, already in test-id order.
AGGREGATORS: Mapping[str, Callable[[list[Any]], dict[str, Any]]] = {
    CONNECTIVITY.name: _connectivity,
    NAT_TRAVERSAL.name: _nat,
    GOSSIP.name: _gossip,
    THROUGHPUT.name: _throughput,
}


def aggregate(measurements: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``suites`` section: one entry per suite that recorded anything."""
    by_suite: dict[str, list[dict[str, Any]]] = {}
    for m in sorted(measurements, key=lambda m: str(m.get("test", ""))):
        by_suite.setdefault(str(m["suite"]), []).append(dict(m))
    return {s: AGGREGATORS[s](ms) for s, ms in by_suite.items() if s in AGGREGATORS}


def pair_rows(measurements: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-pair matrix: one row per pair measurement, in test-id order."""
    rows: list[dict[str, Any]] = []
    for m in sorted(measurements, key=lambda m: str(m.get("test", ""))):
        if "src" not in m or "dst" not in m:
            continue
        row: dict[str, Any] = {
            "suite": m["suite"],
            "from": m["src"],
            "to": m["dst"],
            "method": m.get("method", "direct"),
        }
        for key in (
            "category", "group", "attempts", "success", "paths", "rtt_ms", "mbps", "iperf3_mbps", "outcome"
        ):
            if key in m:
                row[key] = m[key]
        if "attempts" in m:
            row["rate"] = rate(int(m["success"]), int(m["attempts"]))
        rows.append(row)
    return rows


def build_test_results(
    measurements: Sequence[Mapping[str, Any]], passed: bool, last_run: str
) -> dict[str, Any]:
    """The state file's ``test_results`` section."""
    return {"last_run": last_run, "passed": passed, "suites": aggregate(measurements)}


def metrics_of(results: Mapping[str, Any], counts: Mapping[str, int]) -> dict[str, float]:
    """Flat metric names for criteria (``connectivity.direct.rate``, ``tests.failed``...)."""
    metrics = flatten_metrics(results.get("suites", {}))
    metrics.update({f"tests.{k}": float(v) for k, v in counts.items()})
    return metrics


def node_rows(collector: Collector, nodes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per node: tests involving it that passed / failed, and the first failures (history rows)."""
    rows: dict[str, dict[str, Any]] = {n: {"passed": 0, "failed": 0, "output": []} for n in nodes}
    for t in collector.vps_tests:
        for n in t.nodes:
            row = rows.setdefault(n, {"passed": 0, "failed": 0, "output": []})
            if t.outcome in ("failed", "error"):
                row["failed"] += 1
                if len(row["output"]) < 20:
                    row["output"].append(f"{t.nodeid}: {t.message}".strip())
            elif t.outcome == "passed":
                row["passed"] += 1
    return rows


def metric_rows(suites: Mapping[str, Any]) -> list[tuple[str, str, str, float]]:
    """(suite, category, name, value) rows: ``connectivity, direct, rate, 98.6``."""
    rows: list[tuple[str, str, str, float]] = []
    for suite, body in suites.items():
        for name, value in flatten_metrics(body).items():
            category, _, leaf = name.rpartition(".")
            rows.append((suite, category or "all", leaf, value))
    return rows
