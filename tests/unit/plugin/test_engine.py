"""The matrix engine with a fake step runner behind its seam: per-node limits never exceeded,
cool-off kept between a pair's attempts, overlapping attempts of a pair, a hanging step given up
on without holding up the others, and a node lost mid-run failing only its own cells."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from pytest_vpstest.fleet.probes import ProbeResult
from pytest_vpstest.plugin.engine import Engine, ProbeSpec
from pytest_vpstest.plugin.schedule import Cell, Task

Behaviour = Callable[[Task], "ProbeResult | None"]


def answer(task: Task, ok: bool = True, error: str | None = None) -> ProbeResult:
    data = {"ok": ok, "method": "direct", "path": "direct", "rtt_ms": 1.0, "error": None}
    return ProbeResult(
        "connect",
        task.cell.nodes[0],
        f"probe {task.cell.key}#{task.index}",
        0,
        "",
        "",
        0.0,
        data=None if error else data,
        error=error,
    )


class FakeSteps:
    """Runs each step in a thread after ``delay`` seconds; ``behaviour`` decides its answer (None:
    never answer, a hung node). Records what ran at the same time."""

    def __init__(
        self, behaviour: Behaviour | None = None, delay: float = 0.02, deadline: float = 5.0
    ) -> None:
        self.behaviour = behaviour or (lambda t: answer(t))
        self.delay = delay
        self._deadline = deadline
        self.lock = threading.Lock()
        self.load: Counter[str] = Counter()
        self.max_load: Counter[str] = Counter()
        self.running_per_cell: Counter[str] = Counter()
        self.max_per_cell: Counter[str] = Counter()
        self.starts: dict[tuple[str, int], float] = {}
        self.ends: dict[tuple[str, int], float] = {}
        self.closed = False
        self.queued: set[tuple[str, int]] = set()  # steps still waiting for node slots held elsewhere
        self.began_at: dict[tuple[str, int], float] = {}
        self.abandoned: list[tuple[str, int]] = []

    def deadline(self, task: Task) -> float:
        return self._deadline

    def began(self, task: Task) -> float | None:
        with self.lock:
            return None if task.key in self.queued else self.began_at.get(task.key, self.starts[task.key])

    def abandon(self, task: Task) -> None:
        with self.lock:
            self.abandoned.append(task.key)

    def describe(self, task: Task) -> str:
        return f"probe {task.cell.key}#{task.index}"

    def start(self, task: Task, done: Callable[[ProbeResult], None]) -> None:
        with self.lock:
            self.starts[task.key] = time.monotonic()
            for n in task.cell.nodes:
                self.load[n] += 1
                self.max_load[n] = max(self.max_load[n], self.load[n])
            self.running_per_cell[task.cell.key] += 1
            key = task.cell.key
            self.max_per_cell[key] = max(self.max_per_cell[key], self.running_per_cell[key])

        def work() -> None:
            time.sleep(self.delay)
            result = self.behaviour(task)
            with self.lock:
                for n in task.cell.nodes:
                    self.load[n] -= 1
                self.running_per_cell[task.cell.key] -= 1
                self.ends[task.key] = time.monotonic()
            if result is not None:
                done(result)

        threading.Thread(target=work, daemon=True).start()

    def close(self) -> None:
        self.closed = True


def run(
    cells: list[Cell], steps: FakeSteps, per_node: int = 2, slack: float = 5.0
) -> tuple[Engine, list[tuple[str, list[ProbeResult]]]]:
    delivered: list[tuple[str, list[ProbeResult]]] = []
    engine = Engine(
        cells,
        steps,
        per_node,
        lambda cell, results: delivered.append((cell.key, results)),
        watchdog_slack=slack,
    )
    engine.run()
    return engine, delivered


def connect_cell(src: str, dst: str, attempts: int = 3, cooloff: float = 0.0, timeout: float = 1.0) -> Cell:
    spec = ProbeSpec("connect", src, dst, attempts, timeout, method="direct", cooloff=cooloff)
    return spec.cell(f"{src}->{dst}", "connectivity")


NODES = [f"n{i}" for i in range(6)]


def test_per_node_limit_is_never_exceeded_and_every_cell_is_delivered_once() -> None:
    cells = [connect_cell(a, b) for a in NODES for b in NODES if a != b]
    steps = FakeSteps()
    engine, delivered = run(cells, steps, per_node=3)
    assert sorted(k for k, _ in delivered) == sorted(c.key for c in cells)
    assert all(len(results) == 3 and all(r.ok for r in results) for _, results in delivered)
    assert max(steps.max_load.values()) <= 3
    # The limit was reached: probes really ran concurrently.
    assert max(steps.max_load.values()) == 3 and engine.max_running > 1
    assert steps.closed
    assert engine.snapshot()[0]["done"] == engine.snapshot()[0]["total"] == len(cells) * 3


def test_attempts_without_a_cooloff_overlap() -> None:
    steps = FakeSteps(delay=0.1)
    run([connect_cell("a", "b", attempts=3)], steps, per_node=4)
    assert steps.max_per_cell["a->b"] == 3


def test_cooloff_is_kept_between_a_pairs_attempts_while_other_pairs_go_on() -> None:
    cooloff = 0.3
    steps = FakeSteps(delay=0.01)
    cells = [
        connect_cell("a", "b", attempts=3, cooloff=cooloff),
        connect_cell("c", "d", attempts=3, cooloff=cooloff),
    ]
    run(cells, steps, per_node=4)
    for key in ("a->b", "c->d"):
        assert steps.max_per_cell[key] == 1
        for i in (1, 2):
            assert steps.starts[(key, i)] - steps.ends[(key, i - 1)] >= cooloff
    # Pairs do not wait for each other: c->d's first attempt started before a->b's second.
    assert steps.starts[("c->d", 0)] < steps.starts[("a->b", 1)]


def test_a_hanging_step_is_given_up_without_holding_up_the_others() -> None:
    def behaviour(task: Task) -> ProbeResult | None:
        return None if task.key == ("a->b", 0) else answer(task)

    steps = FakeSteps(behaviour, deadline=0.0)  # the engine waits the watchdog slack only
    cells = [connect_cell("a", "b", attempts=1)] + [connect_cell("c", x, attempts=2) for x in "def"]
    _, delivered = run(cells, steps, per_node=2, slack=0.5)
    order = [k for k, _ in delivered]
    assert order[-1] == "a->b", "the hung cell is the last delivered: nothing waited on it"
    hung = dict(delivered)["a->b"][0]
    assert hung.timed_out and not hung.ok
    assert hung.command == "probe a->b#0" and "no answer within" in hung.reason
    assert all(r.ok for k, rs in delivered if k != "a->b" for r in rs)


def test_a_hung_step_is_abandoned_so_its_node_slots_go_back() -> None:
    steps = FakeSteps(lambda t: None, deadline=0.0)
    _, delivered = run([connect_cell("a", "b", attempts=1)], steps, slack=0.2)
    assert dict(delivered)["a->b"][0].timed_out
    assert steps.abandoned == [("a->b", 0)]


def test_a_step_waiting_for_slots_held_elsewhere_is_not_timed_out() -> None:
    # Another process holds the nodes' slots for longer than the step's deadline and the slack.
    def behaviour(task: Task) -> ProbeResult:
        time.sleep(0.6)
        with steps.lock:
            steps.queued.discard(task.key)
            steps.began_at[task.key] = time.monotonic()
        time.sleep(0.05)  # then the step's own work, well within its deadline
        return answer(task)

    steps = FakeSteps(behaviour, delay=0.0, deadline=0.2)
    steps.queued.add(("a->b", 0))
    _, delivered = run([connect_cell("a", "b", attempts=1)], steps, slack=0.1)
    result = dict(delivered)["a->b"][0]
    assert result.ok and not result.timed_out
    assert steps.abandoned == []


def test_a_node_lost_mid_run_fails_only_its_pairs() -> None:
    lost = threading.Event()
    done_count = Counter[str]()

    def behaviour(task: Task) -> ProbeResult:
        with threading.Lock():
            done_count["n"] += 1
            if done_count["n"] == 10:
                lost.set()
        if lost.is_set() and "n3" in task.cell.nodes:
            return answer(task, error="NodeError: n3: connection lost")
        return answer(task)

    cells = [connect_cell(a, b) for a in NODES for b in NODES if a != b]
    _, delivered = run(cells, FakeSteps(behaviour), per_node=2)
    assert len(delivered) == len(cells)
    failing = {k for k, results in delivered if not all(r.ok for r in results)}
    assert failing, "the loss happened while the matrix ran"
    assert all("n3" in k for k in failing)
    untouched = {k for k, _ in delivered if "n3" not in k}
    assert untouched and not (untouched & failing)


def test_phases_run_one_after_another() -> None:
    steps = FakeSteps()
    first = connect_cell("a", "b", attempts=2)
    second = ProbeSpec("throughput", "c", "d", 2, 1.0, seconds=1, exclusive=True).cell("c->d", "throughput")
    run([first, second], steps, per_node=4)
    assert steps.starts[("c->d", 0)] >= max(steps.ends[("a->b", i)] for i in range(2))
    assert steps.max_per_cell["c->d"] == 1  # exclusive steps never overlap
