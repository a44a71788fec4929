"""The run's shared matrix: one owner runs the engine, a second process (here: a second Matrix on
the same run directory, whose lock conflicts like another process's) reads every cell from the
file; a dead owner and a failed plan fail the waiting tests with a reason instead of hanging; the
progress lines the terminal shows."""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_vpstest.fleet.probes import ProbeResult
from pytest_vpstest.plugin.engine import Engine, ProbeSpec
from pytest_vpstest.plugin.matrix import Matrix, MatrixError, part_key
from pytest_vpstest.plugin.progress import ProgressPrinter, progress_line
from pytest_vpstest.plugin.schedule import Cell, Task


class InstantSteps:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.started = 0

    def deadline(self, task: Task) -> float:
        return 5.0

    def began(self, task: Task) -> float | None:
        return 0.0  # every step begins at once

    def abandon(self, task: Task) -> None:
        pass

    def describe(self, task: Task) -> str:
        return "probe"

    def start(self, task: Task, done: Callable[[ProbeResult], None]) -> None:
        self.started += 1

        def answer() -> None:
            if self.gate is not None:
                self.gate.wait(10)
            data = {"ok": True, "method": "direct", "path": "direct", "rtt_ms": 1.0, "error": None}
            done(
                ProbeResult(
                    "connect", task.cell.nodes[0], f"probe {task.cell.key}", 0, "", "", 0.0, data=data
                )
            )

        threading.Thread(target=answer, daemon=True).start()

    def close(self) -> None:
        pass


CELLS = [
    ProbeSpec("connect", a, b, 2, 1.0, method="relay").cell(f"t[{a}->{b}]", "connectivity")
    for a, b in (("a", "b"), ("b", "a"), ("a", "c"))
]


def matrix(run_dir: Path, steps: InstantSteps, plan: Callable[[], list[Cell]] = lambda: CELLS) -> Matrix:
    return Matrix(run_dir, plan, lambda cells, on_cell: Engine(cells, steps, 2, on_cell))


def test_one_engine_per_run_and_the_other_process_reads_its_cells(tmp_path: Path) -> None:
    owner_steps, reader_steps = InstantSteps(), InstantSteps()
    owner, reader = matrix(tmp_path, owner_steps), matrix(tmp_path, reader_steps)
    first = owner.results("t[a->b]")
    assert [r.ok for r in first] == [True, True]
    assert [r.command for r in reader.results("t[a->c]")] == ["probe t[a->c]"] * 2
    owner.close()
    reader.close()
    assert owner_steps.started == 6 and reader_steps.started == 0
    lines = [json.loads(x) for x in (tmp_path / "matrix" / "cells.jsonl").read_text().splitlines()]
    assert lines[0] == {"parts": {}}  # no multi-part test in this plan
    assert lines[-1] == {"done": True, "error": None} and len(lines) == 5
    with pytest.raises(MatrixError, match="not in the plan"):
        reader.results("t[c->a]")


def test_a_multi_part_test_gets_its_parts_in_the_owner_and_in_a_reader(tmp_path: Path) -> None:
    test = "t[a publishes]"
    parts = [
        ProbeSpec("gossip_publish", "a", None, 1, 1.0).cell(part_key(test, "publish"), "gossip", test=test),
        ProbeSpec("gossip_received", "b", None, 2, 1.0, after=(part_key(test, "publish"),)).cell(
            part_key(test, "received:b"), "gossip", test=test
        ),
    ]
    owner, reader = (
        matrix(tmp_path, InstantSteps(), lambda: [*CELLS, *parts]),
        matrix(tmp_path, InstantSteps()),
    )
    mine = owner.parts(test)
    theirs = reader.parts(test)
    assert list(mine) == list(theirs) == ["publish", "received:b"]
    assert [len(mine[p]) for p in mine] == [len(theirs[p]) for p in theirs] == [1, 2]
    with pytest.raises(MatrixError, match="not in the plan"):
        reader.parts("t[c publishes]")
    owner.close()
    reader.close()


def test_a_reader_whose_owner_died_fails_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "matrix").mkdir()
    (tmp_path / "matrix" / "cells.jsonl").write_text(json.dumps({"key": "t[a->b]", "results": []}) + "\n")
    with open(tmp_path / "matrix" / "engine.lock", "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the owner, alive
        reader = matrix(tmp_path, InstantSteps())
        assert reader.results("t[a->b]") == []
    # The owner is gone (lock free) and never wrote "done": the waiting test gets the reason.
    with pytest.raises(MatrixError, match="ended before measuring it"):
        reader.results("t[b->a]")


def test_a_plan_that_fails_fails_every_test_instead_of_hanging(tmp_path: Path) -> None:
    def broken() -> list[Cell]:
        raise ValueError("cell keys must be unique")

    m = matrix(tmp_path, InstantSteps(), broken)
    for key in ("t[a->b]", "t[b->a]"):
        with pytest.raises(MatrixError, match="could not be planned: ValueError: cell keys must be unique"):
            m.results(key)
    m.close()


def test_progress_lines_while_running_and_once_when_finished(tmp_path: Path) -> None:
    gate = threading.Event()
    owner = matrix(tmp_path, InstantSteps(gate))
    clock = [0.0]
    printer = ProgressPrinter(tmp_path, every=2.0, clock=lambda: clock[0])
    threading.Thread(target=owner.results, args=("t[a->b]",), daemon=True).start()
    gate.set()
    owner.results("t[a->c]")
    owner.close()
    lines = printer.lines()
    assert lines == ["vpstest connectivity: 6/6 probes, " + lines[0].split(", ", 1)[1]]
    assert ", done in " in lines[0]
    assert printer.lines() == []  # the final line only once
    assert progress_line({"phase": "gossip", "done": 3, "total": 12, "rate": 1.5, "eta": 6.0}) == (
        "vpstest gossip: 3/12 probes, 1.5/s, ETA 6 s"
    )
