"""The run's matrix: every measured cell planned up front, run once by the engine, shared by all tests.

The first test of a run that asks for its cell (the ``matrix_cell`` or ``matrix_parts`` fixture)
plans the whole matrix from the session's selected tests: each test whose suite module defines
``matrix_cell(pair, run) -> ProbeSpec`` becomes one cell (its test node id is the key), so ``-k``,
``-m`` and ``--vps-focus`` select what is measured. A test measured by several cells that depend on
each other (a gossip broadcast: subscribes, the publish, each receiver's polls) comes from the
module's ``matrix_parts(item, run, key, earlier) -> [(part, ProbeSpec), ...]``: ``key(part)`` is a
part's cell key, ``earlier`` the keys of the suite's cells planned before this test's. That process
runs the engine in a background thread; each test then waits for its own cells and judges them, so
results stream to the reports as they arrive.

Under xdist every worker collects the same tests, and exactly one process runs the engine: the
first to take the lock ``<run_dir>/matrix/engine.lock``. It appends each finished cell to
``cells.jsonl`` (one JSON line: key and probe results) and the others read that file, so a run
measures every probe once and serial and parallel runs give the same numbers. The file's first
line says which parts each multi-part test has (``{"parts": {test: {part: key}}}``). The owner keeps the
lock until its engine is done (its session teardown waits for it); a reader that finds the lock
free before the file says ``done`` knows the owner died and fails its test with that reason.
Progress (per suite: probes done / total, rate, ETA) goes to ``progress.json`` for the terminal
(:mod:`pytest_vpstest.plugin.progress`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

from pytest_vpstest.plugin.fixtures import (
    RunContext,
    failed_nodes,
    mark_unhealthy,
    nat_skip_reason,
    skipped_nodes,
)

if TYPE_CHECKING:
    from pytest_vpstest.fleet.probes import ProbeResult, ProbeRunner
    from pytest_vpstest.fleet.remote import Pool
    from pytest_vpstest.plugin.engine import Engine
    from pytest_vpstest.plugin.schedule import Cell

__all__ = [
    "Matrix",
    "MatrixError",
    "matrix_cell",
    "matrix_parts",
    "part_key",
    "plan_cells",
    "vps_matrix",
]

PLANNER = "matrix_cell"  # the suite module function that turns a test's pair into a ProbeSpec
PARTS_PLANNER = "matrix_parts"  # ... that turns a test into parts: [(part, ProbeSpec), ...]
POLL_SECONDS = 0.05
PROGRESS_EVERY = 0.5


class MatrixError(Exception):
    """The matrix could not give a test its cell (not planned, or the engine's process ended)."""


def part_key(test: str, part: str) -> str:
    """The cell key of one part of a multi-part test."""
    return f"{test} #{part}"


def plan_cells(items: list[pytest.Item], run: RunContext) -> list[Cell]:
    """One cell per selected test whose suite plans cells (several for a multi-part test), in test
    order; tests that will skip (a node not deployed or not to test, NAT needed where there is none)
    are left out."""
    from pytest_vpstest.plugin.engine import ProbeSpec

    failed = set(failed_nodes(run)) | set(skipped_nodes(run))
    no_nat = nat_skip_reason(run.inventory)
    cells: list[Cell] = []
    for item in items:
        parts = getattr(getattr(item, "module", None), PARTS_PLANNER, None)
        marker = item.get_closest_marker("vps_suite")
        if parts is not None and marker is not None and marker.args:
            phase = str(marker.args[0])
            earlier = tuple(c.key for c in cells if c.phase == phase)
            test = item.nodeid
            for part, spec in parts(item, run, functools.partial(part_key, test), earlier):
                cells.append(spec.cell(part_key(test, part), phase, test=test))
            continue
        planner = getattr(getattr(item, "module", None), PLANNER, None)
        callspec = getattr(item, "callspec", None)
        pair = callspec.params.get("pair") if callspec is not None else None
        if planner is None or pair is None or marker is None or not marker.args:
            continue
        if failed & {pair.src, pair.dst} or (no_nat and item.get_closest_marker("needs_nat")):
            continue
        spec = planner(pair, run)
        if isinstance(spec, ProbeSpec):
            cells.append(spec.cell(item.nodeid, str(marker.args[0])))
    return cells


class Matrix:
    """This process's view of the run's matrix (owner: runs the engine; else reads its file)."""

    def __init__(
        self,
        run_dir: Path,
        plan: Callable[[], list[Cell]],
        make_engine: Callable[[list[Cell], Callable[[Cell, list[ProbeResult]], None]], Engine],
    ) -> None:
        self.dir = run_dir / "matrix"
        self._plan = plan
        self._make_engine = make_engine
        self._cond = threading.Condition()
        self._results: dict[str, list[dict[str, Any]]] = {}
        self._parts: dict[str, dict[str, str]] | None = None  # test -> {part: key}, once planned
        self._done = False
        self._error: str | None = None
        self._role: str | None = None  # "owner" | "reader"
        self._lock_file: IO[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._offset = 0
        self._partial = b""
        self._engine: Engine | None = None
        self._last_progress = 0.0

    @property
    def cells_file(self) -> Path:
        return self.dir / "cells.jsonl"

    @property
    def progress_file(self) -> Path:
        return self.dir / "progress.json"

    def results(self, key: str) -> list[ProbeResult]:
        """The cell's probe results, waiting for the engine to measure it."""
        from pytest_vpstest.fleet.probes import ProbeResult

        self._begin()
        if self._role == "owner":
            with self._cond:
                while key not in self._results and not self._done:
                    self._cond.wait()
                found = self._results.get(key)
        else:
            found = self._read_until(key)
        if found is None:
            why = self._error or "its test was not in the plan when the matrix was made"
            raise MatrixError(f"no measurement for {key}: {why}")
        return [ProbeResult.from_json(r) for r in found]

    def parts(self, test: str) -> dict[str, list[ProbeResult]]:
        """A multi-part test's probe results by part, waiting for the engine to measure them all."""
        self._begin()
        with self._cond:
            while self._role == "owner" and self._parts is None and not self._done:
                self._cond.wait()
        if self._role != "owner":
            self._read_until_planned()
        keys = (self._parts or {}).get(test)
        if keys is None:
            why = self._error or "it was not in the plan when the matrix was made"
            raise MatrixError(f"no measurement for {test}: {why}")
        return {part: self.results(key) for part, key in keys.items()}

    def close(self) -> None:
        """Wait for this process's engine to finish (other processes may still need its cells)."""
        if self._thread is not None:
            self._thread.join()
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- owner ----------------------------------------------------------------------------
    def _begin(self) -> None:
        with self._cond:
            if self._role is not None:
                return
            self.dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.dir / "engine.lock", "ab")  # noqa: SIM115 - held for the engine's life
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                self._role = "reader"
                return
            if self.cells_file.exists():  # an engine of this run already ran (and ended)
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
                self._role = "reader"
                return
            self._lock_file, self._role = handle, "owner"
            self.cells_file.write_text("")
            try:
                cells = self._plan()
                self._parts = {}
                for cell in cells:
                    if cell.test:
                        self._parts.setdefault(cell.test, {})[
                            cell.key.removeprefix(part_key(cell.test, ""))
                        ] = cell.key
                self._append({"parts": self._parts})
                self._engine = self._make_engine(cells, self._on_cell)
            except Exception as exc:  # every test of the run fails with this reason instead of hanging
                self._error = f"the matrix could not be planned: {type(exc).__name__}: {exc}"
                self._append({"done": True, "error": self._error})
                self._done = True
                return
            self._thread = threading.Thread(target=self._run, name="vps-matrix-engine", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._engine is not None
        error = None
        try:
            self._engine.run()
        except Exception as exc:  # every waiting test fails with this reason instead of hanging
            error = f"the matrix engine failed: {type(exc).__name__}: {exc}"
        self._write_progress(force=True)
        with self._cond:
            self._append({"done": True, "error": error})
            self._done, self._error = True, error
            self._cond.notify_all()

    def _on_cell(self, cell: Cell, results: list[ProbeResult]) -> None:
        docs = [r.to_json() for r in results]
        # First the progress (a suite's last cell: its final figures), so that no test's report
        # comes before the figures that include its cell.
        self._write_progress(
            force=self._engine is not None and self._engine.progress[cell.phase].ended is not None
        )
        with self._cond:
            self._append({"key": cell.key, "results": docs})
            self._results[cell.key] = docs
            self._cond.notify_all()

    def _append(self, doc: dict[str, Any]) -> None:
        with open(self.cells_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(doc) + "\n")

    def _write_progress(self, force: bool = False) -> None:
        from pytest_vpstest._files import write_json_atomic

        now = time.monotonic()
        if self._engine is None or (not force and now - self._last_progress < PROGRESS_EVERY):
            return
        self._last_progress = now
        with contextlib.suppress(OSError):
            write_json_atomic(self.progress_file, {"phases": self._engine.snapshot()})

    # -- reader ---------------------------------------------------------------------------
    def _read_until_planned(self) -> None:
        while True:
            self._read_new()
            if self._parts is not None or self._done:
                return
            if self._owner_gone():
                self._read_new()
                if self._parts is None and not self._done:
                    self._error = "the process running the matrix engine ended before planning"
                return
            time.sleep(POLL_SECONDS)

    def _read_until(self, key: str) -> list[dict[str, Any]] | None:
        while True:
            self._read_new()
            if key in self._results or self._done:
                return self._results.get(key)
            if self._owner_gone():
                self._read_new()
                if key in self._results or self._done:
                    return self._results.get(key)
                self._error = "the process running the matrix engine ended before measuring it"
                return None
            time.sleep(POLL_SECONDS)

    def _read_new(self) -> None:
        try:
            with open(self.cells_file, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            doc = json.loads(line)
            if "parts" in doc:
                self._parts = doc["parts"]
            elif doc.get("done"):
                self._done, self._error = True, doc.get("error")
            else:
                self._results[str(doc["key"])] = doc["results"]

    def _owner_gone(self) -> bool:
        if not self.cells_file.exists():
            return False  # the owner has the lock but has not planned yet
        with open(self.dir / "engine.lock", "ab") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
            return True


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def vps_matrix(
    request: pytest.FixtureRequest, vps_run: RunContext, probe: ProbeRunner, node_pool: Pool
) -> Iterator[Matrix]:
    """The run's matrix (planned from the session's tests on first use, measured once per run).

    A node whose agent stops answering while SSH still works (``plugin.agent_watch``) is marked
    unhealthy for the rest of the run as soon as the engine notices; its remaining steps are not run."""
    from pytest_vpstest.plugin.agent_watch import AgentWatch
    from pytest_vpstest.plugin.engine import Engine, FleetSteps

    session = request.session

    def make_engine(cells: list[Cell], on_cell: Callable[[Cell, list[ProbeResult]], None]) -> Engine:
        nodes = {n for c in cells for n in c.nodes}
        threads = max(4, len(nodes) * vps_run.node_concurrency)
        steps = FleetSteps(probe, node_pool, threads=threads)
        return Engine(
            cells,
            steps,
            vps_run.node_concurrency,
            on_cell,
            watch=AgentWatch(),
            on_unhealthy=lambda node, why: mark_unhealthy(vps_run, node, why),
        )

    matrix = Matrix(vps_run.run_dir, lambda: plan_cells(list(session.items), vps_run), make_engine)
    try:
        yield matrix
    finally:
        matrix.close()


@pytest.fixture
def matrix_cell(
    request: pytest.FixtureRequest, vps_matrix: Matrix, vps_run: RunContext
) -> Callable[[], list[ProbeResult]]:
    """``matrix_cell()`` → this test's probe results, measured by the run's matrix engine.

    A pair touching a node found unhealthy during the run (before its test reports) is skipped as
    ``node unhealthy`` (or with the reason a node not to test was handed over with), whatever its cell
    measured: that node's pairs stay out of every rate."""

    def results() -> list[ProbeResult]:
        try:
            found = vps_matrix.results(request.node.nodeid)
        except MatrixError as exc:
            pytest.fail(str(exc), pytrace=False)
        callspec = getattr(request.node, "callspec", None)
        pair = callspec.params.get("pair") if callspec is not None else None
        touched = {pair.src, pair.dst} if pair is not None else {r.node for r in found}
        left_out = skipped_nodes(vps_run)
        reasons = [left_out[n] for n in sorted(touched) if n in left_out]
        if reasons:
            pytest.skip("; ".join(reasons))
        return found

    return results


@pytest.fixture
def matrix_parts(
    request: pytest.FixtureRequest, vps_matrix: Matrix
) -> Callable[[], dict[str, list[ProbeResult]]]:
    """``matrix_parts()`` → this multi-part test's probe results by part (see ``plan_cells``),
    measured by the run's matrix engine. Which nodes count (a node found unhealthy meanwhile) is
    the suite's to judge."""

    def results() -> dict[str, list[ProbeResult]]:
        try:
            return vps_matrix.parts(request.node.nodeid)
        except MatrixError as exc:
            pytest.fail(str(exc), pytrace=False)

    return results
