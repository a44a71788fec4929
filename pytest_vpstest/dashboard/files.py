"""The files the dashboard's actions leave in a project's directory, and how they are read back.

Everything the dashboard knows after a restart comes from files: the loop's own (state, log,
history, results) and these, under ``<state_dir>/<project>/dashboard/``:

``tests/<node>/<stamp>/status.json``
    One test run started from the dashboard: ``state`` (running, passed, failed, timeout, error),
    ``pid``, ``started``/``finished`` (POSIX seconds), ``passed``/``failed`` counts, ``results``
    (its results.json) and ``output.log`` beside it (pytest's output, streamed while it runs).
``rollbacks.jsonl``
    One line per rollback: ``node``, ``time``, ``ok``, ``error``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from pytest_vpstest import _files
from pytest_vpstest._proc import pid_alive

__all__ = [
    "append_rollback",
    "latest_test_run",
    "new_test_run_dir",
    "nodes_with_test_runs",
    "read_json_object",
    "rollbacks",
    "write_json_atomic",
]


def _root(project_dir: Path) -> Path:
    return project_dir / "dashboard"


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` whole (the package's atomic writer), creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _files.write_json_atomic(path, data)


def new_test_run_dir(project_dir: Path, node: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{uuid.uuid4().hex[:6]}"
    path = _root(project_dir) / "tests" / node / stamp
    path.mkdir(parents=True, exist_ok=False)
    return path


def nodes_with_test_runs(project_dir: Path) -> set[str]:
    """Names of the nodes that have at least one dashboard test run (one directory listing)."""
    try:
        return set(os.listdir(_root(project_dir) / "tests"))
    except OSError:
        return set()


def latest_test_run(project_dir: Path, node: str) -> dict[str, Any] | None:
    """The node's newest dashboard test run (status.json plus ``dir``), or None.

    A run still marked running whose process is gone (the dashboard was killed) reads as ``error``.
    """
    base = _root(project_dir) / "tests" / node
    try:
        dirs = sorted((d for d in base.iterdir() if d.is_dir()), key=lambda d: d.name, reverse=True)
    except OSError:
        return None
    for d in dirs:
        status = read_json_object(d / "status.json")
        if not status:
            continue
        status["dir"] = str(d)
        if status.get("state") == "running" and not pid_alive(int(status.get("pid") or 0)):
            status["state"] = "error"
            status["error"] = "the test run ended without recording its result"
        return status
    return None


def append_rollback(project_dir: Path, record: dict[str, Any]) -> None:
    path = _root(project_dir) / "rollbacks.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def rollbacks(project_dir: Path) -> list[dict[str, Any]]:
    """Every recorded rollback, oldest first (an unreadable line is skipped)."""
    try:
        lines = (_root(project_dir) / "rollbacks.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out
