"""Aggregate the suites' recorded measurements into the state file's ``test_results`` shape.

Each suite test records one measurement (a JSON object) as the user property ``vpstest``; it
travels with the test report from xdist workers to the controller, where a :class:`Collector`
gathers every report. Aggregation sorts by test id first, so a run split over workers gives
exactly the numbers of a serial run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vpstest._files import write_json_atomic
from pytest_vpstest.criteria import Check, Verdict, flatten_metrics, rate, wilson_interval
from pytest_vpstest.plugin.pairs import CATEGORIES

if TYPE_CHECKING:
    from pytest_vpstest.plugin.fixtures import RunContext

MEASUREMENT_KEY = "vpstest"
NODES_KEY = "vpstest.nodes"
SCHEMA_VERSION = 1
SUITE_OF_FOCUS: dict[str, tuple[str, ...]] = {
    "connectivity": ("connectivity",),
    "nat-traversal": ("nat_traversal",),
    "gossip": ("gossip",),
    "throughput": ("throughput",),
    "full-suite": ("connectivity", "nat_traversal", "gossip", "throughput"),
}


def encode(measurement: Mapping[str, Any]) -> str:
    """The property value a test records: compact, key-sorted JSON (readable in JUnit XML too)."""
    return json.dumps(measurement, sort_keys=True, separators=(",", ":"))


@dataclass
class RecordedTest:
    nodeid: str
    outcome: str = "passed"  # passed | failed | skipped | error
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
        elif outcome == "skipped" and t.outcome == "passed":
            t.outcome = "skipped"
            t.message = message

    @property
    def vps_tests(self) -> list[RecordedTest]:
        """Tests that belong to the suites (they recorded nodes or a measurement)."""
        return [t for _, t in sorted(self.tests.items()) if t.nodes or t.measurement is not None]

    def counts(self) -> dict[str, int]:
        out = {"passed": 0, "failed": 0, "skipped": 0}
        for t in self.tests.values():
            out["failed" if t.outcome in ("failed", "error") else t.outcome] += 1
        return out

    def measurements(self) -> list[dict[str, Any]]:
        return [t.measurement | {"test": t.nodeid} for t in self.vps_tests if t.measurement is not None]


# --------------------------------------------------------------------------------------------
# Aggregation (pure)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def _r(x: float, nd: int = 1) -> float:
    return round(float(x), nd)


def _connectivity(ms: list[dict[str, Any]]) -> dict[str, Any]:
    acc = {c: [0, 0] for c in CATEGORIES}
    for m in ms:
        a = acc.setdefault(m["category"], [0, 0])
        a[0] += int(m["attempts"])
        a[1] += int(m["success"])
    return {c: {"attempts": a, "success": s, "rate": rate(s, a)} for c, (a, s) in acc.items() if a}


def _nat(ms: list[dict[str, Any]]) -> dict[str, Any]:
    acc: dict[str, list[int]] = {}
    for m in ms:
        a = acc.setdefault(m["group"], [0, 0])
        a[0] += int(m["attempts"])
        a[1] += int(m["success"])
    return {
        g: {"attempts": a, "success": s, "rate": rate(s, a), "ci95": list(wilson_interval(s, a))}
        for g, (a, s) in sorted(acc.items())
    }


def _gossip(ms: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    deliveries = [m for m in ms if m.get("kind") == "delivery"]
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
    crdts = [m for m in ms if m.get("kind") == "crdt"]
    if crdts:
        c = crdts[-1]
        out["crdt"] = {
            "converged": bool(c["converged"]),
            "expected": c["expected"],
            "nodes": len(c.get("values", {})),
            "distinct_digests": len(set(c.get("digests", {}).values())),
        }
    return out


def _throughput(ms: list[dict[str, Any]]) -> dict[str, Any]:
    samples = [float(x) for m in ms for x in m.get("mbps", [])]
    out: dict[str, Any] = {"pairs": len(ms)}
    if samples:
        out.update(
            avg_mbps=_r(sum(samples) / len(samples)), min_mbps=_r(min(samples)), max_mbps=_r(max(samples))
        )
    ceilings = [float(m["iperf3_mbps"]) for m in ms if m.get("iperf3_mbps") is not None]
    if ceilings:
        out.update(
            iperf3_avg_mbps=_r(sum(ceilings) / len(ceilings)),
            iperf3_min_mbps=_r(min(ceilings)),
            iperf3_max_mbps=_r(max(ceilings)),
            iperf3_pairs=len(ceilings),
        )
    return out


_AGGREGATORS = {
    "connectivity": _connectivity,
    "nat_traversal": _nat,
    "gossip": _gossip,
    "throughput": _throughput,
}


def aggregate(measurements: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``suites`` section: one entry per suite that recorded anything."""
    by_suite: dict[str, list[dict[str, Any]]] = {}
    for m in sorted(measurements, key=lambda m: str(m.get("test", ""))):
        by_suite.setdefault(str(m["suite"]), []).append(dict(m))
    return {s: _AGGREGATORS[s](ms) for s, ms in by_suite.items() if s in _AGGREGATORS}


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
        for key in ("category", "group", "attempts", "success", "paths", "rtt_ms", "mbps", "iperf3_mbps"):
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


# --------------------------------------------------------------------------------------------
# The end of a run (controller only): verdict, results.json, state file, history, evidence, proof


@dataclass
class RunOutcome:
    verdict: Verdict
    results: dict[str, Any]
    results_path: Path
    proof_path: Path | None = None
    lines: list[str] = field(default_factory=list)


def _targets(run: RunContext) -> dict[str, dict[str, float]]:
    return {
        k.replace("-", "_"): dict(v.success_criteria)
        for k, v in run.project_config.tests
        if v.success_criteria
    }


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def finish_run(config: pytest.Config, run: RunContext, collector: Collector) -> RunOutcome:
    """Judge the run and record it everywhere it belongs; never raises for a recording problem
    (a failed step becomes a warning line, the verdict still decides the exit status)."""
    from pytest_vpstest.criteria import CriteriaSpec, judge
    from pytest_vpstest.errors import CriteriaError

    finished = time.time()
    counts = collector.counts()
    measurements = collector.measurements()
    suites = aggregate(measurements)
    suites_run = tuple(s for s in SUITE_OF_FOCUS["full-suite"] if s in suites)
    metrics = metrics_of({"suites": suites}, counts)
    lines: list[str] = []
    previous = _previous_metrics(run, lines) if run.criteria == "improvement" else None
    spec = CriteriaSpec(
        run.criteria, run.criteria_expr, _targets(run), run.project_config.soak.regression_tolerance
    )
    try:
        verdict = judge(spec, metrics, suites_run, previous)
    except CriteriaError as exc:
        bad = Check(run.criteria_expr or run.criteria, "is", None, None, False, str(exc))
        verdict = Verdict(False, run.criteria, (bad,), (str(exc),), run.criteria_expr)
    pairs = pair_rows(measurements)
    test_results = build_test_results(measurements, verdict.passed, _iso(finished))
    evidence = _write_evidence(config, run, metrics, test_results, pairs, measurements, lines)
    results_path = run.results_json or run.run_dir / "results.json"
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "project": run.project,
        "focus": run.focus,
        "criteria": run.criteria,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(finished),
        "passed": verdict.passed,
        "verdict": verdict.to_json(),
        "tests": counts,
        "metrics": metrics,
        "test_results": test_results,
        "pairs": pairs,
        "evidence": evidence,
        "config": str(run.config_path),
        "inventory": str(run.inventory_path),
        "reproduce": run.reproduce(),
    }
    write_json_atomic(results_path, document)
    lines.append(f"results: {results_path}")
    state = _merge_state(run, test_results, lines)
    _record_history(run, collector, document, lines)
    from pytest_vpstest.records.proof import ProofInput, fix_commits_of, write_proof

    tested = sorted(
        {n for t in collector.vps_tests for n in t.nodes},
        key=lambda n: run.inventory.names.index(n) if n in run.inventory.names else 1 << 30,
    )
    proof_path = write_proof(
        run.project_dir,
        ProofInput(
            project=run.project,
            started_at=run.started_at,
            finished_at=finished,
            verdict=verdict,
            focus=run.focus,
            evidence={"Results": str(results_path), **evidence},
            fix_commits=fix_commits_of(state),
            nodes_tested=tested,
            inventory=run.inventory,
            pairs=pairs,
            run_id=run.run_id,
            reproduce=run.reproduce(),
        ),
    )
    lines.append(f"proof: {proof_path}")
    config.hook.pytest_vpstest_results(run=run, results=document)
    return RunOutcome(verdict, document, results_path, proof_path, lines)


def _write_evidence(
    config: pytest.Config,
    run: RunContext,
    metrics: Mapping[str, float],
    test_results: Mapping[str, Any],
    pairs: list[dict[str, Any]],
    measurements: list[dict[str, Any]],
    lines: list[str],
) -> dict[str, str]:
    from pytest_vpstest.records.proof import collect_logs, write_connection_report, write_metrics

    proof = run.proof or "metrics"
    evidence: dict[str, str] = {}
    if proof in ("metrics", "all-evidence"):
        labels = {"project": run.project, "run_id": run.run_id, "focus": run.focus}
        evidence.update(write_metrics(run.run_dir, metrics, test_results, labels))
    if proof in ("all-evidence",):
        failures = [f | {"test": m.get("test")} for m in measurements for f in m.get("failures", [])]
        evidence.update(write_connection_report(run.run_dir, pairs, failures))
    if proof in ("logs", "all-evidence"):
        try:
            pool = config.hook.pytest_vpstest_make_pool(
                inventory=run.inventory, project_config=run.project_config
            )
        except Exception as exc:
            lines.append(f"warning: logs not collected: {type(exc).__name__}: {exc}")
        else:
            try:

                def fetch(node: Any) -> str:
                    text = config.hook.pytest_vpstest_fetch_logs(run=run, pool=pool, node=node.name)
                    return str(text or "")

                evidence.update(collect_logs(run.inventory.nodes, fetch, run.project_dir / "logs"))
            finally:
                pool.close_all()
    if proof == "manual-verify":
        evidence["Manual verification"] = "requested: inspect the matrix and the results file"
    return evidence


def _merge_state(run: RunContext, test_results: dict[str, Any], lines: list[str]) -> dict[str, Any] | None:
    """Merge ``test_results`` into the project's state file through the store's lease.

    Skipped under the loop (``VPSTEST_RUNNER_TOKEN`` set: the loop holds the lease and merges).
    """
    from pytest_vpstest.errors import LeaseHeldError, StateError
    from pytest_vpstest.records.store import StateStore

    store = StateStore(run.state_dir, run.project)
    if os.environ.get("VPSTEST_RUNNER_TOKEN"):
        lines.append("state: left to the running loop (VPSTEST_RUNNER_TOKEN is set)")
        return store.load()
    try:
        lease = store.acquire()
    except LeaseHeldError as exc:
        lines.append(f"warning: state file not updated: {exc}")
        return store.load()
    except StateError as exc:
        lines.append(f"warning: state file not updated: {exc}")
        return None
    try:
        document = store.merge_test_results(lease, test_results)
        lines.append(f"state: {store.state_path}")
        return document
    except StateError as exc:
        lines.append(f"warning: state file not updated: {exc}")
        return None
    finally:
        store.release(lease)


def _history_path(run: RunContext) -> Path:
    return run.state_dir / "history.sqlite"


def _previous_metrics(run: RunContext, lines: list[str]) -> dict[str, float] | None:
    """Metrics of the previous finished run of the same project and focus (None: first run)."""
    from pytest_vpstest.records.history import History

    try:
        with History(_history_path(run)) as history:
            previous = history.previous_run(run.project, run.focus, before=run.run_id)
    except Exception as exc:  # an unreadable history is judged as a first run, said aloud
        lines.append(f"warning: history unreadable, improvement judged as a first run: {exc}")
        return None
    verdict = previous.verdict if previous is not None else None
    if not isinstance(verdict, Mapping) or not isinstance(verdict.get("metrics"), Mapping):
        return None
    return {str(k): float(v) for k, v in verdict["metrics"].items()}


def _record_history(
    run: RunContext, collector: Collector, document: Mapping[str, Any], lines: list[str]
) -> None:
    """One ``runs`` row (verdict with its metrics), one ``test_runs`` row per node, metric rows."""
    from pytest_vpstest.records.history import History, HostRun, RunRecord

    loop_state = os.environ.get("VPSTEST_LOOP_STATE")
    checkpoint = loop_state.split(":", 1)[1] if loop_state and ":" in loop_state else None
    record = RunRecord(
        id=run.run_id,
        project=run.project,
        started_at=document["started_at"],
        finished_at=document["finished_at"],
        passed=bool(document["passed"]),
        focus=run.focus,
        criteria=run.criteria,
        verdict=dict(document["verdict"]) | {"metrics": document["metrics"]},
        loop_state=loop_state,
        checkpoint=checkpoint,
    )
    hosts = [
        HostRun(
            host_id=name,
            started_at=document["started_at"],
            finished_at=document["finished_at"],
            exit_code=1 if row["failed"] else 0,
            passed=row["passed"],
            failed=row["failed"],
            output="\n".join(row["output"]),
        )
        for name, row in node_rows(collector, run.inventory.names).items()
        if row["passed"] or row["failed"]
    ]
    try:
        with History(_history_path(run)) as history:
            history.record_run(record, hosts, _metric_rows(document["test_results"]["suites"]))
        lines.append(f"history: {_history_path(run)}")
    except Exception as exc:  # history is a record, not the verdict
        lines.append(f"warning: history not recorded: {type(exc).__name__}: {exc}")


def _metric_rows(suites: Mapping[str, Any]) -> list[tuple[str, str, str, float]]:
    """(suite, category, name, value) rows: ``connectivity, direct, rate, 98.6``."""
    rows: list[tuple[str, str, str, float]] = []
    for suite, body in suites.items():
        for name, value in flatten_metrics(body).items():
            category, _, leaf = name.rpartition(".")
            rows.append((suite, category or "all", leaf, value))
    return rows


def html_summary(collector: Collector, run: RunContext) -> list[str]:
    """HTML fragments for pytest-html's summary: the connectivity matrix and the per-pair table."""
    from html import escape

    from pytest_vpstest.records.proof import render_matrix_html

    pairs = pair_rows(collector.measurements())
    if not pairs:
        return []
    parts = [
        f"<h2>pytest-vpstest: connectivity matrix (run {escape(run.run_id)})</h2>",
        render_matrix_html(pairs, run.inventory.names),
        "<h3>Per-pair measurements</h3><table>",
        "<tr><th>suite</th><th>from</th><th>to</th><th>method</th><th>success</th><th>rate</th>"
        "<th>Mbps</th><th>iperf3</th></tr>",
    ]
    for r in pairs:
        mbps = r.get("mbps") or []
        avg = f"{sum(mbps) / len(mbps):.1f}" if mbps else ""
        parts.append(
            "<tr>"
            + "".join(
                f"<td>{escape(str(x))}</td>"
                for x in (
                    r["suite"],
                    r["from"],
                    r["to"],
                    r["method"],
                    f"{r.get('success', '')}/{r.get('attempts', '')}",
                    r.get("rate", ""),
                    avg,
                    r.get("iperf3_mbps") or "",
                )
            )
            + "</tr>"
        )
    parts.append("</table>")
    return parts


def html_extras(user_properties: Iterable[tuple[str, object]]) -> list[dict[str, Any]]:
    """pytest-html extras for one test: its measurement as JSON."""
    for key, value in user_properties:
        if key == MEASUREMENT_KEY and isinstance(value, str):
            from pytest_html import extras

            extra: dict[str, Any] = extras.json(json.loads(value), name="vpstest measurement")
            return [extra]
    return []
