"""The end of a run (xdist controller only): the verdict, results.json, the state file, the history
rows, the evidence and the proof, all from one :class:`~pytest_vpstest.plugin.aggregate.Collector`.

The numbers come from :mod:`pytest_vpstest.plugin.aggregate` (pure); the files are written through
:mod:`pytest_vpstest.records` (store, history, proof) and :mod:`pytest_vpstest._files`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vpstest._files import write_json_atomic
from pytest_vpstest.criteria import Check, Verdict
from pytest_vpstest.plugin.aggregate import (
    Collector,
    aggregate,
    build_test_results,
    failure_cause,
    metric_rows,
    metrics_of,
    node_rows,
    pair_rows,
)
from pytest_vpstest.suite import FULL_SUITE, suites_of_focus

if TYPE_CHECKING:
    from pytest_vpstest.plugin.fixtures import RunContext

__all__ = ["SCHEMA_VERSION", "RunOutcome", "finish_run"]

SCHEMA_VERSION = 1


@dataclass
class RunOutcome:
    verdict: Verdict
    results: dict[str, Any]
    results_path: Path
    proof_path: Path | None = None
    lines: list[str] = field(default_factory=list)


def _targets(run: RunContext) -> dict[str, dict[str, float]]:
    # Config keys are suite names already (config.py reads tests.nat-traversal as nat_traversal).
    return {k: dict(v.success_criteria) for k, v in run.project_config.tests if v.success_criteria}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def finish_run(
    config: pytest.Config, run: RunContext, collector: Collector, *, interrupted: str | None = None
) -> RunOutcome:
    """Judge the run and record it everywhere it belongs; never raises for a recording problem
    (a failed step becomes a warning line, the verdict still decides the exit status).

    An ``interrupted`` run (the reason) is a part of a run: results.json says so and nothing else is
    recorded (no state merge, no history row, so no ``improvement`` baseline, no proof)."""
    from pytest_vpstest.criteria import CriteriaSpec, judge
    from pytest_vpstest.errors import CriteriaError
    from pytest_vpstest.node_skips import unhealthy_why
    from pytest_vpstest.plugin.fixtures import skipped_nodes

    finished = time.time()
    # A node left out (handed over as not to test, or gone bad during the run) is out of every rate,
    # also for its pairs measured before it was found out; a failed test of an unhealthy node is not
    # a software failure.
    skipped = skipped_nodes(run)
    found = {n: unhealthy_why(n, reason) for n, reason in skipped.items()}
    unhealthy = {n: why for n, why in found.items() if why is not None}  # the nodes' own faults
    sick = set(unhealthy)
    counts = collector.counts(unhealthy=sick)
    measurements = collector.measurements(leave_out=set(skipped))
    suites = aggregate(measurements)
    suites_run = tuple(s for s in suites_of_focus(FULL_SUITE) if s in suites)
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
        # Nodes left out and why; the unhealthy ones among them and what failed (the loop tells node
        # faults from the software's).
        "skipped_nodes": skipped,
        "unhealthy": unhealthy,
        # A failure touching a node found unhealthy (before the run or during it, e.g. its agent
        # stopped answering) is the node's fault: "infrastructure"; any other is "software".
        "failed_tests": [
            {"test": t.nodeid, "nodes": list(t.nodes), "message": t.message,
             "cause": failure_cause(t.nodes, sick)}
            for t in collector.vps_tests
            if t.outcome in ("failed", "error")
        ],
        "evidence": evidence,
        "config": str(run.config_path),
        "inventory": str(run.inventory_path),
        "reproduce": run.reproduce(),
    }
    infrastructure = [f["test"] for f in document["failed_tests"] if f["cause"] == "infrastructure"]
    if infrastructure:
        lines.append(f"{len(infrastructure)} failed test(s) touched a node found unhealthy "
                     f"({', '.join(sorted(sick))}): infrastructure, not software")
    if interrupted:
        document["passed"] = False
        document["interrupted"] = interrupted
        write_json_atomic(results_path, document)
        lines.append(f"interrupted ({interrupted}): recorded as interrupted in {results_path}; "
                     "no state, history or proof written")
        notes = (*verdict.notes, f"interrupted: {interrupted}")
        failed = Verdict(False, verdict.criteria, verdict.checks, notes, verdict.expression)
        return RunOutcome(failed, document, results_path, None, lines)
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
            history.record_run(record, hosts, metric_rows(document["test_results"]["suites"]))
        lines.append(f"history: {_history_path(run)}")
    except Exception as exc:  # history is a record, not the verdict
        lines.append(f"warning: history not recorded: {type(exc).__name__}: {exc}")
