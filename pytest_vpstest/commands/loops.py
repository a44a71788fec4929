"""``vpstest status``, ``stop`` and ``logs``: every project's loop, read from its state directory."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_vpstest.commands.loading import add_state_dir_option, state_dir_of
from pytest_vpstest.errors import StateError

__all__ = ["node_health", "project_status", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status``, ``stop`` and ``logs`` to the ``vpstest`` parser."""
    p = sub.add_parser("status", help="show every project's loop", description="Show every project's loop.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", metavar="FILE", help="take the state directory from this config")
    add_state_dir_option(p)
    p.set_defaults(handler=_status)

    p = sub.add_parser("stop", help="gracefully stop a project's loop",
                       description="Ask the runner to stop; it saves the state as STOPPED ('user stop').")
    p.add_argument("project")
    p.add_argument("--config", metavar="FILE", help="take the state directory from this config")
    add_state_dir_option(p)
    p.add_argument("--no-wait", action="store_true", help="return once the request is written")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the runner (default 60)")
    p.set_defaults(handler=_stop)

    p = sub.add_parser("logs", help="recent transitions and runner log lines of a project",
                       description="Recent transitions and runner log lines of a project.")
    p.add_argument("project")
    p.add_argument("--config", metavar="FILE", help="take the state directory from this config")
    add_state_dir_option(p)
    p.add_argument("-n", "--lines", type=int, default=30, help="how many of each (default 30)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new runner log lines")
    p.set_defaults(handler=_logs)


def _projects(state_dir: Path) -> list[str]:
    if not state_dir.is_dir():
        return []
    return sorted(p.name for p in state_dir.iterdir()
                  if p.is_dir() and ((p / "state.json").exists() or (p / "transitions.jsonl").exists()))


def project_status(state_dir: Path, project: str) -> dict[str, Any]:
    from pytest_vpstest.records.store import StateStore

    store = StateStore(state_dir, project)
    doc = store.load() or {}
    holder = store.holder()
    ts = doc.get("timestamps") or {}
    tr = doc.get("test_results") or {}
    machine = doc.get("machine") or {}
    return {
        "project": project,
        "state": doc.get("state"),
        "phase": doc.get("phase"),
        "since": ts.get("last_state_change"),
        "wait_until": ts.get("wait_until"),
        "counters": doc.get("counters") or {},
        "last_result": None if not tr else {"passed": tr.get("passed"), "time": tr.get("last_run")},
        "stop_reason": machine.get("stop_reason"),
        "commits": len(doc.get("commits") or []),
        "runner_alive": holder is not None,
        "runner_pid": holder.pid if holder is not None else None,
        "nodes": node_health(doc),
    }


def node_health(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each node's health as the loop last recorded it in the state file's ``nodes`` map."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in (doc.get("nodes") or {}).items():
        if isinstance(entry, dict):
            out[str(name)] = {k: entry.get(k) for k in ("health", "health_reason", "respawns", "status",
                                                        "health_checked")}
    return out


def _status(args: argparse.Namespace) -> int:
    state_dir = state_dir_of(args)
    rows = [project_status(state_dir, p) for p in _projects(state_dir)]
    if args.json:
        print(json.dumps({"state_dir": str(state_dir), "projects": rows}, indent=2))
        return 0
    if not rows:
        print(f"no loops in {state_dir}")
        return 0
    header = f"{'PROJECT':<16} {'STATE':<9} {'PHASE':<8} {'SINCE':<21} {'WAIT UNTIL':<21} " \
             f"{'FIX/BLD/DEP/TST':<16} {'LAST RESULT':<12} RUNNER"
    print(header)
    for r in rows:
        c = r["counters"]
        counters = "/".join(str(c.get(k, 0)) for k in ("fix_attempts", "build_count", "deploy_count",
                                                         "test_count"))
        lr = r["last_result"]
        last = "-" if lr is None else ("passed" if lr.get("passed") else "failed")
        alive = f"alive (pid {r['runner_pid']})" if r["runner_alive"] else "not running"
        since, until = _short_time(r["since"]), _short_time(r["wait_until"])
        print(f"{r['project']:<16} {r['state'] or '-':<9} {r['phase'] or '-':<8} {since:<21} "
              f"{until:<21} {counters:<16} {last:<12} {alive}")
        if r["stop_reason"]:
            print(f"{'':<16} stop reason: {r['stop_reason']}")
        tracked = {n: h for n, h in r["nodes"].items() if h.get("health")}
        if tracked:
            live = sum(1 for h in tracked.values() if h["health"] == "Live")
            print(f"{'':<16} nodes: {live}/{len(tracked)} live")
            for name, h in sorted(tracked.items()):
                if h["health"] != "Live":
                    respawns = f", {h['respawns']} respawn(s)" if h.get("respawns") else ""
                    print(f"{'':<16}   {name}: {h['health']} ({h.get('health_reason') or '-'}{respawns})")
    return 0


def _short_time(value: str | None) -> str:
    """An ISO time to the second (``2026-01-10T10:00:00Z``), for tables."""
    if not value:
        return "-"
    return value[:19] + "Z" if len(value) > 19 else value


def _stop(args: argparse.Namespace) -> int:
    from pytest_vpstest.loop import machine as m
    from pytest_vpstest.loop.runner import request_stop
    from pytest_vpstest.records.store import StateStore

    state_dir = state_dir_of(args)
    store = StateStore(state_dir, args.project)
    doc = store.load()
    if doc is None:
        raise StateError(f"no project '{args.project}' in {state_dir}")
    holder = store.holder()
    if holder is None:
        state = m.RunState.from_document(doc)
        if state.state in m.TERMINAL:
            print(f"vpstest: {args.project} is already {state.state}")
            return 0
        # No runner: record the stop ourselves, through the lease like any writer.
        lease = store.acquire()
        try:
            new, _ = m.step(state, m.UserStop("user stop"), datetime.now(UTC))
            document = {**doc, **new.to_document()}
            store.commit(lease, document, {"from": str(state.state), "to": str(new.state),
                                           "event": "UserStop", "reason": "user stop"})
        finally:
            store.release(lease)
        print(f"vpstest: {args.project}: no runner was running; state set to STOPPED (user stop)")
        return 0
    request_stop(state_dir, args.project)
    if holder.host == socket.gethostname():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(holder.pid, signal.SIGTERM)
    print(f"vpstest: {args.project}: stop requested (runner pid {holder.pid} on {holder.host})")
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        current = store.load() or {}
        if current.get("state") in ("STOPPED", "COMPLETE") and store.holder() is None:
            print(f"vpstest: {args.project}: {current.get('state')}")
            return 0
        time.sleep(0.2)
    raise StateError(f"project '{args.project}': runner pid {holder.pid} did not stop within "
                     f"{args.timeout:g}s; it will stop at the end of its current step")


def _tail_lines(path: Path, n: int) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            return fh.read().decode("utf-8", "replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def _logs(args: argparse.Namespace) -> int:
    from pytest_vpstest.records.store import StateStore

    state_dir = state_dir_of(args)
    store = StateStore(state_dir, args.project)
    if not store.directory.is_dir():
        raise StateError(f"no project '{args.project}' in {state_dir}")
    entries = store.transitions()[-args.lines:]
    print(f"== transitions ({store.log_path})")
    for e in entries:
        print(f"{e.get('time')}  #{e.get('seq'):<4} {e.get('from', '?'):>8} -> {e.get('to', '?'):<9} "
              f"{e.get('reason', '')}")
    log = store.directory / "runner.log"
    print(f"== runner log ({log})")
    lines = _tail_lines(log, args.lines)
    for line in lines:
        print(line)
    if not args.follow:
        return 0
    with contextlib.suppress(FileNotFoundError):
        pos = log.stat().st_size
    if not log.exists():
        pos = 0
    try:
        idle = 0.0
        while True:
            time.sleep(0.5)
            if log.exists() and log.stat().st_size > pos:
                with log.open("rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                pos += len(chunk)
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
                idle = 0.0
            else:
                idle += 0.5
            if idle >= 2.0 and store.holder() is None:
                doc = store.load() or {}
                if doc.get("state") in ("COMPLETE", "STOPPED"):
                    print(f"== {args.project} is {doc.get('state')}; runner not running")
                    return 0
    except KeyboardInterrupt:
        return 0
