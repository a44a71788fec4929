"""The matrix engine's plan and scheduler: which probe runs when (pure; no clock, no I/O).

A run's matrix is a list of :class:`Cell` s, one per pytest test (a pair and method of a suite).
A cell has ``steps`` (its attempts, plus e.g. a throughput pair's iperf3 ceiling) that run in
order; between two steps of one cell the scheduler keeps the cell's ``cooloff``, unless the cell
says its attempts may ``overlap`` (no cool-off asked for: they may run at the same time). Cells do
not wait for each other: any step whose nodes have a free slot starts.

Limits: a step occupies one slot on each node it touches, at most ``per_node`` slots per node; an
``exclusive`` step (a throughput transfer) needs its nodes idle and holds them alone, so no two
transfers share a node while disjoint links run at the same time. A cell may make only its steps
from ``exclusive_from`` on exclusive (a hole punch preceded by a reset of both nodes: the reset
must not cut another pair's probe in flight on the same node). Cells run phase by phase (one
suite after another, in the order of the tests), so one suite's load never disturbs another's
figures.

Dependencies: a cell may start only ``after`` other cells of its phase have ended (listed before it,
so there is no cycle) — e.g. a gossip receiver's polls wait for the publish. A cell ends when all
its steps finished, or earlier when the caller ``stop`` s it (a poll that got its answer): its
steps not yet started are dropped.

The caller owns the clock: ``start(now)`` hands out the steps that may start, ``finish(task, now)``
returns a slot, ``wake_at(now)`` says when a cooling cell becomes ready.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Cell", "Scheduler", "Task"]


@dataclass(frozen=True)
class Cell:
    """One measured cell: ``steps`` runs touching ``nodes``, in suite ``phase``.

    ``spec`` is the caller's description of what a step does (the scheduler never reads it).
    """

    key: str
    phase: str
    nodes: tuple[str, ...]
    steps: int
    cooloff: float = 0.0
    overlap: bool = False
    exclusive: bool = False
    exclusive_from: int | None = None  # steps with this index or later are exclusive
    after: tuple[str, ...] = ()  # keys of cells (earlier in the same phase) that must end first
    test: str = ""  # the test this cell is one part of ("": the cell is its test's only one)
    spec: object = field(default=None, compare=False)

    def exclusive_step(self, index: int) -> bool:
        """Whether step ``index`` needs its nodes idle and holds them alone."""
        return self.exclusive or (self.exclusive_from is not None and index >= self.exclusive_from)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"cell {self.key}: steps must be at least 1")
        if self.cooloff < 0:
            raise ValueError(f"cell {self.key}: cooloff must not be negative")
        if not self.nodes:
            raise ValueError(f"cell {self.key}: touches no node")


@dataclass(frozen=True)
class Task:
    """Step ``index`` (0-based) of ``cell``."""

    cell: Cell
    index: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.cell.key, self.index)


class Scheduler:
    """Hands out the steps of ``cells`` under per-node limits, cool-offs and exclusivity."""

    def __init__(self, cells: Sequence[Cell], per_node: int) -> None:
        if per_node < 1:
            raise ValueError("per_node must be at least 1")
        keys = [c.key for c in cells]
        if len(set(keys)) != len(keys):
            raise ValueError("cell keys must be unique")
        seen: dict[str, str] = {}
        for cell in cells:
            for key in cell.after:
                if seen.get(key) != cell.phase:
                    raise ValueError(
                        f"cell {cell.key}: {key!r} is not an earlier cell of phase {cell.phase!r}"
                    )
            seen[cell.key] = cell.phase
        self.per_node = per_node
        self.phases: list[list[Cell]] = []
        index: dict[str, int] = {}
        for cell in cells:
            if cell.phase not in index:
                index[cell.phase] = len(self.phases)
                self.phases.append([])
            self.phases[index[cell.phase]].append(cell)
        self.phase = 0
        self.load: Counter[str] = Counter()
        self._exclusive: set[str] = set()
        self._started: Counter[str] = Counter()
        self._finished: Counter[str] = Counter()
        self._running: Counter[str] = Counter()
        self._ready_at: dict[str, float] = {}
        self._pending: dict[str, Cell] = {}
        self._stopped: set[str] = set()
        self._ended: set[str] = set()
        self._enter_phase()

    # -- queries --------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase >= len(self.phases)

    @property
    def running(self) -> int:
        return sum(self._running.values())

    def finished_steps(self, key: str) -> int:
        return self._finished[key]

    def ended(self, key: str) -> bool:
        """Whether the cell is over: every step finished, or stopped with none still running."""
        return key in self._ended

    def wake_at(self, now: float) -> float | None:
        """The earliest later time a cooling cell of this phase may start its next step."""
        later = [
            self._ready_at[c.key]
            for c in self._pending.values()
            if self._started[c.key] < c.steps and c.key not in self._stopped and self._ready_at[c.key] > now
        ]
        return min(later) if later else None

    # -- transitions ----------------------------------------------------------------------
    def start(self, now: float) -> list[Task]:
        """The steps that may start at ``now`` (they count as running from here)."""
        out: list[Task] = []
        for cell in list(self._pending.values()):
            while self._can_start(cell, now):
                index = self._started[cell.key]
                out.append(Task(cell, index))
                self._started[cell.key] += 1
                self._running[cell.key] += 1
                for n in cell.nodes:
                    self.load[n] += 1
                if cell.exclusive_step(index):
                    self._exclusive.update(cell.nodes)
        return out

    def finish(self, task: Task, now: float) -> None:
        """Step ``task`` ended at ``now``: its slots are free, its cell's cool-off starts."""
        cell = task.cell
        if self._running[cell.key] <= 0:
            raise ValueError(f"step {task.index} of {cell.key} is not running")
        self._running[cell.key] -= 1
        self._finished[cell.key] += 1
        for n in cell.nodes:
            self.load[n] -= 1
        if cell.exclusive_step(task.index):
            self._exclusive.difference_update(cell.nodes)
        if not cell.overlap:
            self._ready_at[cell.key] = now + cell.cooloff
        if self._finished[cell.key] == cell.steps or cell.key in self._stopped:
            self._end_if_idle(cell.key)

    def stop(self, key: str) -> int:
        """The cell needs no more steps: those not started are dropped (how many is returned); it
        ends once its running steps have finished."""
        cell = self._pending.get(key)
        if cell is None or key in self._stopped:
            return 0
        self._stopped.add(key)
        dropped = cell.steps - self._started[key]
        self._end_if_idle(key)
        return dropped

    # -- internals ------------------------------------------------------------------------
    def _end_if_idle(self, key: str) -> None:
        if self._running[key] or key not in self._pending:
            return
        del self._pending[key]
        self._ended.add(key)
        if not self._pending:
            self.phase += 1
            self._enter_phase()

    def _enter_phase(self) -> None:
        while self.phase < len(self.phases):
            self._pending = {c.key: c for c in self.phases[self.phase]}
            for key in self._pending:
                self._ready_at.setdefault(key, 0.0)
            if self._pending:
                return
            self.phase += 1
        self._pending = {}

    def _can_start(self, cell: Cell, now: float) -> bool:
        if self._started[cell.key] >= cell.steps or self._ready_at[cell.key] > now:
            return False
        if cell.key in self._stopped or not all(key in self._ended for key in cell.after):
            return False
        if not cell.overlap and self._running[cell.key]:
            return False
        if any(n in self._exclusive for n in cell.nodes):
            return False
        if cell.exclusive_step(self._started[cell.key]):
            return all(self.load[n] == 0 for n in cell.nodes)
        return all(self.load[n] < self.per_node for n in cell.nodes)
