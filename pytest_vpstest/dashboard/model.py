"""Pure decisions of the dashboard: a node's Tests colour and tooltip, matrix cells, history series.

Nothing here reads files or the clock; ``reader`` gathers the facts and passes ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pytest_vpstest.nat_theory import expected_outcome

__all__ = [
    "NodeTestFacts",
    "TestsColour",
    "ago",
    "history_series",
    "matrix_cells",
    "node_tests_colour",
    "node_tests_tooltip",
    "theory_expects",
    "wilson",
]

TestsColour = Literal["green", "yellow", "red", "blue", "gray"]


@dataclass(frozen=True)
class NodeTestFacts:
    """What is known about one node's tests. Times are POSIX seconds.

    ``running``: a Run tests of this node is under way; ``loop_testing``: the loop is in TEST (which
    tests only ``auto`` nodes); ``changed_at``: the node's last deploy or rollback; ``deploying``: a
    deploy is under way now; ``tested_at``: when its last finished test run ended (``passed``/``failed``
    tests in it).
    """

    mode: str = "auto"
    running: bool = False
    loop_testing: bool = False
    deploying: bool = False
    changed_at: float | None = None
    tested_at: float | None = None
    passed: int = 0
    failed: int = 0


def _testing_now(f: NodeTestFacts) -> bool:
    # The loop's TEST leaves manual (and disabled) nodes out: they are not being tested then.
    return f.running or (f.loop_testing and f.mode == "auto")


def node_tests_colour(f: NodeTestFacts) -> TestsColour:
    """gray disabled; blue running; yellow not run since the last deploy (or nothing ran: every test
    of the last run skipped, e.g. the node was unhealthy); red failed; green passed."""
    if f.mode == "disabled":
        return "gray"
    if _testing_now(f):
        return "blue"
    if f.deploying or f.tested_at is None or (f.changed_at is not None and f.tested_at < f.changed_at):
        return "yellow"
    if f.passed + f.failed == 0:
        return "yellow"
    return "red" if f.failed else "green"


def ago(seconds: float) -> str:
    """``just now``, ``45 s ago``, ``2 min ago``, ``3 h ago``, ``2 d ago``."""
    s = max(0.0, seconds)
    if s < 5:
        return "just now"
    if s < 60:
        return f"{int(s)} s ago"
    if s < 3600:
        return f"{int(s // 60)} min ago"
    if s < 86400:
        return f"{int(s // 3600)} h ago"
    return f"{int(s // 86400)} d ago"


def node_tests_tooltip(f: NodeTestFacts, now: float) -> str:
    """E.g. ``Last test: 2 min ago (8/8 passed)``, with why the colour is what it is."""
    if f.mode == "disabled":
        return "Tests disabled for this node"
    if _testing_now(f):
        return "Tests running"
    manual = "; tests run manually for this node (Run tests)" if f.mode == "manual" else ""
    if f.tested_at is None:
        return "Not tested yet" + manual
    total = f.passed + f.failed
    line = f"Last test: {ago(now - f.tested_at)} ({f.passed}/{total} passed)"
    if f.deploying:
        return line + "; deploying now"
    if f.changed_at is not None and f.tested_at < f.changed_at:
        return line + f"; not run since the deploy {ago(now - f.changed_at)}" + manual
    if total == 0:
        return line + "; no test ran (all skipped)" + manual
    return line


def wilson(success: int, attempts: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate, in percent (0, 0 without attempts)."""
    if attempts <= 0:
        return 0.0, 0.0
    p = success / attempts
    denom = 1 + z * z / attempts
    centre = (p + z * z / (2 * attempts)) / denom
    half = z * math.sqrt(p * (1 - p) / attempts + z * z / (4 * attempts * attempts)) / denom
    return round(max(0.0, centre - half) * 100, 1), round(min(1.0, centre + half) * 100, 1)


def matrix_cells(pairs: Iterable[Mapping[str, Any]], nat_of: Mapping[str, str]) -> list[dict[str, Any]]:
    """One cell per (method, dialer, listener): attempts summed over suites, rate, CI, theory check.

    ``mismatch`` is True when the outcome contradicts NAT theory: expected to connect and never
    did, or expected to fail and did.
    """
    acc: dict[tuple[str, str, str], list[int]] = {}
    for p in pairs:
        if "attempts" not in p or "from" not in p or "to" not in p:
            continue
        key = (str(p.get("method", "direct")), str(p["from"]), str(p["to"]))
        a = acc.setdefault(key, [0, 0])
        a[0] += int(p.get("attempts") or 0)
        a[1] += int(p.get("success") or 0)
    cells = []
    for (method, src, dst), (attempts, success) in sorted(acc.items()):
        lo, hi = wilson(success, attempts)
        exp = theory_expects(method, nat_of.get(src, "?"), nat_of.get(dst, "?"))
        mismatch = exp is not None and attempts > 0 and ((exp and success == 0) or (not exp and success > 0))
        cells.append(
            {
                "method": method,
                "from": src,
                "to": dst,
                "attempts": attempts,
                "success": success,
                "rate": round(100.0 * success / attempts, 1) if attempts else None,
                "ci": [lo, hi],
                "expected": exp,
                "mismatch": mismatch,
            }
        )
    return cells


def theory_expects(method: str, dialer_nat: str, listener_nat: str) -> bool | None:
    """Whether NAT theory says this cell should connect; None where it cannot tell (an outcome that
    depends on earlier traffic, or a method or NAT type it does not know)."""
    try:
        outcome = expected_outcome(method, dialer_nat, listener_nat)
    except ValueError:
        return None
    return None if outcome == "depends" else outcome == "connects"


def history_series(
    runs: Sequence[tuple[str, str, Mapping[str, Mapping[str, Mapping[str, float]]]]],
) -> dict[str, dict[str, list[list[Any]]]]:
    """Chart series from ``(run id, started_at, metrics)``, oldest first.

    Charts: ``rates`` (connectivity and NAT traversal rate per category, %), ``throughput`` (average
    Mbps as % of the iperf3 ceiling), ``gossip_delivery`` (%), ``gossip_latency`` (p50/p95 ms).
    Each point is ``[run id, started_at, value]``.
    """
    charts: dict[str, dict[str, list[list[Any]]]] = {
        "rates": {},
        "throughput": {},
        "gossip_delivery": {},
        "gossip_latency": {},
    }

    def add(chart: str, series: str, run_id: str, when: str, value: float) -> None:
        charts[chart].setdefault(series, []).append([run_id, when, round(value, 2)])

    for run_id, when, metrics in runs:
        for suite in ("connectivity", "nat_traversal"):
            for category, names in sorted((metrics.get(suite) or {}).items()):
                if "rate" in names:
                    add("rates", f"{suite}.{category}", run_id, when, names["rate"])
        tp = metrics.get("throughput") or {}
        flat = {name: v for names in tp.values() for name, v in names.items()}
        if flat.get("iperf3_avg_mbps") and "avg_mbps" in flat:
            add(
                "throughput",
                "avg % of iperf3",
                run_id,
                when,
                100.0 * flat["avg_mbps"] / flat["iperf3_avg_mbps"],
            )
        gossip = metrics.get("gossip") or {}
        for names in gossip.values():
            if "delivery_rate" in names:
                add("gossip_delivery", "delivery", run_id, when, names["delivery_rate"])
        for q in ("p50", "p95"):
            value = (gossip.get("latency_ms") or {}).get(q)
            if value is not None:
                add("gossip_latency", q, run_id, when, value)
    return charts
