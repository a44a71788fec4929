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
