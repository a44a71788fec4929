"""SQLite history of test runs: per-host rows, per-run verdicts and metrics.

Tables (``PRAGMA user_version`` holds the schema version):

- ``hosts`` and ``test_runs`` (one ``test_runs`` row per node per run; its
  ``id`` is ``<run id>:<host id>``);
- ``runs``: one row per pytest run (project, focus, criteria, times, passed, verdict JSON, the
  loop state and soak checkpoint it ran in);
- ``metrics``: ``(run_id, suite, category, name, value)``.

One database serves every project. It is created on first use, opened in WAL mode so readers
(CLI, dashboard) never block the writer, and every :meth:`History.record_run` is one
transaction (``BEGIN IMMEDIATE`` with a busy timeout), so writers in several processes interleave
whole runs. Recording a run id again replaces that run (a resumed loop never duplicates).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pytest_vpstest.errors import StateError

__all__ = ["SCHEMA_VERSION", "History", "HostRun", "HostStatus", "MetricRow", "RunRecord"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    id               TEXT PRIMARY KEY,
    test_status_json TEXT
);

CREATE TABLE IF NOT EXISTS test_runs (
    id          TEXT PRIMARY KEY,
    host_id     TEXT NOT NULL,
    started_at  DATETIME NOT NULL,
    finished_at DATETIME,
    exit_code   INTEGER,
    passed      INTEGER,
    failed      INTEGER,
    output      TEXT,
    FOREIGN KEY (host_id) REFERENCES hosts(id)
);
CREATE INDEX IF NOT EXISTS idx_test_runs_host ON test_runs(host_id, started_at DESC);

CREATE TABLE IF NOT EXISTS runs (
    id           TEXT PRIMARY KEY,
    project      TEXT NOT NULL,
    focus        TEXT,
    criteria     TEXT,
    started_at   DATETIME NOT NULL,
    finished_at  DATETIME,
    passed       INTEGER,
    verdict_json TEXT,
    loop_state   TEXT,
    checkpoint   TEXT
);
CREATE INDEX IF NOT EXISTS idx_runs_project ON runs(project, focus, started_at DESC);

CREATE TABLE IF NOT EXISTS metrics (
    run_id   TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    suite    TEXT NOT NULL,
    category TEXT NOT NULL,
    name     TEXT NOT NULL,
    value    REAL NOT NULL,
    PRIMARY KEY (run_id, suite, category, name)
);
"""

Timestamp = str | datetime


def _iso(value: Timestamp | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        # One text format for every stored time, so that ordering by the column is by time.
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RunRecord:
    """One pytest run of a project (a row of ``runs``)."""

    id: str
    project: str
    started_at: Timestamp
    finished_at: Timestamp | None = None
    passed: bool | None = None
    focus: str | None = None
    criteria: str | None = None
    verdict: Mapping[str, Any] | None = None
    loop_state: str | None = None
    # Which soak checkpoint the run belongs to, e.g. "initial", "wait_1hr", "wait_6hr".
    checkpoint: str | None = None


@dataclass(frozen=True)
class HostRun:
    """One node's part of a run (a row of ``test_runs``)."""

    host_id: str
    started_at: Timestamp
    finished_at: Timestamp | None = None
    exit_code: int | None = None
    passed: int = 0
    failed: int = 0
    output: str = ""


@dataclass(frozen=True)
class HostStatus:
    """The latest test run of one host, as a per-host test status shows it."""

    host_id: str
    test_run_id: str
    started_at: str
    finished_at: str | None
    exit_code: int | None
    passed: int
    failed: int
    state: Literal["passed", "failed", "running"]


MetricRow = tuple[str, str, str, float]
Metrics = Mapping[str, Mapping[str, Mapping[str, Any]]] | Iterable[MetricRow]


def _metric_rows(metrics: Metrics | None) -> list[MetricRow]:
    """Flatten ``{suite: {category: {name: value}}}`` (numbers only) or pass rows through."""
    if metrics is None:
        return []
    if isinstance(metrics, Mapping):
        rows: list[MetricRow] = []
        for suite, categories in metrics.items():
            for category, names in categories.items():
                if not isinstance(names, Mapping):
                    continue
                for name, value in names.items():
                    # Non-numeric entries (strings, lists) are descriptions, not metrics.
                    if isinstance(value, bool | int | float):
                        rows.append((str(suite), str(category), str(name), float(value)))
        return rows
    return [(str(s), str(c), str(n), float(v)) for s, c, n, v in metrics]


class History:
    """The SQLite history at ``path`` (created with its directory on first use).

    Safe to share between threads (one connection per thread) and between processes (WAL,
    ``BEGIN IMMEDIATE``, busy timeout). A process that forks gets fresh connections.
    """

    def __init__(self, path: Path | str, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._init_lock = threading.Lock()
        self._ready_pid: int | None = None

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        mode = self._switch_to_wal(conn)
        if str(mode).lower() != "wal":
            conn.close()
            raise StateError(f"history {self.path}: cannot use WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._local.conn, self._local.pid = conn, os.getpid()
        self._ensure_schema(conn)
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        # Changing the journal mode of a fresh file needs an exclusive lock, and SQLite answers
        # "database is locked" at once instead of calling the busy handler: retry until the timeout.
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                with self._init_lock:
                    return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        with self._init_lock:
            if self._ready_pid == os.getpid():
                return
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"history {self.path} has schema version {version}; this pytest-vpstest "
                    f"reads up to {SCHEMA_VERSION} (upgrade pytest-vpstest)"
                )
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # Re-read inside the write lock: another process may have just created it.
                    if int(conn.execute("PRAGMA user_version").fetchone()[0]) < SCHEMA_VERSION:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            self._ready_pid = os.getpid()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (other threads' close when they end)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    # -- writing -----------------------------------------------------------------------------

    def record_run(
        self, run: RunRecord, host_rows: Iterable[HostRun] = (), metrics: Metrics | None = None
    ) -> None:
        """Record a run, its per-host rows and its metrics in one transaction.

        Recording the same run id again replaces the run's row, host rows and metrics.
        ``metrics`` is ``{suite: {category: {name: number}}}`` (non-numbers skipped) or rows
        ``(suite, category, name, value)``.
        """
        hosts = list(host_rows)
        rows = _metric_rows(metrics)
        verdict = (
            json.dumps(dict(run.verdict), sort_keys=True, default=str) if run.verdict is not None else None
        )
        with self._write() as conn:
            conn.execute("DELETE FROM metrics WHERE run_id = ?", (run.id,))
            conn.execute(
                "DELETE FROM test_runs WHERE id >= ? AND id < ? AND id = ? || ':' || host_id", _of_run(run.id)
            )
            conn.execute(
                "INSERT OR REPLACE INTO runs (id, project, focus, criteria, started_at, finished_at, "
                "passed, verdict_json, loop_state, checkpoint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.project,
                    run.focus,
                    run.criteria,
                    _iso(run.started_at),
                    _iso(run.finished_at),
                    None if run.passed is None else int(run.passed),
                    verdict,
                    run.loop_state,
                    run.checkpoint,
                ),
            )
            for h in hosts:
                conn.execute("INSERT OR IGNORE INTO hosts (id) VALUES (?)", (h.host_id,))
                conn.execute(
                    "INSERT INTO test_runs (id, host_id, started_at, finished_at, exit_code, passed, "
                    "failed, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        f"{run.id}:{h.host_id}",
                        h.host_id,
                        _iso(h.started_at),
                        _iso(h.finished_at),
                        h.exit_code,
                        h.passed,
                        h.failed,
                        h.output,
                    ),
                )
                status = {"passed": h.passed, "failed": h.failed, "exit_code": h.exit_code, "run_id": run.id}
                conn.execute(
                    "UPDATE hosts SET test_status_json = ? WHERE id = ?", (json.dumps(status), h.host_id)
                )
            conn.executemany(
                "INSERT INTO metrics (run_id, suite, category, name, value) VALUES (?, ?, ?, ?, ?)",
                [(run.id, *r) for r in rows],
            )

    # -- reading -----------------------------------------------------------------------------

    def run(self, run_id: str) -> RunRecord | None:
        row = self._conn().execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _run_record(row) if row else None

    def runs(self, project: str, limit: int = 20) -> list[RunRecord]:
        """The project's most recent runs, newest first."""
        rows = self._conn().execute(
            "SELECT * FROM runs WHERE project = ? ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (project, limit),
        )
        return [_run_record(r) for r in rows]

    def previous_run(self, project: str, focus: str | None, before: str | None = None) -> RunRecord | None:
        """The latest finished run of ``project`` and ``focus`` (None matches runs without one).

        ``before`` limits it to runs started before that run (a recorded run id) or time (ISO
        8601); an id not recorded yet only excludes itself. Pass the current run's id to find the
        run to compare with.
        """
        clauses = ["project = ?", "finished_at IS NOT NULL", "focus IS ?"]
        params: list[Any] = [project, focus]
        if before is not None:
            ref = self.run(before)
            if ref is not None:
                clauses += ["started_at < ?", "id != ?"]
                params += [_iso(ref.started_at), ref.id]
            elif _is_time(before):
                clauses.append("started_at < ?")
                params.append(_iso(before))
            else:
                # A run id not recorded yet (the current run asks before it records itself).
                clauses.append("id != ?")
                params.append(before)
        row = (
            self._conn()
            .execute(
                # The clauses are fixed text above; values are parameters.
                f"SELECT * FROM runs WHERE {' AND '.join(clauses)} "  # noqa: S608
                "ORDER BY started_at DESC, rowid DESC LIMIT 1",
                params,
            )
            .fetchone()
        )
        return _run_record(row) if row else None

    def metrics_of(self, run_id: str) -> dict[str, dict[str, dict[str, float]]]:
        """``{suite: {category: {name: value}}}`` of one run (empty when none were recorded)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        rows = self._conn().execute(
            "SELECT suite, category, name, value FROM metrics WHERE run_id = ? "
            "ORDER BY suite, category, name",
            (run_id,),
        )
        for r in rows:
            out.setdefault(r["suite"], {}).setdefault(r["category"], {})[r["name"]] = float(r["value"])
        return out

    def host_runs(self, run_id: str) -> list[HostRun]:
        """The per-host rows recorded with a run."""
        rows = self._conn().execute(
            "SELECT * FROM test_runs WHERE id >= ? AND id < ? AND id = ? || ':' || host_id ORDER BY host_id",
            _of_run(run_id),
        )
        return [
            HostRun(
                r["host_id"],
                r["started_at"],
                r["finished_at"],
                r["exit_code"],
                r["passed"] or 0,
                r["failed"] or 0,
                r["output"] or "",
            )
            for r in rows
        ]

    def host_status(self, host_id: str) -> HostStatus | None:
        """The host's latest test run: counts and passed / failed / running."""
        r = (
            self._conn()
            .execute(
                "SELECT * FROM test_runs WHERE host_id = ? ORDER BY started_at DESC, rowid DESC LIMIT 1",
                (host_id,),
            )
            .fetchone()
        )
        if r is None:
            return None
        state: Literal["passed", "failed", "running"]
        if r["finished_at"] is None:
            state = "running"
        elif (r["exit_code"] not in (None, 0)) or (r["failed"] or 0) > 0:
            state = "failed"
        else:
            state = "passed"
        return HostStatus(
            r["host_id"],
            r["id"],
            r["started_at"],
            r["finished_at"],
            r["exit_code"],
            r["passed"] or 0,
            r["failed"] or 0,
            state,
        )


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _of_run(run_id: str) -> tuple[str, str, str]:
    """Parameters of ``id >= ? AND id < ? AND id = ? || ':' || host_id``: a run's host rows.

    Their ids are ``<run id>:<host id>``, so all of them sort between ``<run id>:`` and ``<run id>;``
    (':' + 1): a range the primary key's index answers directly, where ``id LIKE '<run>:%'`` scanned
    the whole table (SQLite's LIKE ignores case, so the index cannot serve it). The equality keeps
    out the rows of another run whose id starts with ``<run id>:``.
    """
    return f"{run_id}:", f"{run_id};", run_id


def _run_record(r: sqlite3.Row) -> RunRecord:
    verdict = json.loads(r["verdict_json"]) if r["verdict_json"] else None
    return RunRecord(
        id=r["id"],
        project=r["project"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        passed=None if r["passed"] is None else bool(r["passed"]),
        focus=r["focus"],
        criteria=r["criteria"],
        verdict=verdict,
        loop_state=r["loop_state"],
        checkpoint=r["checkpoint"],
    )
