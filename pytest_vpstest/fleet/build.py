"""The local build: run the user's build command here (never on a node) and understand its output.

:func:`run_build` runs ``build.command`` with the shell in the workspace, streams every output
line to a callback as it arrives, enforces ``build.timeout_seconds`` (killing the whole process
group), parses diagnostics and resolves the artifact. Recognised diagnostics:

- cargo / rustc: ``error[E0308]: mismatched types`` followed by `` --> src/main.rs:10:5``;
- the generic compiler form ``file:line[:col]: error|warning: message`` (gcc, clang, go, mypy…);
- a Python traceback, reported by its last line (``ValueError: ...``) at its innermost frame.

A build that exits 0 but leaves no artifact is a failed build with a clear error.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pytest_vpstest.config import BuildConfig, ProjectConfig
from pytest_vpstest.errors import BuildError

__all__ = [
    "BuildFailure",
    "BuildResult",
    "Diagnostic",
    "DiagnosticParser",
    "parse_diagnostics",
    "resolve_artifact",
    "run_build",
]

Severity = Literal["error", "warning"]
TAIL_LINES = 60


@dataclass(frozen=True)
class Diagnostic:
    """One compiler/runtime message, with its location when the output gave one."""

    severity: Severity
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    code: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        kind = f"{self.severity}[{self.code}]" if self.code else self.severity
        return f"{where}{kind}: {self.message}"


@dataclass(frozen=True)
class BuildResult:
    ok: bool
    duration: float
    artifact: Path | None
    errors: tuple[Diagnostic, ...] = ()
    warnings: tuple[Diagnostic, ...] = ()
    output_tail: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    command: str = ""

    @property
    def error(self) -> str | None:
        """One line saying why the build failed (None when it did not)."""
        if self.ok:
            return None
        status = "timed out" if self.timed_out else f"exit {self.exit_code}"
        if not self.errors:
            return f"build failed ({status})"
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"build failed ({status}): {self.errors[0]}{more}"

    def raise_for_failure(self) -> None:
        """Raise :class:`BuildFailure` carrying the parsed errors when the build failed."""
        if not self.ok:
            raise BuildFailure(self)


class BuildFailure(BuildError):
    """A failed build, with its parsed errors and output tail for display."""

    def __init__(self, result: BuildResult) -> None:
        self.result = result
        self.errors = result.errors
        super().__init__(result.error or "build failed")

    def details(self) -> str:
        """Every parsed error on its own line, or the output tail when none was recognised."""
        if self.errors:
            return "\n".join(str(e) for e in self.errors)
        return self.result.output_tail


# ---------------------------------------------------------------------------------------------
# Diagnostics

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RUST_HEAD = re.compile(r"^(?P<sev>error|warning)(?:\[(?P<code>[A-Za-z]+\d+)\])?: (?P<msg>.+)$")
_RUST_LOC = re.compile(r"^\s*--> (?P<file>.+?):(?P<line>\d+):(?P<col>\d+)\s*$")
_GENERIC = re.compile(
    r"^(?P<file>[^\s:][^:]*?):(?P<line>\d+)(?::(?P<col>\d+))?:\s*(?:fatal )?"
    r"(?P<sev>error|warning)(?:\[(?P<code>[^\]]+)\])?:\s*(?P<msg>.+)$"
)
_PY_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+)')
# Summary lines cargo prints after the real diagnostics; they add nothing to read.
_RUST_SUMMARY = re.compile(
    r"^(?:could not compile|aborting due to|build failed|\S+ \(.*\) generated \d+ warnings?"
    r"|.*generated \d+ warnings?|Some errors have detailed explanations|For more information about)"
)


class DiagnosticParser:
    """Feed output lines one at a time (as they stream); read ``errors`` and ``warnings``."""

    def __init__(self) -> None:
        self._found: list[Diagnostic] = []
        self._seen: set[Diagnostic] = set()
        self._pending: Diagnostic | None = None  # a cargo head waiting for its "-->" line
        self._pending_lines = 0
        self._in_traceback = False
        self._frame: tuple[str, int] | None = None

    def feed(self, raw: str) -> None:
        line = _ANSI.sub("", raw.rstrip("\r\n"))
        if self._pending is not None:
            loc = _RUST_LOC.match(line)
            if loc:
                self._add(
                    Diagnostic(
                        self._pending.severity,
                        self._pending.message,
                        loc["file"],
                        int(loc["line"]),
                        int(loc["col"]),
                        self._pending.code,
                    )
                )
                self._pending = None
                return
            self._pending_lines += 1
            # rustc puts the location on the next line; give up after a couple of lines.
            if self._pending_lines > 2 or _RUST_HEAD.match(line) or _GENERIC.match(line):
                self._flush_pending()
        if self._traceback(line):
            return
        m = _GENERIC.match(line)
        if m:
            col = m["col"]
            self._add(
                Diagnostic(
                    "error" if m["sev"] == "error" else "warning",
                    m["msg"].strip(),
                    m["file"],
                    int(m["line"]),
                    int(col) if col else None,
                    m["code"],
                )
            )
            return
        m = _RUST_HEAD.match(line)
        if m and not _RUST_SUMMARY.match(m["msg"]):
            sev: Severity = "error" if m["sev"] == "error" else "warning"
            self._pending = Diagnostic(sev, m["msg"].strip(), code=m["code"])
            self._pending_lines = 0

    def _traceback(self, line: str) -> bool:
        if line.startswith("Traceback (most recent call last):"):
            self._in_traceback, self._frame = True, None
            return True
        if not self._in_traceback:
            return False
        frame = _PY_FRAME.match(line)
        if frame:
            self._frame = (frame["file"], int(frame["line"]))
            return True
        if line.startswith((" ", "\t")) or not line.strip():
            return True  # source excerpt or caret lines of a frame
        if line.startswith(("During handling of", "The above exception")):
            return True
        # The first unindented line after the frames is the exception: "ValueError: message".
        self._in_traceback = False
        file, lineno = self._frame if self._frame else (None, None)
        self._add(Diagnostic("error", line.strip(), file, lineno))
        return True

    def _flush_pending(self) -> None:
        if self._pending is not None:
            self._add(self._pending)
            self._pending = None

    def _add(self, diag: Diagnostic) -> None:
        if diag not in self._seen:
            self._seen.add(diag)
            self._found.append(diag)

    def finish(self) -> None:
        self._flush_pending()

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self._found if d.severity == "error")

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self._found if d.severity == "warning")


def parse_diagnostics(output: str) -> tuple[tuple[Diagnostic, ...], tuple[Diagnostic, ...]]:
    """``(errors, warnings)`` found in a whole build output."""
    parser = DiagnosticParser()
    for line in output.splitlines():
        parser.feed(line)
    parser.finish()
    return parser.errors, parser.warnings


# ---------------------------------------------------------------------------------------------
# Running


def resolve_artifact(build: BuildConfig, workspace: Path, binary: str | None) -> Path | None:
    """The artifact the build should produce: ``build.artifact``, else ``target_dir/binary``."""
    if build.artifact:
        return (workspace / build.artifact).resolve()
    if build.target_dir and binary:
        return (workspace / build.target_dir / binary).resolve()
    return None


@dataclass
class _Run:
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    timed_out: bool = False


def run_build(
    build: BuildConfig | ProjectConfig,
    workspace: Path | None = None,
    *,
    log: Callable[[str], None] | None = None,
    binary: str | None = None,
    env: Mapping[str, str] | None = None,
) -> BuildResult:
    """Run the build command locally and return what happened (never raises for a failed build).

    ``build`` is the project's :class:`BuildConfig` (with ``workspace``, and ``binary`` naming
    the first module's binary for artifact resolution) or the whole :class:`ProjectConfig`.
    Each output line (stdout and stderr merged) goes to ``log`` as it arrives. ``env`` is added to
    the build's environment (the loop's child marker, so a crashed runner's build can be found).
    """
    if isinstance(build, ProjectConfig):
        if build.build is None:
            raise BuildError(f"project '{build.project}' has no build section")
        binary = binary or (build.modules[0][1].binary if build.modules else None)
        workspace = workspace or build.workspace
        build = build.build
    if workspace is None:
        raise BuildError("run_build needs the workspace directory")
    if not workspace.is_dir():
        raise BuildError(f"workspace {workspace} is not a directory")
    say = log or (lambda _line: None)
    parser = DiagnosticParser()
    state = _Run()
    started = time.monotonic()
    # The user's own local build command, run through the shell exactly as written.
    proc = subprocess.Popen(  # noqa: S602
        build.command,
        shell=True,
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **env} if env else None,
    )

    def expire() -> None:
        state.timed_out = True
        _kill_group(proc)

    timer = threading.Timer(build.timeout_seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            state.tail.append(line)
            parser.feed(line)
            say(line)
        exit_code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    parser.finish()
    duration = time.monotonic() - started
    errors = list(parser.errors)
    artifact = resolve_artifact(build, workspace, binary)
    ok = exit_code == 0 and not state.timed_out
    if state.timed_out:
        errors.append(
            Diagnostic("error", f"build timed out after {build.timeout_seconds:g} s: {build.command}")
        )
    elif ok and artifact is not None and not (artifact.is_file() or artifact.is_dir()):
        ok = False
        errors.append(Diagnostic("error", f"the build exited 0 but left no artifact at {artifact}"))
    return BuildResult(
        ok=ok,
        duration=duration,
        artifact=artifact if ok else None,
        errors=tuple(errors),
        warnings=parser.warnings,
        output_tail="\n".join(state.tail),
        exit_code=None if state.timed_out else exit_code,
        timed_out=state.timed_out,
        command=build.command,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
