"""Reads everything the dashboard shows from the state directory: state files, transitions logs,
runner logs, results, proofs, the SQLite history and the dashboard's own action files.

Reading never writes (except the store's own repair of a corrupt state file). Expensive reads
(transitions log, history, configs) are cached by the files' size and modification time, so a page
refresh on an idle fleet re-reads nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pytest_vpstest.config import (
    DashboardConfig,
    Inventory,
    ProjectConfig,
    load_inventory,
    load_project_config,
)
from pytest_vpstest.dashboard import files
from pytest_vpstest.dashboard.model import (
    NodeTestFacts,
    history_series,
    matrix_cells,
    node_tests_colour,
    node_tests_tooltip,
)
from pytest_vpstest.errors import VpsTestError
from pytest_vpstest.records.history import History
from pytest_vpstest.records.store import StateStore, is_safe_identifier

__all__ = ["ProjectFiles", "StateReader", "parse_time"]

_T = TypeVar("_T")
TRANSITIONS_SHOWN = 40
HISTORY_POINTS = 200


def parse_time(text: Any) -> float | None:
    """POSIX seconds of an ISO-8601 time (``Z`` allowed), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _stamp(*paths: Path) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((-1, 0))
    return tuple(out)


@dataclass(frozen=True)
class ProjectFiles:
    """A project's config and inventory, as its runner recorded them (or as given on the command line)."""

    config: ProjectConfig | None
    inventory: Inventory | None


class StateReader:
    """The dashboard's view of ``state_dir``; ``configs`` (from ``--config``) win over recorded paths."""

    def __init__(self, state_dir: Path, configs: Mapping[str, ProjectConfig] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.configs = dict(configs or {})
        self.history = History(self.state_dir / "history.sqlite")
        self._cache: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    # -- caching -----------------------------------------------------------------------------
    def _cached(self, kind: str, key: str, stamp: Any, load: Callable[[], _T]) -> _T:
        with self._lock:
            hit = self._cache.get((kind, key))
        if hit is not None and hit[0] == stamp:
            return hit[1]  # type: ignore[no-any-return]
        value = load()
        with self._lock:
            self._cache[(kind, key)] = (stamp, value)
        return value

    # -- projects ----------------------------------------------------------------------------
    def projects(self) -> list[str]:
        """Every project directory holding a state file or a transitions log, by name."""
        try:
            entries = sorted(os.scandir(self.state_dir), key=lambda e: e.name)
        except OSError:
            return []
        return [
            e.name
            for e in entries
            if e.is_dir()
            and is_safe_identifier(e.name)
            and (
                os.path.exists(os.path.join(e.path, "state.json"))
                or os.path.exists(os.path.join(e.path, "transitions.jsonl"))
            )
        ]

    def project_dir(self, project: str) -> Path:
        if not is_safe_identifier(project):
            raise VpsTestError(f"not a project name: {project!r}")
        return self.state_dir / project

    def document(self, project: str) -> dict[str, Any]:
        store = StateStore(self.state_dir, project)
        return self._cached(
            "doc", project, _stamp(store.state_path, store.log_path), lambda: store.load() or {}
        )

    def transitions(self, project: str) -> list[dict[str, Any]]:
        """The project's transitions without their snapshots, oldest first."""
        store = StateStore(self.state_dir, project)

        def load() -> list[dict[str, Any]]:
            try:
                entries = store.transitions()
            except VpsTestError:
                return []
            return [{k: v for k, v in e.items() if k != "snapshot"} for e in entries]

        return self._cached("transitions", project, _stamp(store.log_path), load)

    def project_files(self, project: str) -> ProjectFiles:
        doc = self.document(project)
        runner = doc.get("runner") or {}
        config = self.configs.get(project)
        if config is None and isinstance(runner.get("config"), str):
            path = Path(runner["config"])
            config = self._cached("config", str(path), _stamp(path), lambda: _try(load_project_config, path))
        inventory = None
        inv_path = runner.get("inventory")
        if isinstance(inv_path, str):
            ipath = Path(inv_path)
            inventory = self._cached(
                "inventory", inv_path, _stamp(ipath), lambda: _try(load_inventory, ipath)
            )
        elif config is not None and config.inventory and config.path is not None:
            ipath = config.path.parent / config.inventory
            inventory = self._cached(
                "inventory", str(ipath), _stamp(ipath), lambda: _try(load_inventory, ipath)
            )
        return ProjectFiles(config, inventory)

    def dashboard_config(self, project: str) -> DashboardConfig:
        config = self.project_files(project).config
        return config.dashboard if config is not None else DashboardConfig()

    # -- history -----------------------------------------------------------------------------
    def _history_stamp(self) -> Any:
        db = self.state_dir / "history.sqlite"
        return _stamp(db, db.with_name("history.sqlite-wal"))

    def _history_exists(self) -> bool:
        return (self.state_dir / "history.sqlite").exists()

    def node_tests(self, project: str) -> dict[str, dict[str, Any]]:
        """Per node, its newest history row in the project's recent runs (finished time, counts, output)."""

        def load() -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            if not self._history_exists():
                return out
            for run in self.history.runs(project, limit=30):
                for row in self.history.host_runs(run.id):
                    if row.host_id not in out:
                        out[row.host_id] = {
                            "run_id": run.id,
                            "finished": parse_time(str(row.finished_at or "")),
                            "passed": row.passed,
                            "failed": row.failed,
                            "output": row.output,
                        }
            return out

        return self._cached("node_tests", project, self._history_stamp(), load)

    def history_charts(self, project: str, limit: int = HISTORY_POINTS) -> dict[str, Any]:
        def load() -> dict[str, Any]:
            if not self._history_exists():
                return history_series([])
            runs = list(reversed(self.history.runs(project, limit=limit)))
            return history_series([(r.id, str(r.started_at), self.history.metrics_of(r.id)) for r in runs])

        return self._cached(f"history-{limit}", project, self._history_stamp(), load)

    def run_detail(self, project: str, run_id: str) -> dict[str, Any] | None:
        run = self.history.run(run_id) if self._history_exists() else None
        if run is None or run.project != project:
            return None
        return {
            "id": run.id,
            "started_at": str(run.started_at),
            "finished_at": str(run.finished_at or ""),
            "passed": run.passed,
            "focus": run.focus,
            "criteria": run.criteria,
            "checkpoint": run.checkpoint,
            "verdict": dict(run.verdict or {}),
            "metrics": self.history.metrics_of(run.id),
            "hosts": [
                {"host": h.host_id, "passed": h.passed, "failed": h.failed, "output": h.output}
                for h in self.history.host_runs(run.id)
            ],
        }

    # -- results -----------------------------------------------------------------------------
    def last_results(self, project: str) -> dict[str, Any]:
        runner = self.document(project).get("runner") or {}
        path = runner.get("last_results")
        if not isinstance(path, str):
            return {}
        p = Path(path)
        return self._cached("results", path, _stamp(p), lambda: files.read_json_object(p))

    def artifact_hash(self, project: str) -> str | None:
        runner = self.document(project).get("runner") or {}
        path = runner.get("artifact")
        if not isinstance(path, str):
            return None
        p = Path(path)

        def load() -> str | None:
            try:
                return hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            except OSError:
                return None

        return self._cached("artifact", path, _stamp(p), load)

    # -- views -------------------------------------------------------------------------------
    def overview(self, now: float) -> dict[str, Any]:
        return {"projects": [self.project_view(p, now) for p in self.projects()], "now": now}

    def project_view(self, project: str, now: float) -> dict[str, Any]:
        """Everything the page shows of one project except the history charts (fetched on demand)."""
        doc = self.document(project)
        pdir = self.project_dir(project)
        stamps = doc.get("timestamps") or {}
        entered = parse_time(stamps.get("last_state_change"))
        transitions = self.transitions(project)
        results = self.last_results(project)
        pf = self.project_files(project)
        return {
            "project": project,
            "state": doc.get("state", "IDLE"),
            "phase": doc.get("phase"),
            "time_in_state": None if entered is None else max(0.0, now - entered),
            "timestamps": stamps,
            "counters": doc.get("counters") or {},
            "commits": doc.get("commits") or [],
            "stop_reason": (doc.get("machine") or {}).get("stop_reason"),
            "last_seq": doc.get("last_seq", 0),
            "transitions": transitions[-TRANSITIONS_SHOWN:],
            "verdict": _verdict(results, doc),
            "proofs": sorted(p.name for p in pdir.glob("proof-*.md")),
            "runs": _runs(pdir),
            "logs": [x for x in ("runner.log",) if (pdir / x).exists()]
            + sorted(f"logs/{p.name}" for p in (pdir / "logs").glob("*") if p.is_file())[:50],
            "nodes": self._nodes(project, doc, transitions, pf, now),
            "matrix": matrix_cells(results.get("pairs") or [], _nat_of(pf.inventory)),
            "actions": pf.config is not None and pf.inventory is not None,
        }

    def _nodes(
        self,
        project: str,
        doc: Mapping[str, Any],
        transitions: list[dict[str, Any]],
        pf: ProjectFiles,
        now: float,
    ) -> list[dict[str, Any]]:
        nodes_map = doc.get("nodes") or {}
        names = list(pf.inventory.names) if pf.inventory is not None else []
        names += [n for n in nodes_map if n not in names]
        dash = pf.config.dashboard if pf.config is not None else DashboardConfig()
        state = doc.get("state")
        deploy_done = [parse_time(t.get("time")) for t in transitions if t.get("from") == "DEPLOY"]
        last_deploy = deploy_done[-1] if deploy_done else None
        rollbacks: dict[str, dict[str, Any]] = {}
        pdir = self.project_dir(project)
        for r in files.rollbacks(pdir):
            rollbacks[str(r.get("node"))] = r
        history = self.node_tests(project)
        tested_here = files.nodes_with_test_runs(pdir)
        build = self.artifact_hash(project)
        commits = doc.get("commits") or []
        inv_nodes = {n.name: n for n in pf.inventory.nodes} if pf.inventory is not None else {}
        out = []
        for name in names:
            entry = nodes_map.get(name) or {}
            rb = rollbacks.get(name)
            rb_time = (
                float(rb["time"]) if rb and rb.get("ok") and isinstance(rb.get("time"), int | float) else None
            )
            changed = max(
                (t for t in (last_deploy if entry.get("deployed") else None, rb_time) if t), default=None
            )
            manual = files.latest_test_run(pdir, name) if name in tested_here else None
            h = history.get(name)
            tested_at, passed, failed = (h["finished"], h["passed"], h["failed"]) if h else (None, 0, 0)
            if manual and manual.get("state") in ("timeout", "error", "failed", "passed"):
                m_end = manual.get("finished") or manual.get("started")
                if isinstance(m_end, int | float) and (tested_at is None or m_end > tested_at):
                    tested_at, passed, failed = (
                        float(m_end),
                        int(manual.get("passed") or 0),
                        max(1, int(manual.get("failed") or 0)) if manual.get("state") != "passed" else 0,
                    )
            facts = NodeTestFacts(
                mode=dash.tests_mode(name),
                running=bool(manual and manual.get("state") == "running"),
                loop_testing=state == "TEST",
                deploying=state == "DEPLOY",
                changed_at=changed,
                tested_at=tested_at,
                passed=passed,
                failed=failed,
            )
            inv = inv_nodes.get(name)
            health = entry.get("health")
            if isinstance(health, Mapping):
                health = health.get("state")
            rolled_back = rb_time is not None and (last_deploy is None or rb_time > last_deploy)
            out.append(
                {
                    "name": name,
                    "role": inv.role if inv else None,
                    "nat": inv.nat if inv else None,
                    "reachable": entry.get("status", "unknown"),
                    "last_check": entry.get("last_check"),
                    "error": entry.get("error"),
                    "deployed": entry.get("deployed"),
                    "deployed_at": changed,
                    "build": "previous build (rolled back)" if rolled_back else (build or None),
                    "commit": commits[-1]["sha"][:12] if commits and not rolled_back else None,
                    "health": health,
                    "tests": node_tests_colour(facts),
                    "tests_mode": facts.mode,
                    "tooltip": node_tests_tooltip(facts, now),
                }
            )
        return out

    def node_view(self, project: str, node: str, now: float) -> dict[str, Any] | None:
        """The popup: the node's compartments, failed tests/pairs with output, its dashboard runs."""
        view = self.project_view(project, now)
        match = [n for n in view["nodes"] if n["name"] == node]
        if not match:
            return None
        results = self.last_results(project)
        pairs = [
            p
            for p in results.get("pairs") or []
            if node in (p.get("from"), p.get("to"))
            and int(p.get("success") or 0) < int(p.get("attempts") or 0)
        ]
        h = self.node_tests(project).get(node)
        manual = files.latest_test_run(self.project_dir(project), node)
        manual_output = ""
        if manual is not None:
            with contextlib.suppress(OSError):
                manual_output = (Path(manual["dir"]) / "output.log").read_text(
                    encoding="utf-8", errors="replace"
                )[-20000:]
        return {
            **match[0],
            "failed_pairs": pairs[:200],
            "last_run": h,
            "manual": {k: v for k, v in (manual or {}).items() if k != "dir"} or None,
            "manual_output": manual_output,
            "actions": view["actions"],
        }


def _try(load: Callable[[Path], _T], path: Path) -> _T | None:
    try:
        return load(path)
    except (VpsTestError, OSError):
        return None




def _nat_of(inventory: Inventory | None) -> dict[str, str]:
    return {n.name: n.nat for n in inventory.nodes} if inventory is not None else {}


def _verdict(results: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any] | None:
    v = results.get("verdict")
    if not isinstance(v, Mapping):
        tr = doc.get("test_results") or {}
        return {"passed": tr.get("passed"), "checks": [], "last_run": tr.get("last_run")} if tr else None
    checks = []
    for c in v.get("checks") or []:
        target, measured = c.get("target"), c.get("measured")
        gap = (
            round(float(measured) - float(target), 2)
            if isinstance(target, int | float) and isinstance(measured, int | float)
            else None
        )
        checks.append(
            {
                "metric": c.get("metric"),
                "op": c.get("op", ">="),
                "target": target,
                "measured": measured,
                "gap": gap,
                "passed": bool(c.get("passed")),
            }
        )
    return {
        "passed": bool(v.get("passed", results.get("passed"))),
        "criteria": v.get("criteria"),
        "checks": checks,
        "run_id": results.get("run_id"),
    }


def _runs(project_dir: Path) -> list[dict[str, Any]]:
    try:
        dirs = sorted((d for d in (project_dir / "runs").iterdir() if d.is_dir()), key=lambda d: d.name)
    except OSError:
        return []
    out = []
    for d in dirs[-10:]:
        out.append(
            {
                "name": d.name,
                "files": [f"runs/{d.name}/{f}" for f in ("results.json", "report.html") if (d / f).exists()],
            }
        )
    return out
