"""What a matrix cell measures (:class:`ProbeSpec`), and how cells that depend on others are run.

A pair cell (connectivity, NAT traversal, throughput) is fixed when it is planned: K attempts of one
probe from ``node`` to ``peer``. A gossip broadcast or a CRDT check is a chain of cells instead:
the publish runs ``after`` the receivers subscribed, each receiver's polls run ``after`` the
publish and need its ``message_id``; a poll is asked again (``cooloff`` apart) ``until`` the answer
says it is done or ``within`` seconds have passed. :class:`Flow` keeps that state for one engine
run (pure: the engine hands it the clock and the results so far):

* when a cell's first step starts, ``bind`` turns the results of its ``after`` cells into the spec
  it runs (e.g. the publish's ``message_id`` as a placeholder value), or into a reason it cannot
  run (the publish failed) — then its one result says "not run: ..." and the cell ends;
* with ``within``, every step's ``{timeout}`` is what is left of that window (at least
  :data:`MIN_TIMEOUT`), so a poll never outlasts it, and no step starts once it is over;
* a step whose answer satisfies ``until`` ends its cell: the steps not yet run are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_vpstest.fleet.probes import ProbeResult
from pytest_vpstest.plugin.schedule import Cell, Task

__all__ = ["MIN_TIMEOUT", "Bind", "Flow", "ProbeSpec"]

# The smallest {timeout} a step gets when its cell's window is nearly over.
MIN_TIMEOUT = 0.5

# (the cell's spec, the results of its ``after`` cells by key) -> the spec to run, or why it cannot.
Bind = Callable[["ProbeSpec", Mapping[str, Sequence[ProbeResult]]], "ProbeSpec | str"]


@dataclass(frozen=True)
class ProbeSpec:
    """What a cell measures: ``attempts`` probes of ``action`` on ``node`` (towards ``peer``)."""

    action: str  # a probe action of the contract: "connect", "throughput", "gossip_received", ...
    node: str
    peer: str | None  # None: an action of one node (publish, received, crdt, subscribe)
    attempts: int
    timeout: float
    method: str | None = None
    seconds: float | None = None
    cooloff: float = 0.0
    exclusive: bool = False
    ceiling: bool = False  # one more step after the attempts: the pair's iperf3 ceiling
    reset: bool = False  # reset both nodes before every attempt after the first
    values: tuple[tuple[str, Any], ...] = ()  # the action's own placeholders: topic, message_id, amount
    after: tuple[str, ...] = ()  # keys of the cells that must end before this one starts
    within: float | None = None  # seconds from the first step after which no step starts
    bind: Bind | None = field(default=None, compare=False)
    until: Callable[[ProbeResult], bool] | None = field(default=None, compare=False)

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.node,) if self.peer is None else (self.node, self.peer)

    @property
    def steps(self) -> int:
        return self.attempts + (1 if self.ceiling else 0)

    def resets_before(self, index: int) -> bool:
        """Whether step ``index`` begins with a reset of both nodes."""
        return self.reset and 0 < index < self.attempts

    def step_action(self, index: int) -> str:
        return "iperf3" if self.ceiling and index == self.attempts else self.action

    def describe(self) -> str:
        return f"{self.action} {self.node}" + ("" if self.peer is None else f" -> {self.peer}")

    def cell(self, key: str, phase: str, test: str = "") -> Cell:
        """The scheduler's cell: attempts may overlap when no cool-off is asked for."""
        if self.peer is None and (self.ceiling or self.reset or self.exclusive):
            raise ValueError(f"cell {key}: ceiling, reset and exclusive need a peer")
        return Cell(
            key=key,
            phase=phase,
            nodes=self.nodes,
            steps=self.steps,
            cooloff=self.cooloff,
            overlap=self.cooloff == 0 and not self.exclusive and not self.reset,
            exclusive=self.exclusive,
            exclusive_from=1 if self.reset and not self.exclusive else None,
            after=self.after,
            test=test,
            spec=self,
        )


class Flow:
    """The dependent cells' state during one engine run (see the module docstring)."""

    def __init__(self) -> None:
        self._bound: dict[str, ProbeSpec | str] = {}
        self._closes: dict[str, float] = {}

    def prepare(
        self, task: Task, now: float, results_of: Callable[[str], Sequence[ProbeResult]]
    ) -> Task | str:
        """The task as it runs now (its spec bound, its timeout what is left), or why it cannot run."""
        spec = task.cell.spec
        if not isinstance(spec, ProbeSpec) or (spec.bind is None and spec.within is None):
            return task
        key = task.cell.key
        if key not in self._bound:
            bound = spec if spec.bind is None else spec.bind(spec, {k: results_of(k) for k in spec.after})
            self._bound[key] = bound
            if isinstance(bound, ProbeSpec) and bound.within is not None:
                self._closes[key] = now + bound.within
        bound = self._bound[key]
        if isinstance(bound, str):
            return bound
        closes = self._closes.get(key)
        if closes is not None:
            left = round(max(MIN_TIMEOUT, min(bound.timeout, closes - now)), 1)
            bound = dataclasses.replace(bound, timeout=left)
        return Task(dataclasses.replace(task.cell, spec=bound), task.index)

    def done_after(self, task: Task, result: ProbeResult, now: float) -> bool:
        """Whether the cell needs no step after this one (its answer came, or its window is over)."""
        spec = task.cell.spec
        if not isinstance(spec, ProbeSpec):
            return False
        if spec.until is not None and spec.until(result):
            return True
        closes = self._closes.get(task.cell.key)
        return closes is not None and now + spec.cooloff >= closes
