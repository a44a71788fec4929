"""The matrix engine: runs every planned probe of a run concurrently and streams cell results.

:class:`Engine` drives a :class:`~pytest_vpstest.plugin.schedule.Scheduler` with a
:class:`StepRunner` (the seam: :class:`FleetSteps` reaches the nodes; unit tests give a fake). One
coordinator thread starts the steps the scheduler allows, collects their results as they arrive,
and hands each finished cell to ``on_cell``. A step whose answer has not come its runner's
``deadline`` plus ``watchdog_slack`` seconds after it started is recorded as a timed-out attempt and
its slots are freed: a hanging node costs its own cells one timeout each and holds up nothing else
(a late answer is dropped). The watchdog does not run while a step still waits for its nodes' slots
(:meth:`StepRunner.began`): the wait is other probes on its nodes, not this step hanging; its
deadline counts from when it began.

With a ``watch`` (:class:`~pytest_vpstest.plugin.agent_watch.AgentWatch`) every result is also a
look at the node that ran it: once the watch finds a node's agent down, ``on_unhealthy(node,
reason)`` is called (the run marks the node unhealthy) and no further step touching that node is
run — each is recorded at once as a result saying it was not run, so its cell still completes.

Cells that depend on others (a gossip receiver's polls wait for the publish and need its message
id) go through a :class:`~pytest_vpstest.plugin.spec.Flow`: bound when their first step starts,
ended early by an answer that satisfies their ``until`` or when their ``within`` window is over (the
steps dropped leave the progress total), or recorded as not run when what they need failed.

What a step is, for the fleet (:class:`ProbeSpec`): attempt *i* of a probe from ``node`` (to
``peer``: ``connect``, ``throughput``, a suite's own; or of one node: publish, received, crdt,
subscribe, with the action's own placeholder values); with ``ceiling`` the cell has one more step,
the pair's iperf3 ceiling, recorded as a pseudo probe result (action ``iperf3``, data ``{ok, mbps,
note}``). Every step, whichever way it reaches the node (a batch request, a single probe, the
ceiling), holds a slot of the probe runner's :class:`~pytest_vpstest.fleet.probes.NodeSlots` on each
of its nodes while it runs, so the per-node limit
also counts the probes other xdist workers (and this process's other tests) send to the same nodes.
With ``reset`` every attempt after the first begins with the contract's ``reset`` on both nodes
(at once, under the step's slots), then the attempt; such a step holds both nodes alone (the cell's
``exclusive_from``), so a reset never cuts another pair's probe on them. A reset that fails is the
attempt's failure ("reset of NODE before attempt N failed: ...").
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pytest_vpstest.fleet.batch import REQUESTS as BATCH_REQUESTS
from pytest_vpstest.fleet.probes import NodeSlots, ProbeResult
from pytest_vpstest.plugin.schedule import Cell, Scheduler, Task
from pytest_vpstest.plugin.spec import Flow, ProbeSpec

if TYPE_CHECKING:
    from pytest_vpstest.fleet.batch import BatchLane
    from pytest_vpstest.fleet.probes import ProbeRunner
    from pytest_vpstest.fleet.remote import Pool
    from pytest_vpstest.plugin.agent_watch import AgentWatch

__all__ = ["Engine", "FleetSteps", "PhaseProgress", "ProbeSpec", "StepRunner"]

StepDone = Callable[[ProbeResult], None]
CellDone = Callable[[Cell, list[ProbeResult]], None]

# Beyond a step's own deadline, time allowed for the transport to report before the engine gives up.
WATCHDOG_SLACK = 5.0
# How often the watchdog looks again at a step still queued for its nodes' slots.
QUEUED_POLL = 0.25


class StepRunner(Protocol):
    """Starts one step and reports its result through ``done`` (from any thread, exactly once)."""

    def start(self, task: Task, done: StepDone) -> None: ...

    def deadline(self, task: Task) -> float:
        """Seconds after the start when the step counts as hung."""
        ...

    def describe(self, task: Task) -> str:
        """The command a step runs (evidence when the engine has to give up on it)."""
        ...

    def began(self, task: Task) -> float | None:
        """When a started step got its nodes' slots and began (``time.monotonic()``, the engine's
        default clock); None while it still waits for slots held elsewhere."""
        ...

    def abandon(self, task: Task) -> None:
        """The engine gave up on the step: free what it holds (its answer, if any, is dropped)."""
        ...

    def close(self) -> None: ...


@dataclass
class PhaseProgress:
    """How far one phase (a suite) is: steps done of total, and when it started and ended."""

    phase: str
    total: int
    done: int = 0
    started: float | None = None
    ended: float | None = None

    def rate(self, now: float) -> float:
        if self.started is None or self.done == 0:
            return 0.0
        spent = (self.ended or now) - self.started
        return self.done / spent if spent > 0 else 0.0

    def eta(self, now: float) -> float | None:
        rate = self.rate(now)
        return (self.total - self.done) / rate if rate > 0 else None

    def to_json(self, now: float) -> dict[str, Any]:
        eta = self.eta(now)
        return {
            "phase": self.phase,
            "total": self.total,
            "done": self.done,
            "rate": round(self.rate(now), 2),
            "eta": None if eta is None else round(eta, 1),
            "elapsed": None if self.started is None else round((self.ended or now) - self.started, 2),
            "finished": self.ended is not None,
        }


@dataclass
class Engine:
    """Runs ``cells`` through ``runner`` with at most ``per_node`` steps touching a node at once."""

    cells: Sequence[Cell]
    runner: StepRunner
    per_node: int
    on_cell: CellDone
    clock: Callable[[], float] = time.monotonic
    progress: dict[str, PhaseProgress] = field(default_factory=dict)
    max_running: int = 0  # the most steps seen running at once (for benchmarks and tests)
    watchdog_slack: float = WATCHDOG_SLACK
    watch: AgentWatch | None = None
    on_unhealthy: Callable[[str, str], None] | None = None

    def __post_init__(self) -> None:
        for cell in self.cells:
            p = self.progress.setdefault(cell.phase, PhaseProgress(cell.phase, 0))
            p.total += cell.steps
        self._lock = threading.Lock()

    def run(self) -> None:
        """Run every cell to the end (blocking). ``on_cell`` is called from this thread."""
        sched = Scheduler(self.cells, self.per_node)
        arrived: queue.SimpleQueue[tuple[Task, ProbeResult]] = queue.SimpleQueue()
        inflight: dict[tuple[str, int], tuple[Task, float, float]] = {}
        results: dict[str, list[ProbeResult | None]] = {c.key: [None] * c.steps for c in self.cells}
        self._flow = Flow()

        def results_of(key: str) -> list[ProbeResult]:
            return [r for r in results[key] if r is not None]

        try:
            while not sched.done:
                now = self.clock()
                not_run = False
                for task in sched.start(now):
                    phase = self.progress[task.cell.phase]
                    if phase.started is None:
                        phase.started = now
                    if self._not_run(sched, results, task):
                        not_run = True
                        continue
                    ready = self._flow.prepare(task, now, results_of)
                    if isinstance(ready, str):  # what it depends on failed: its cell ends here
                        self._skip(sched, results, task, f"not run: {ready}", stop=True)
                        not_run = True
                        continue
                    task = ready
                    inflight[task.key] = (task, now, now + self.runner.deadline(task) + self.watchdog_slack)
                    self.runner.start(task, _reporter(arrived, task))
                self.max_running = max(self.max_running, len(inflight))
                if not_run:
                    continue  # slots were freed at once: more may start now
                wake = [d for _, _, d in inflight.values()]
                cool = sched.wake_at(now)
                if cool is not None:
                    wake.append(cool)
                if not wake:
                    raise RuntimeError("matrix engine stalled: nothing running and nothing to start")
                try:
                    got: tuple[Task, ProbeResult] | None = arrived.get(timeout=max(0.0, min(wake) - now))
                except queue.Empty:
                    got = None
                while got is not None:
                    self._record(sched, inflight, results, *got)
                    try:
                        got = arrived.get_nowait()
                    except queue.Empty:
                        got = None
                self._expire(sched, inflight, results)
        finally:
            self.runner.close()

    def _record(
        self,
        sched: Scheduler,
        inflight: dict[tuple[str, int], tuple[Task, float, float]],
        results: dict[str, list[ProbeResult | None]],
        task: Task,
        result: ProbeResult,
    ) -> None:
        if inflight.pop(task.key, None) is None:
            return  # answered after the engine gave up on it
        self._finish(sched, results, task, result)

    def _expire(
        self,
        sched: Scheduler,
        inflight: dict[tuple[str, int], tuple[Task, float, float]],
        results: dict[str, list[ProbeResult | None]],
    ) -> None:
        now = self.clock()
        for key, (task, started, deadline) in list(inflight.items()):
            if now < deadline:
                continue
            began = self.runner.began(task)
            if began is None:  # queued behind other probes on its nodes: not hung, not begun
                inflight[key] = (task, started, now + QUEUED_POLL)
                continue
            if now < began + self.runner.deadline(task) + self.watchdog_slack:
                inflight[key] = (task, started, began + self.runner.deadline(task) + self.watchdog_slack)
                continue
            del inflight[key]
            self.runner.abandon(task)
            spec = task.cell.spec
            action = spec.step_action(task.index) if isinstance(spec, ProbeSpec) else "probe"
            node = spec.node if isinstance(spec, ProbeSpec) else task.cell.nodes[0]
            hung = ProbeResult(
                action,
                node,
                self.runner.describe(task),
                None,
                "",
                "",
                now - started,
                timed_out=True,
                error=f"no answer within {now - started:.1f}s (the harness stopped waiting)",
                timeout=spec.timeout if isinstance(spec, ProbeSpec) else None,
            )
            self._finish(sched, results, task, hung)

    def _finish(
        self,
        sched: Scheduler,
        results: dict[str, list[ProbeResult | None]],
        task: Task,
        result: ProbeResult,
        *,
        measured: bool = True,
        stop: bool = False,
    ) -> None:
        now = self.clock()
        sched.finish(task, now)
        if self.watch is not None and measured:
            reason = self.watch.observe(result)
            if reason is not None and self.on_unhealthy is not None:
                self.on_unhealthy(result.node, reason)
        cell_results = results[task.cell.key]
        cell_results[task.index] = result
        dropped = sched.stop(task.cell.key) if stop or self._flow.done_after(task, result, now) else 0
        phase = self.progress[task.cell.phase]
        with self._lock:
            phase.done += 1
            phase.total -= dropped
            if phase.done == phase.total:
                phase.ended = now
        if sched.ended(task.cell.key):
            self.on_cell(task.cell, [r for r in cell_results if r is not None])

    def _not_run(self, sched: Scheduler, results: dict[str, list[ProbeResult | None]], task: Task) -> bool:
        """A step touching a node whose agent is down is not run: recorded at once as such."""
        down = self.watch.down if self.watch is not None else {}
        node = next((n for n in task.cell.nodes if n in down), None)
        if node is None:
            return False
        spec = task.cell.spec
        polls = isinstance(spec, ProbeSpec) and spec.until is not None  # no point asking again
        self._skip(sched, results, task, f"not run: node unhealthy: {down[node]}", stop=polls)
        return True

    def _skip(
        self,
        sched: Scheduler,
        results: dict[str, list[ProbeResult | None]],
        task: Task,
        why: str,
        *,
        stop: bool,
    ) -> None:
        spec = task.cell.spec
        action = spec.step_action(task.index) if isinstance(spec, ProbeSpec) else "probe"
        by = spec.node if isinstance(spec, ProbeSpec) else task.cell.nodes[0]
        skipped = ProbeResult(action, by, "", None, "", "", 0.0, error=why)
        self._finish(sched, results, task, skipped, measured=False, stop=stop)

    def snapshot(self) -> list[dict[str, Any]]:
        """Progress of every phase, for the terminal and the progress file."""
        now = self.clock()
        with self._lock:
            return [p.to_json(now) for p in self.progress.values()]


def _reporter(arrived: queue.SimpleQueue[tuple[Task, ProbeResult]], task: Task) -> StepDone:
    def done(result: ProbeResult) -> None:
        arrived.put((task, result))

    return done


# --------------------------------------------------------------------------------------------
# The fleet's steps


class FleetSteps:
    """Runs probe steps on the fleet: through a node's batch command when the config has one (and
    the session can stream), else as single probes in threads over the node's cached connection.

    Each step first takes a slot on both its nodes from ``runner.slots`` (shared with the session's
    other probes, and across xdist workers through lock files) and keeps it until its answer."""

    def __init__(self, runner: ProbeRunner, pool: Pool, *, threads: int, batch: bool = True) -> None:
        self.runner = runner
        self.pool = pool
        # Single probes run under the slots this class already holds for them, so the runner they go
        # through must not wait for a second slot of its own: the same runner (its templates, plans
        # and the peer ids the session fills in place) with slots that never make anyone wait.
        self._held = dataclasses.replace(runner, slots=NodeSlots(_NO_LIMIT))
        self._threads = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="vps-matrix")
        self._lanes: dict[str, BatchLane | None] = {}
        self._lanes_lock = threading.Lock()
        self._holds: dict[tuple[str, int], _Hold] = {}
        self._holds_lock = threading.Lock()
        self._batch = batch and bool(runner.templates.batch)

    def deadline(self, task: Task) -> float:
        spec = _spec(task)
        if spec.step_action(task.index) == "iperf3":
            return (spec.seconds or 0) + 60.0
        own = spec.timeout + self.runner.grace
        return 2 * own if spec.resets_before(task.index) else own  # the resets (at once), then the attempt

    def describe(self, task: Task) -> str:
        spec = _spec(task)
        lane = self._lane(spec.node) if spec.step_action(task.index) != "iperf3" else None
        if lane is not None:
            return lane.command
        return (
            spec.describe()
            if spec.step_action(task.index) != "iperf3"
            else f"iperf3 {spec.node} -> {spec.peer}"
        )

    def start(self, task: Task, done: StepDone) -> None:
        hold = _Hold()
        with self._holds_lock:
            self._holds[task.key] = hold
        self._threads.submit(self._run_held, task, hold, done)

    def began(self, task: Task) -> float | None:
        with self._holds_lock:
            hold = self._holds.get(task.key)
        return hold.began if hold is not None else time.monotonic()  # ended: nothing left to wait for

    def abandon(self, task: Task) -> None:
        with self._holds_lock:
            hold = self._holds.pop(task.key, None)
        if hold is not None:
            hold.release()

    def close(self) -> None:
        with self._lanes_lock:
            lanes = [lane for lane in self._lanes.values() if lane is not None]
        for lane in lanes:
            lane.close()
        with self._holds_lock:
            holds, self._holds = list(self._holds.values()), {}
        for hold in holds:
            hold.release()
        self._threads.shutdown(wait=False, cancel_futures=True)

    @property
    def batch_starts(self) -> int:
        """How many batch commands were started (one per node when nothing broke)."""
        with self._lanes_lock:
            return sum(lane.starts for lane in self._lanes.values() if lane is not None)

    # -- internals ------------------------------------------------------------------------
    def _run_held(self, task: Task, hold: _Hold, done: StepDone) -> None:
        """Take the step's node slots (waiting for other holders), then start it; the slots go back
        when its answer arrives or the engine abandons it."""
        spec = _spec(task)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self.runner.slots.hold(*spec.nodes))
        except Exception as exc:  # e.g. the run directory's lock files: a failed attempt, not a hang
            self.abandon(task)
            why = f"no slot on {'/'.join(spec.nodes)}: {type(exc).__name__}: {exc}".splitlines()[0]
            action = spec.step_action(task.index)
            done(ProbeResult(action, spec.node, self.describe(task), None, "", "", 0.0, error=why))
            return
        if not hold.begin(stack):
            return  # abandoned while it waited

        def finish(result: ProbeResult) -> None:
            self.abandon(task)  # its work is over: free the slots
            done(result)

        if spec.step_action(task.index) == "iperf3":
            self._ceiling(spec, finish)
            return
        if spec.resets_before(task.index):
            failed = self._reset_both(spec, task.index)
            if failed is not None:
                finish(failed)
                return
        lane = self._lane(spec.node) if spec.action in BATCH_REQUESTS else None  # else: no batch form
        if lane is None:
            finish(self._single(spec))
            return
        lane.submit(spec.action, self._values(spec), finish)

    def _reset_both(self, spec: ProbeSpec, index: int) -> ProbeResult | None:
        """Reset both nodes at once (under the slots the step holds); None when both said ok, else
        the first failed reset as the attempt's failure."""
        held = self._held
        other = _peer(spec)
        theirs: list[ProbeResult] = []
        peer = threading.Thread(
            target=lambda: theirs.append(held.reset(other, spec.timeout)),
            name=f"vps-reset-{other}",
            daemon=True,
        )
        peer.start()
        mine = held.reset(spec.node, spec.timeout)
        peer.join()
        failed = [r for r in (mine, *theirs) if not r.ok]
        if not failed:
            return None
        r = failed[0]
        return ProbeResult(
            spec.action,
            spec.node,
            r.command,
            r.exit_code,
            r.stdout,
            r.stderr,
            r.duration,
            r.timed_out,
            error=f"reset of {r.node} before attempt {index + 1} failed: {r.reason}",
            transport_error=r.transport_error,
            timeout=spec.timeout,
        )

    def _values(self, spec: ProbeSpec) -> dict[str, Any]:
        """A batch request's values (numbers as numbers)."""
        values = self._placeholders(spec) | {"timeout": spec.timeout}
        if spec.seconds is not None:
            values["seconds"] = spec.seconds
        return values

    def _single(self, spec: ProbeSpec) -> ProbeResult:
        """One probe of any action (a pair's, or one node's such as ``crdt``), its nodes held already."""
        values = self._placeholders(spec)
        if spec.seconds is not None:
            values["seconds"] = _num_text(spec.seconds)
        return self._held.run(spec.action, spec.node, timeout=spec.timeout, **values)

    def _placeholders(self, spec: ProbeSpec) -> dict[str, Any]:
        values: dict[str, Any] = {} if spec.peer is None else self.runner.peer_values(spec.peer)
        if spec.method is not None:
            values["method"] = spec.method
        return values | dict(spec.values)

    def _ceiling(self, spec: ProbeSpec, done: StepDone) -> None:
        from pytest_vpstest.fleet.iperf import iperf3_ceiling

        start = time.monotonic()
        try:
            mbps, note = iperf3_ceiling(
                self.runner.transport,
                self.runner.inventory,
                self.runner.plan_for,
                spec.node,
                _peer(spec),
                spec.seconds or 1.0,
            )
        except Exception as exc:  # the ceiling is context, never a crash
            mbps, note = None, f"iperf3 failed: {type(exc).__name__}: {exc}".splitlines()[0]
        data = {"ok": mbps is not None, "mbps": mbps, "note": note}
        done(ProbeResult("iperf3", spec.node, "iperf3", 0, "", "", time.monotonic() - start, data=data))

    def _lane(self, node: str) -> BatchLane | None:
        if not self._batch:
            return None
        with self._lanes_lock:
            if node in self._lanes:
                return self._lanes[node]
            from pytest_vpstest.fleet.batch import BatchLane
            from pytest_vpstest.fleet.remote import quote_command

            session = self.pool.session(node)
            opener = getattr(session, "open_stream", None)
            template = self.runner.templates.batch
            lane = None
            if callable(opener) and template:
                lane = BatchLane(node, quote_command(template, **self.runner.node_values(node)), opener)
            self._lanes[node] = lane
            return lane


_NO_LIMIT = 1 << 20  # slots per node of the runner used under slots already held


class _Hold:
    """A step's node slots: waiting for them, then held until released (once, from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._released = False
        self.began: float | None = None  # when the slots were taken

    def begin(self, stack: contextlib.ExitStack) -> bool:
        """The slots are taken; False (and given back) when the step was abandoned meanwhile."""
        with self._lock:
            if not self._released:
                self._stack, self.began = stack, time.monotonic()
                return True
        stack.close()
        return False

    def release(self) -> None:
        with self._lock:
            stack, self._stack, self._released = self._stack, None, True
        if stack is not None:
            stack.close()


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _peer(spec: ProbeSpec) -> str:
    if spec.peer is None:  # ProbeSpec.cell refuses a ceiling or a reset without a peer
        raise ValueError(f"{spec.describe()}: this step needs a peer")
    return spec.peer


def _spec(task: Task) -> ProbeSpec:
    spec = task.cell.spec
    if not isinstance(spec, ProbeSpec):
        raise TypeError(f"cell {task.cell.key} has no probe spec")
    return spec
