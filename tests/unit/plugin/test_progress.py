"""The engine's progress on the terminal, per verbosity, against a fake terminal reporter: the
in-place status of a terminal at ``-q`` (never moving the cursor, erased before pytest writes), no
lines at all at ``-q`` without a terminal until the summary, and lines between test lines at ``-v``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pytest_vpstest.plugin.progress import ProgressView, status_text

RUNNING = {"phase": "connectivity", "total": 552, "done": 240, "rate": 38.1, "eta": 8.2, "elapsed": 6.3}
FINISHED = {"phase": "connectivity", "total": 552, "done": 552, "rate": 36.0, "eta": 0, "elapsed": 15.3,
            "finished": True}  # fmt: skip


class FakeWriter:
    def __init__(self, tty: bool) -> None:
        self.hasmarkup = tty
        self.fullwidth = 80
        self.line = ""
        self._file = io.StringIO()  # what reaches the terminal, escape sequences included

    @property
    def width_of_current_line(self) -> int:
        return len(self.line)


class FakeReporter:
    """What ProgressView uses of pytest's TerminalReporter; ``out`` is pytest's side of the output."""

    def __init__(self, tty: bool = False, showfspath: bool = False) -> None:
        self._tw = FakeWriter(tty)
        self.isatty = lambda: tty
        self.showfspath = showfspath
        self.currentfspath: Any = None
        self.config = SimpleNamespace(rootpath=Path("/r"))
        self.out: list[str] = []

    def write(self, text: str) -> None:
        self._tw.line += text
        self._tw._file.write(text)
        self.out.append(text)

    def ensure_newline(self) -> None:
        if self.currentfspath:
            self.write_line("")

    def write_line(self, line: str) -> None:
        self.write(line + "\n")
        self._tw.line = ""
        self.currentfspath = None


def progress(tmp_path: Path, *phases: dict[str, Any]) -> None:
    (tmp_path / "matrix").mkdir(exist_ok=True)
    (tmp_path / "matrix" / "progress.json").write_text(json.dumps({"phases": list(phases)}))


def test_a_terminal_at_q_keeps_one_status_after_the_dots_and_erases_it_before_pytest_writes(
    tmp_path: Path,
) -> None:
    tr = FakeReporter(tty=True)
    view = ProgressView(tr, tmp_path, verbosity=-1)
    progress(tmp_path, RUNNING)
    tr.write("....")
    view.after_report(SimpleNamespace(when="call"))
    raw = tr._tw._file.getvalue()
    assert raw == "....\x1b7  vpstest connectivity 240/552 38/s ETA 8 s\x1b8"
    assert tr._tw.width_of_current_line == 4  # pytest's idea of the line is untouched
    view.before_output()
    tr.write(".")
    assert tr._tw._file.getvalue() == raw + "\x1b[K."
    view.before_output()  # nothing shown: nothing to erase
    assert tr._tw._file.getvalue().endswith("\x1b[K.")


def test_no_terminal_at_q_shows_nothing_until_the_summary(tmp_path: Path) -> None:
    tr = FakeReporter(tty=False)
    view = ProgressView(tr, tmp_path, verbosity=-1)
    progress(tmp_path, RUNNING)
    tr.write("..")
    view.before_test("suites/test_connectivity.py::test_connect[a]")
    view.after_report(SimpleNamespace(when="call"))
    assert tr.out == [".."]
    progress(tmp_path, FINISHED)
    view.summary()
    assert tr.out[1:] == ["vpstest connectivity: 552/552 probes, 36/s, done in 15.3 s\n"]


def test_verbose_lines_go_between_test_lines(tmp_path: Path) -> None:
    tr = FakeReporter(showfspath=True)
    view = ProgressView(tr, tmp_path, verbosity=1, every=3600)
    progress(tmp_path, RUNNING)
    tr.write("suites/test_connectivity.py::test_connect[a] PASSED [ 1%]")
    tr.currentfspath = -2
    view.after_report(SimpleNamespace(when="setup"))
    assert len(tr.out) == 1  # only after a test's result
    view.after_report(SimpleNamespace(when="call"))
    assert tr.out[1:] == ["\n", "vpstest connectivity: 240/552 probes, 38.1/s, ETA 8 s"]
    assert tr.currentfspath == -2  # pytest ends this line before its next one
    view.after_report(SimpleNamespace(when="call"))
    assert len(tr.out) == 3  # at most one line per suite every `every` seconds


def test_status_text_names_only_suites_under_way() -> None:
    waiting = {"phase": "throughput", "total": 12, "done": 0, "rate": 0, "eta": None, "elapsed": None}
    assert status_text([FINISHED, waiting]) == ""
    assert status_text([RUNNING | {"eta": None}]) == "vpstest connectivity 240/552 38/s"
