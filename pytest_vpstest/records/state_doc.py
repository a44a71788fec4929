"""The shape of a project's state document (``state.json``) and the one a new project starts from.

The state store writes the document; the loop's machine reads and rewrites the fields it owns
(``state``, ``phase``, ``timestamps``, ``counters``, ``commits``, ``machine``); the plugin's
session end fills ``test_results`` and ``timestamps.last_test_at``; the runner keeps ``nodes``,
``logs`` and ``runner``. Whoever creates a project's first document starts from
:func:`new_state_document`, so a document written by the plugin alone is already a valid IDLE
run state for the loop (``loop.machine.initial_state`` is built from it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "PHASES",
    "Phase",
    "iso_time",
    "new_state_document",
]

Phase = Literal["initial", "soak"]
PHASES: tuple[Phase, ...] = ("initial", "soak")


def iso_time(moment: datetime) -> str:
    """A state-document timestamp: ISO 8601 in UTC with a ``Z`` (``2025-01-10T10:00:00.123456Z``)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: state timestamps need timezone-aware times")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def new_state_document(project: str, now: datetime) -> dict[str, Any]:
    """The document of a project that has not run a loop yet: IDLE, phase ``initial``, no counts."""
    stamp = iso_time(now)
    return {
        "project": project,
        "state": "IDLE",
        "phase": "initial",
        "timestamps": {
            "started_at": stamp,
            "last_state_change": stamp,
            "last_test_at": None,
            "wait_until": None,
        },
        "counters": {"fix_attempts": 0, "build_count": 0, "deploy_count": 0, "test_count": 0},
        "commits": [],
        "machine": {
            "soak_checkpoint": 0,
            "consecutive_build_failures": 0,
            "test_failures": 0,
            "stop_reason": None,
            "last_error": None,
        },
        "test_results": {},
        "nodes": {},
        "logs": [],
        "runner": {},
    }
