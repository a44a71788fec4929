"""The FIX stage: collect logs, cluster error signatures, write a failure brief, get a new commit.

Steps, each usable on its own:

1. ``collect_logs`` — every node's service log, fetched in parallel through a ``fetch`` function
   (the runner passes one that asks the node's service manager over SSH), saved as
   ``<project_dir>/logs/<node>.log``. A node whose log cannot be fetched gets a note, not a crash.
2. ``cluster_signatures`` — error-looking lines normalised (numbers, hex, addresses, ids
   replaced by placeholders) and counted, with first/last seen and an example line.
3. ``write_brief`` — ``fix/<n>/brief.md``: why we are fixing, failing tests, measured vs target,
   top signatures and log excerpts.
4. ``obtain_fix`` — runs the configured fixer command with the brief's path (any program), or
   waits for a new commit in the workspace's git repository (bounded by ``commit_wait_seconds``,
   interrupted by the stop event); then runs the verification command; returns the new commit or
   the error. The runner turns that into ``FixFinished(commit, error)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_vpstest._files import write_text_atomic
from pytest_vpstest.config import FixConfig, Node

__all__ = [
    "Commit",
    "FixOutcome",
    "Signature",
    "cluster_signatures",
    "collect_logs",
    "git_head",
    "is_error_line",
    "next_brief_dir",
    "normalise",
    "obtain_fix",
    "run_fix",
    "run_interruptible",
    "write_brief",
]

# --- signatures -----------------------------------------------------------------------------

_ERROR_RE = re.compile(
    r"\b(error|err|fail(ed|ure)?|panic(ked)?|exception|traceback|fatal|critical|timed? ?out|refused|"
    r"denied|abort(ed)?|crash(ed)?|unreachable)\b",
    re.IGNORECASE,
)
_TIMESTAMP_RE = re.compile(
    r"^\s*\[?(?P<ts>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\]?\s*"
)
# Order matters: the most specific shapes first, so an IPv4:port is not read as numbers.
_NORMALISERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<uuid>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<addr>"),
    (re.compile(r"\[[0-9a-f:]+\](?::\d+)?", re.I), "<addr>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    # Hex-looking words of 6+ characters with at least one digit: commit ids, hashes, peer ids.
    (re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{6,}\b", re.I), "<id>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)


def is_error_line(line: str) -> bool:
    """Whether a log line looks like a problem worth clustering."""
    return bool(_ERROR_RE.search(line))


def _split_timestamp(line: str) -> tuple[str | None, str]:
    m = _TIMESTAMP_RE.match(line)
    if not m:
        return None, line.strip()
    return m.group("ts"), line[m.end():].strip()


def normalise(line: str) -> str:
    """The line's shape: timestamp dropped; numbers, hex, addresses and ids replaced by placeholders."""
    _, text = _split_timestamp(line)
    for pattern, repl in _NORMALISERS:
        text = pattern.sub(repl, text)
    return " ".join(text.split())


@dataclass
class Signature:
    """One cluster of error lines with the same shape."""

    pattern: str
    count: int = 0
    first_seen: str | None = None
    last_seen: str | None = None
    example: str = ""
    nodes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "example": self.example,
            "nodes": dict(sorted(self.nodes.items())),
        }


def cluster_signatures(logs: Mapping[str, Iterable[str]]) -> list[Signature]:
    """Error lines of every node grouped by shape, most frequent first (ties: first seen first)."""
    by_pattern: dict[str, Signature] = {}
    order: dict[str, int] = {}
    for node in sorted(logs):
        for raw in logs[node]:
            if not is_error_line(raw):
                continue
            ts, text = _split_timestamp(raw)
            pattern = normalise(raw)
            sig = by_pattern.get(pattern)
            if sig is None:
                sig = by_pattern[pattern] = Signature(pattern=pattern, example=f"{node}: {text}")
                order[pattern] = len(order)
            sig.count += 1
            sig.nodes[node] = sig.nodes.get(node, 0) + 1
            if ts is not None:
                if sig.first_seen is None or ts < sig.first_seen:
                    sig.first_seen = ts
                if sig.last_seen is None or ts > sig.last_seen:
                    sig.last_seen = ts
    return sorted(by_pattern.values(), key=lambda s: (-s.count, order[s.pattern]))


# --- log collection -------------------------------------------------------------------------


def collect_logs(
    nodes: Sequence[Node],
    fetch: Callable[[Node], str],
    logs_dir: Path,
    *,
    parallelism: int = 8,
) -> dict[str, list[str]]:
    """Fetch every node's log in parallel into ``logs_dir/<node>.log``; return the lines per node.

    A failure to fetch is recorded in the file as one line (``# could not collect: ...``).
    """
    logs_dir.mkdir(parents=True, exist_ok=True)

    def one(node: Node) -> tuple[str, list[str]]:
        try:
            text = fetch(node)
        except Exception as exc:  # one node's failure must not stop collection from the others
            text = f"# could not collect logs from {node.name}: {exc}\n"
        path = logs_dir / f"{node.name}.log"
        write_text_atomic(path, text)
        return node.name, text.splitlines()

    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(nodes)))) as pool:
        return dict(pool.map(one, nodes))


# --- brief ----------------------------------------------------------------------------------


def next_brief_dir(fix_root: Path) -> Path:
    """``fix/<n>`` for the next free n (1-based)."""
    fix_root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in fix_root.iterdir() if p.is_dir() and p.name.isdigit()]
    d = fix_root / str(max(taken, default=0) + 1)
    d.mkdir()
    return d


def _failing_tests(results: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key in ("failed_tests", "failures_list"):
        val = results.get(key)
        if isinstance(val, list):
            out.extend(str(v) for v in val)
    pairs = results.get("pairs")
    if isinstance(pairs, list):
        for p in pairs:
            if isinstance(p, Mapping) and p.get("passed") is False:
                out.append(str(p.get("id") or p.get("name") or p))
    return out


def write_brief(
    path: Path,
    *,
    project: str,
    reason: str,
    results: Mapping[str, Any] | None,
    signatures: Sequence[Signature],
    logs: Mapping[str, Sequence[str]],
    logs_dir: Path | None = None,
    top: int = 10,
    excerpt_lines: int = 20,
) -> Path:
    """Write the failure brief (markdown) a human or a repair program reads; return its path."""
    lines = [f"# Failure brief: {project}", "", f"- Written: {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
             f"- Reason: {reason}"]
    if logs_dir is not None:
        lines.append(f"- Node logs: {logs_dir}")
    lines.append("")
    if results:
        verdict = results.get("verdict") or {}
        lines += ["## Verdict", "", f"- Passed: {results.get('passed')}",
                  f"- Criteria: {verdict.get('criteria', results.get('criteria'))}",
                  f"- Focus: {results.get('focus')}", ""]
        failures = verdict.get("failures") or []
        if failures:
            lines += ["## Measured vs target", "", "| metric | measured | target |", "|---|---|---|"]
            for f in failures:
                lines.append(f"| {f.get('metric')} | {f.get('measured')} | {f.get('target')} |")
            lines.append("")
        failing = _failing_tests(results)
        if failing:
            lines += ["## Failing tests", ""] + [f"- {t}" for t in failing[:50]] + [""]
        suites = (results.get("test_results") or {}).get("suites")
        if suites:
            dumped = json.dumps(suites, indent=2, sort_keys=True)
            lines += ["## Suite results", "", "```json", dumped, "```", ""]
    lines += ["## Top error signatures", ""]
    if signatures:
        lines += ["| count | nodes | first seen | last seen | signature |", "|---|---|---|---|---|"]
        for s in signatures[:top]:
            nodes = ", ".join(f"{n}×{c}" for n, c in sorted(s.nodes.items()))
            pat = s.pattern.replace("|", "\\|")
            lines.append(f"| {s.count} | {nodes} | {s.first_seen or '-'} | {s.last_seen or '-'} | `{pat}` |")
        lines.append("")
        lines += ["Examples:", ""] + [f"- `{s.example}`" for s in signatures[:top]] + [""]
    else:
        lines += ["No error lines found in the collected logs.", ""]
    lines += ["## Log excerpts", ""]
    for node in sorted(logs):
        tail = list(logs[node])[-excerpt_lines:]
        if not tail:
            continue
        lines += [f"### {node}", "", "```", *tail, "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --- commits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    time: str

    def to_json(self) -> dict[str, str]:
        return {"sha": self.sha, "message": self.message, "time": self.time}


def git_head(workspace: Path) -> Commit | None:
    """The workspace's HEAD commit, or None when it is not a git repository or has no commit."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(workspace), "log", "-1", "--format=%H%x00%s%x00%cI"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    sha, message, when = proc.stdout.strip().split("\x00", 2)
    try:
        t = datetime.fromisoformat(when).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        t = when
    return Commit(sha=sha, message=message, time=t)


@dataclass(frozen=True)
class FixOutcome:
    commit: Commit | None
    error: str | None
    brief: Path | None = None


def _tail(text: str, n: int = 5) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return " | ".join(lines[-n:])[:400]


def run_interruptible(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], stop: threading.Event, timeout: float,
    output: Callable[[str], None],
) -> tuple[int | None, str]:
    """Run a program in its own process group, streaming output; (None, why) when stopped or timed out."""
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    captured: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            captured.append(line)
            output(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.daemon = True
    timer.start()
    why: str | None = None
    try:
        while proc.poll() is None:
            # Wakes within 0.2 s of a stop or the deadline; no busy loop.
            if stop.wait(0.2) or deadline.is_set():
                _kill_group(proc)
                why = "stopped" if stop.is_set() else f"timed out after {timeout:g}s"
                break
    finally:
        timer.cancel()
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
    if why is not None:
        return None, why
    return proc.returncode, "".join(captured)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def obtain_fix(
    config: FixConfig,
    workspace: Path,
    brief: Path,
    *,
    stop: threading.Event,
    output: Callable[[str], None] = lambda _line: None,
    poll_seconds: float = 2.0,
    env: Mapping[str, str] | None = None,
    base_sha: str | None = None,
) -> FixOutcome:
    """Get a new commit in ``workspace``: run the fixer command, or wait for someone to commit.

    A commit is new when HEAD differs from ``base_sha`` (default: HEAD when called).

    Returns ``FixOutcome(commit, None)`` on a new, verified commit; ``FixOutcome(None, error)``
    when the fixer failed, made no commit, the wait ran out, the verification failed, or stop was set.
    """
    head_now = git_head(workspace)
    before_sha = base_sha if base_sha is not None else (head_now.sha if head_now else None)
    run_env = {**os.environ, **(env or {}), "VPSTEST_BRIEF": str(brief)}
    if config.command:
        argv = [*shlex.split(config.command), str(brief)]
        output(f"fix: running {shlex.join(argv)}")
        try:
            rc, text = run_interruptible(argv, cwd=workspace, env=run_env, stop=stop,
                                          timeout=config.commit_wait_seconds, output=output)
        except OSError as exc:
            return FixOutcome(None, f"fixer command could not start: {exc}", brief)
        if rc is None:
            return FixOutcome(None, f"fixer command {text}", brief)
        if rc != 0:
            return FixOutcome(None, f"fixer command exited {rc}: {_tail(text)}", brief)
        after = git_head(workspace)
        if after is None or after.sha == before_sha:
            return FixOutcome(None, "fixer command made no new commit", brief)
    else:
        output(f"fix: waiting up to {config.commit_wait_seconds:g}s for a new commit in {workspace} "
               f"(brief: {brief})")
        waited = 0.0
        after = None
        while waited < config.commit_wait_seconds:
            if stop.wait(min(poll_seconds, config.commit_wait_seconds - waited)):
                return FixOutcome(None, "stopped while waiting for a commit", brief)
            waited += poll_seconds
            head = git_head(workspace)
            if head is not None and head.sha != before_sha:
                after = head
                break
        if after is None:
            return FixOutcome(None, f"no new commit within {config.commit_wait_seconds:g}s", brief)
    if config.verify_command:
        output(f"fix: verifying with {config.verify_command}")
        try:
            rc, text = run_interruptible(shlex.split(config.verify_command), cwd=workspace, env=run_env,
                                          stop=stop, timeout=max(config.commit_wait_seconds, 60.0),
                                          output=output)
        except OSError as exc:
            return FixOutcome(None, f"verification could not start: {exc}", brief)
        if rc is None:
            return FixOutcome(None, f"verification {text}", brief)
        if rc != 0:
            return FixOutcome(None, f"verification failed for {after.sha[:12]} (exit {rc}): {_tail(text)}",
                              brief)
    output(f"fix: new commit {after.sha[:12]} {after.message}")
    return FixOutcome(after, None, brief)


def run_fix(
    *,
    project: str,
    project_dir: Path,
    workspace: Path,
    config: FixConfig,
    nodes: Sequence[Node],
    fetch: Callable[[Node], str],
    reason: str,
    results: Mapping[str, Any] | None,
    stop: threading.Event,
    output: Callable[[str], None] = lambda _line: None,
    poll_seconds: float = 2.0,
    env: Mapping[str, str] | None = None,
) -> FixOutcome:
    """The whole FIX stage: logs → signatures → brief → fixer/commit wait → verification."""
    logs_dir = project_dir / "logs"
    output(f"fix: collecting logs from {len(nodes)} node(s)")
    logs = collect_logs(nodes, fetch, logs_dir)
    signatures = cluster_signatures(logs)
    brief_dir = next_brief_dir(project_dir / "fix")
    brief = write_brief(brief_dir / "brief.md", project=project, reason=reason, results=results,
                        signatures=signatures, logs=logs, logs_dir=logs_dir)
    (brief_dir / "signatures.json").write_text(
        json.dumps([s.to_json() for s in signatures], indent=2) + "\n", encoding="utf-8"
    )
    output(f"fix: brief written to {brief} ({len(signatures)} error signature(s))")
    return obtain_fix(config, workspace, brief, stop=stop, output=output, poll_seconds=poll_seconds, env=env)
