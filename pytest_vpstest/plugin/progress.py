"""The matrix engine's progress on the terminal, shaped like pytest's own output at each verbosity.

The engine (maybe in another xdist worker) writes ``<run_dir>/matrix/progress.json``: per suite,
probes done / total, rate, ETA (:func:`read_progress`). The controller's :class:`ProgressView`
shows it where pytest's own output leaves room, and never in the middle of a line of results:

* ``-q``, or normal verbosity under xdist (one line of dots): nothing while tests run; on a
  terminal, one status kept after the dots and rewritten in place (erased before pytest writes
  its next character, so the dot line stays intact). Each suite's final figures go to the summary.
* normal verbosity (a line of results per test file): between two files, one line per suite that
  finished (its final figures) or is under way (done / total, rate, ETA).
* ``-v`` and more (a line per test): between two test lines, a suite's line at most every
  ``every`` seconds while it runs, and its final line once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ProgressPrinter", "ProgressView", "progress_line", "read_progress", "status_text"]

# Escape sequences of the in-place status on a terminal: save the cursor, restore it, erase to the
# end of the line. The cursor never moves, so pytest's own idea of the line's width stays right.
_SAVE, _RESTORE, _ERASE = "\x1b7", "\x1b8", "\x1b[K"
# Room left at the line's end for pytest's own " [ 45%]".
_EDGE = 9


def read_progress(run_dir: Path) -> list[dict[str, Any]]:
    """The engine's last progress note (empty when there is none yet)."""
    try:
        doc = json.loads((run_dir / "matrix" / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    phases = doc.get("phases") if isinstance(doc, dict) else None
    return [p for p in phases if isinstance(p, dict)] if isinstance(phases, list) else []


def progress_line(phase: dict[str, Any]) -> str:
    """``vpstest connectivity: 240/552 probes, 38.1/s, ETA 8 s`` (or ``done in 14.2 s``)."""
    head = f"vpstest {phase['phase']}: {phase['done']}/{phase['total']} probes, {phase['rate']:g}/s"
    if phase.get("finished"):
        return f"{head}, done in {phase.get('elapsed')} s"
    eta = phase.get("eta")
    return f"{head}, ETA {eta:.0f} s" if isinstance(eta, int | float) else head


def status_text(phases: list[dict[str, Any]]) -> str:
    """The one-line status of the suites under way: ``vpstest connectivity 240/552 38/s ETA 8 s``."""
    parts = []
    for p in phases:
        if p.get("finished") or p.get("elapsed") is None:
            continue
        eta = p.get("eta")
        tail = f" ETA {eta:.0f} s" if isinstance(eta, int | float) else ""
        parts.append(f"{p['phase']} {p['done']}/{p['total']} {p['rate']:.0f}/s{tail}")
    return f"vpstest {'; '.join(parts)}" if parts else ""


class ProgressPrinter:
    """Progress lines from the engine's progress file: a line per suite at most every ``every``
    seconds while it runs (``every=None``: only when it is first seen under way), and its final
    line once."""

    def __init__(
        self, run_dir: Path, every: float | None = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.run_dir = run_dir
        self.every = every
        self.clock = clock
        self._shown: dict[str, tuple[int, float]] = {}
        self._final: set[str] = set()

    def lines(self) -> list[str]:
        now = self.clock()
        out = []
        for phase in read_progress(self.run_dir):
            name = str(phase.get("phase"))
            if name in self._final:
                continue
            done, (shown_done, shown_at) = int(phase.get("done", 0)), self._shown.get(name, (-1, -1e9))
            recent = name in self._shown and (self.every is None or now - shown_at < self.every)
            if phase.get("finished"):
                self._final.add(name)
            elif phase.get("elapsed") is None or done == shown_done or recent:
                continue
            self._shown[name] = (done, now)
            out.append(progress_line(phase))
        return out


class ProgressView:
    """Shows the engine's progress through pytest's terminal reporter ``tr`` (see the module
    docstring); the plugin calls it around pytest's own reporting hooks."""

    def __init__(self, tr: Any, run_dir: Path, verbosity: int, every: float = 2.0) -> None:
        self.tr = tr
        self.run_dir = run_dir
        self.verbosity = verbosity
        if verbosity >= 1:
            self.mode = "lines"
        elif verbosity == 0 and getattr(tr, "showfspath", False):
            self.mode = "files"
        else:
            self.mode = "dots"
        self.printer = ProgressPrinter(run_dir, every if self.mode == "lines" else None)
        writer = getattr(tr, "_tw", None)
        self._raw = getattr(writer, "_file", None)  # the status bypasses the writer's line width
        isatty = getattr(tr, "isatty", False)
        self.live = (
            self.mode == "dots"
            and verbosity >= -1
            and bool(isatty() if callable(isatty) else isatty)
            and bool(getattr(writer, "hasmarkup", False))
            and self._raw is not None
        )
        self._status_shown = False

    # -- around pytest's own output -------------------------------------------------------
    def before_output(self) -> None:
        """pytest is about to write: take the in-place status away."""
        if self._status_shown:
            self._raw_write(_ERASE)
            self._status_shown = False

    def before_test(self, nodeid: str) -> None:
        """A test is about to start (and pytest to print its file's path when it changes)."""
        self.before_output()
        if self.mode != "files" or self.tr.currentfspath is None:
            return
        path = self.tr.config.rootpath / nodeid.split("::")[0]
        if path == self.tr.currentfspath:
            return
        lines = self.printer.lines()
        if not lines:
            return
        # End the finished file's line as pytest would (its " [ 45%]"), then our lines; pytest's
        # next path starts with a newline of its own, which ends our last line.
        fill = getattr(self.tr, "_write_progress_information_filling_space", None)
        if getattr(self.tr, "_show_progress_info", False) and callable(fill):
            fill()
        self.tr.ensure_newline()
        for line in lines[:-1]:
            self.tr.write_line(line)
        self.tr.write(lines[-1])

    def after_report(self, report: Any) -> None:
        """pytest wrote a test's result."""
        if self.mode == "lines" and report.when == "call":
            lines = self.printer.lines()
            if lines:
                self.tr.ensure_newline()
                for line in lines[:-1]:
                    self.tr.write_line(line)
                self.tr.write(lines[-1])
                self.tr.currentfspath = -2  # pytest's next output ends this line first
        elif self.live:
            self._show_status()

    def summary(self) -> None:
        """The run is over: each suite's final line that was not shown yet."""
        self.before_output()
        if self.verbosity < -1:
            return
        for line in self.printer.lines():
            self.tr.write_line(line)

    # -- the in-place status ----------------------------------------------------------------
    def _show_status(self) -> None:
        text = status_text(read_progress(self.run_dir))
        writer = self.tr._tw
        room = writer.fullwidth - writer.width_of_current_line - _EDGE
        if not text or room < 20:
            return
        self._raw_write(f"{_SAVE}  {text[: room - 2]}{_RESTORE}")
        self._status_shown = True

    def _raw_write(self, text: str) -> None:
        assert self._raw is not None
        self._raw.write(text)
        self._raw.flush()
