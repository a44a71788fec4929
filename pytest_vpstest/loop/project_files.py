"""The files of a project's directory the runner and the CLI share: ``stop.request`` (a stop asked
for by ``vpstest stop``), ``finished`` (the final step of a run completed), and the children a
crashed runner left behind (found by their environment marker)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path

from pytest_vpstest._files import write_text_atomic
from pytest_vpstest._proc import pid_alive
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.stage_context import CHILD_MARKER, utcnow
from pytest_vpstest.loop.stage_context import iso as _iso

__all__ = [
    "finished_marker",
    "nothing_to_resume",
    "project_dir",
    "read_stop_request",
    "reap_orphans",
    "request_stop",
    "write_finished_marker",
]


def project_dir(state_dir: Path, project: str) -> Path:
    return Path(state_dir) / project


def request_stop(state_dir: Path, project: str, reason: str = "user stop") -> Path:
    """Write ``stop.request`` for the project's runner (read at its next safe point)."""
    d = project_dir(state_dir, project)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "stop.request"
    write_text_atomic(path, json.dumps({"reason": reason, "time": _iso(utcnow()), "pid": os.getpid()}) + "\n")
    return path


def read_stop_request(state_dir: Path, project: str) -> str | None:
    path = project_dir(state_dir, project) / "stop.request"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "user stop"
    return str(doc.get("reason") or "user stop")


def reap_orphans(project_dir: Path, *, grace_seconds: float = 5.0) -> list[int]:
    """End processes carrying this project's child marker (left by a crashed runner); return their pids.

    Called by the lease holder only, so every such process belongs to a runner that is gone.
    """
    marker = f"{CHILD_MARKER}={project_dir.resolve()}".encode()
    me = os.getpid()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.append(int(entry.name))
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = threading.Event()
    waited = 0.0
    while waited < grace_seconds and any(pid_alive(p) for p in found):
        deadline.wait(0.1)
        waited += 0.1
    for pid in found:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return found


def nothing_to_resume(state_dir: Path, project: str) -> str | None:
    """Why ``--resume`` has nothing to continue for ``project`` (read only), or None when it has."""
    from pytest_vpstest.records.store import StateStore

    doc = StateStore(state_dir, project).load()
    if doc is None:
        return f"project '{project}': no state file to resume in {project_dir(state_dir, project)}"
    state = m.RunState.from_document(doc)
    finished = bool((doc.get("runner") or {}).get("finished")) or finished_marker(
        project_dir(state_dir, project), state
    ) is not None
    if state.state is m.State.COMPLETE and not finished:
        return None  # its final step was cut off: resuming finishes it
    if state.state in m.TERMINAL or state.state is m.State.IDLE:
        return (f"project '{project}': nothing to resume (the last run ended {state.state}); "
                "start a new run without --resume")
    return None


def finished_marker(directory: Path, state: m.RunState) -> str | None:
    """When the final step of the run that started at ``state.started_at`` completed, if it did."""
    try:
        marker = json.loads((directory / "finished").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("started_at") != _iso(state.started_at):
        return None
    return str(marker.get("finished") or "") or None


def write_finished_marker(directory: Path, state: m.RunState, finished: str) -> None:
    """Beside the state file: a damaged state file recovered from the transitions log (whose last
    snapshot predates the final step) must not make the run look unfinished."""
    marker = {"started_at": _iso(state.started_at), "finished": finished}
    write_text_atomic(directory / "finished", json.dumps(marker) + "\n")
