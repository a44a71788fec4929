"""The matrix scheduler (pure): per-node limits, exclusive links, cool-offs between a cell's steps,
overlapping attempts, phases in order, and every step handed out exactly once."""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from pytest_vpstest.plugin.schedule import Cell, Scheduler, Task

NODES = ("a", "b", "c", "d")


@st.composite
def cells(draw: st.DrawFn) -> list[Cell]:
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        pair = draw(st.lists(st.sampled_from(NODES), min_size=2, max_size=2, unique=True))
        exclusive = draw(st.booleans())
        cooloff = draw(st.sampled_from([0.0, 0.5, 2.0]))
        out.append(
            Cell(
                key=f"k{i}",
                phase=draw(st.sampled_from(["p1", "p2"])),
                nodes=tuple(pair),
                steps=draw(st.integers(1, 3)),
                cooloff=cooloff,
                overlap=cooloff == 0 and not exclusive and draw(st.booleans()),
                exclusive=exclusive,
                # e.g. hole punches whose later attempts reset both nodes first
                exclusive_from=None if exclusive else draw(st.sampled_from([None, 1, 2])),
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(cells(), st.integers(1, 3), st.randoms(use_true_random=False))
def test_limits_cooloffs_and_order_hold_in_any_interleaving(
    plan: list[Cell], per_node: int, rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    sched = Scheduler(plan, per_node)
    now = 0.0
    running: list[Task] = []
    started: Counter[tuple[str, int]] = Counter()
    ended_at: dict[tuple[str, int], float] = {}
    phase_order = list(dict.fromkeys(c.phase for c in plan))
    for _ in range(500):
        if sched.done:
            break
        for task in sched.start(now):
            started[task.key] += 1
            cell = task.cell
            # Steps of a cell go in order; without overlap the previous one ended a cool-off ago.
            if task.index:
                assert started[(cell.key, task.index - 1)] == 1
                if not cell.overlap:
                    assert ended_at[(cell.key, task.index - 1)] + cell.cooloff <= now
            # Phases run one after another.
            assert phase_order.index(cell.phase) == sched.phase
            running.append(task)
        load: Counter[str] = Counter(n for t in running for n in t.cell.nodes)
        assert all(v <= per_node for v in load.values())
        for t in running:
            if t.cell.exclusive_step(t.index):
                assert all(load[n] == 1 for n in t.cell.nodes), (t.key, [r.key for r in running])
        per_cell = Counter(t.cell.key for t in running)
        assert all(per_cell[t.cell.key] == 1 for t in running if not t.cell.overlap)
        if running and rnd.random() < 0.7:
            task = running.pop(rnd.randrange(len(running)))
            sched.finish(task, now)
            ended_at[task.key] = now
        else:
            wake = sched.wake_at(now)
            assert running or wake is not None, "stalled with nothing running"
            now = wake if wake is not None and not running else now + rnd.choice([0.1, 0.5, 1.0])
    assert sched.done
    assert sorted(started) == sorted((c.key, i) for c in plan for i in range(c.steps))
    assert set(started.values()) == {1}


def test_overlapping_attempts_start_together_and_cooling_ones_wait() -> None:
    fast = Cell("fast", "s", ("a", "b"), steps=3, overlap=True)
    slow = Cell("slow", "s", ("c", "d"), steps=2, cooloff=5.0)
    sched = Scheduler([fast, slow], per_node=4)
    first = sched.start(0.0)
    assert [t.key for t in first] == [("fast", 0), ("fast", 1), ("fast", 2), ("slow", 0)]
    sched.finish(first[3], 1.0)
    assert sched.start(2.0) == []
    assert sched.wake_at(2.0) == 6.0
    assert [t.key for t in sched.start(6.0)] == [("slow", 1)]


def test_exclusive_cells_share_no_node_but_disjoint_ones_run_together() -> None:
    ring = [Cell(f"{a}{b}", "tp", (a, b), steps=1, exclusive=True) for a, b in ("ab", "bc", "cd", "da")]
    sched = Scheduler(ring, per_node=4)
    first = sched.start(0.0)
    assert [t.cell.key for t in first] == ["ab", "cd"]
    sched.finish(first[0], 1.0)
    assert sched.start(1.0) == []  # bc needs c, which cd still holds
    sched.finish(first[1], 2.0)
    assert [t.cell.key for t in sched.start(2.0)] == ["bc", "da"]


def test_per_node_limit_counts_both_ends() -> None:
    cells = [Cell(f"k{i}", "s", ("hub", f"n{i}"), steps=1) for i in range(5)]
    sched = Scheduler(cells, per_node=2)
    assert len(sched.start(0.0)) == 2


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        Scheduler([Cell("x", "s", ("a", "b"), 1), Cell("x", "s", ("a", "c"), 1)], 1)
    with pytest.raises(ValueError, match="steps"):
        Cell("x", "s", ("a", "b"), 0)
    with pytest.raises(ValueError, match="not running"):
        sched = Scheduler([Cell("x", "s", ("a", "b"), 1)], 1)
        sched.finish(Task(Cell("x", "s", ("a", "b"), 1), 0), 0.0)


def test_steps_from_exclusive_from_on_hold_their_nodes_alone() -> None:
    punch = Cell("punch", "nat", ("a", "b"), steps=3, exclusive_from=1)
    other = Cell("other", "nat", ("b", "c"), steps=2, overlap=True)
    sched = Scheduler([punch, other], per_node=4)
    first = sched.start(0.0)
    assert [t.key for t in first] == [("punch", 0), ("other", 0), ("other", 1)]  # step 0 shares b
    sched.finish(first[0], 1.0)
    assert sched.start(1.0) == []  # attempt 2 waits until b is idle
    sched.finish(first[1], 1.0)
    sched.finish(first[2], 1.0)
    assert [t.key for t in sched.start(1.0)] == [("punch", 1)]


@st.composite
def dependent_cells(draw: st.DrawFn) -> list[Cell]:
    """Cells some of which wait for earlier cells of their phase (a publish, then its polls)."""
    out: list[Cell] = []
    for i in range(draw(st.integers(1, 8))):
        phase = draw(st.sampled_from(["p1", "p2"]))
        earlier = [c.key for c in out if c.phase == phase]
        after = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        nodes = draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=2, unique=True))
        cooloff = draw(st.sampled_from([0.0, 0.25]))
        out.append(
            Cell(
                f"k{i}",
                phase,
                tuple(nodes),
                steps=draw(st.integers(1, 4)),
                cooloff=cooloff,
                after=tuple(after),
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(dependent_cells(), st.integers(1, 3), st.randoms(use_true_random=False))
def test_dependent_cells_wait_for_theirs_and_a_stopped_cell_starts_nothing_more(
    plan: list[Cell], per_node: int, rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    sched = Scheduler(plan, per_node)
    now = 0.0
    running: list[Task] = []
    started: Counter[tuple[str, int]] = Counter()
    stopped: set[str] = set()
    for _ in range(1000):
        if sched.done:
            break
        for task in sched.start(now):
            started[task.key] += 1
            assert task.cell.key not in stopped
            assert all(sched.ended(k) for k in task.cell.after), (task.key, task.cell.after)
            running.append(task)
        load: Counter[str] = Counter(n for t in running for n in t.cell.nodes)
        assert all(v <= per_node for v in load.values())
        if running and rnd.random() < 0.7:
            task = running.pop(rnd.randrange(len(running)))
            sched.finish(task, now)
            if rnd.random() < 0.3:  # e.g. the poll got its answer
                left = task.cell.steps - sum(1 for k in started if k[0] == task.cell.key)
                assert sched.stop(task.cell.key) == (0 if task.cell.key in stopped else left)
                stopped.add(task.cell.key)
            if not any(t.cell.key == task.cell.key for t in running) and (
                task.cell.key in stopped or sched.finished_steps(task.cell.key) == task.cell.steps
            ):
                assert sched.ended(task.cell.key)
        else:
            wake = sched.wake_at(now)
            assert running or wake is not None, "stalled with nothing running"
            now = wake if wake is not None and not running else now + rnd.choice([0.1, 0.5])
    assert sched.done
    assert all(sched.ended(c.key) for c in plan)
    assert set(started.values()) <= {1}
    for c in plan:  # a cell's steps run as a prefix; all of them unless it was stopped
        ran = sorted(i for k, i in started if k == c.key)
        assert ran == list(range(len(ran)))
        assert c.key in stopped or len(ran) == c.steps


def test_a_cell_waits_for_the_cells_it_comes_after_and_stop_drops_its_steps() -> None:
    publish = Cell("pub", "gossip", ("a",), steps=1)
    poll = Cell("poll", "gossip", ("b",), steps=5, cooloff=0.25, after=("pub",))
    sched = Scheduler([publish, poll], per_node=4)
    first = sched.start(0.0)
    assert [t.key for t in first] == [("pub", 0)]  # the poll waits for the publish
    sched.finish(first[0], 1.0)
    assert sched.ended("pub") and not sched.ended("poll")
    (second,) = sched.start(1.0)
    assert second.key == ("poll", 0)
    sched.finish(second, 1.5)
    assert sched.stop("poll") == 4  # its answer came: the 4 polls left are dropped
    assert sched.ended("poll") and sched.done
    assert sched.stop("poll") == 0


def test_a_stop_while_a_step_runs_ends_the_cell_when_that_step_ends() -> None:
    cell = Cell("c", "s", ("a",), steps=3, overlap=True)
    sched = Scheduler([cell], per_node=1)
    (task,) = sched.start(0.0)
    assert sched.stop("c") == 2
    assert not sched.ended("c") and sched.start(0.0) == []
    sched.finish(task, 1.0)
    assert sched.ended("c") and sched.done


def test_after_must_name_an_earlier_cell_of_the_same_phase() -> None:
    with pytest.raises(ValueError, match="'later' is not an earlier cell of phase 's'"):
        Scheduler([Cell("x", "s", ("a",), 1, after=("later",)), Cell("later", "s", ("a",), 1)], 1)
    with pytest.raises(ValueError, match="'y' is not an earlier cell"):
        Scheduler([Cell("y", "other", ("a",), 1), Cell("x", "s", ("a",), 1, after=("y",))], 1)
