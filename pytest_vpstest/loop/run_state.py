"""The loop's run state: what one project's run remembers, and its state-document form.

:class:`RunState` is the value the pure machine (``loop.machine``) steps from state to state;
``to_document`` / ``from_document`` convert it to and from the fields of the state file it owns.
``from_document`` validates: a document that cannot be a run state raises :class:`StateError`
naming the field. ``loop.machine`` re-exports every name here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pytest_vpstest.errors import StateError
from pytest_vpstest.records.state_doc import PHASES, Phase, iso_time

__all__ = ["TERMINAL", "WAIT_STATES", "Commit", "Counters", "RunState", "State", "count_interrupted_stage"]


class State(enum.StrEnum):
    """The states of the loop, spelled as in the state file."""

    IDLE = "IDLE"
    SETUP = "SETUP"
    BUILD = "BUILD"
    DEPLOY = "DEPLOY"
    TEST = "TEST"
    FIX = "FIX"
    WAIT_1HR = "WAIT_1HR"
    WAIT_6HR = "WAIT_6HR"
    COMPLETE = "COMPLETE"
    STOPPED = "STOPPED"
    RESTART = "RESTART"


TERMINAL: frozenset[State] = frozenset({State.COMPLETE, State.STOPPED})
WAIT_STATES: frozenset[State] = frozenset({State.WAIT_1HR, State.WAIT_6HR})


@dataclass(frozen=True)
class Counters:
    """The state file's ``counters``; they only ever grow during a run."""

    fix_attempts: int = 0
    build_count: int = 0
    deploy_count: int = 0
    test_count: int = 0


@dataclass(frozen=True)
class Commit:
    """A fix commit recorded by the FIX stage."""

    sha: str
    message: str
    time: datetime


@dataclass(frozen=True)
class RunState:
    """Everything the loop must remember about one project's run.

    ``soak_checkpoint`` is 0 before the first passing TEST, 1 after the pass that entered
    WAIT_1HR and 2 after the pass that entered WAIT_6HR. ``wait_until`` is set exactly while
    in a WAIT state. ``stop_reason`` is set exactly in STOPPED. All datetimes are UTC-aware.
    """

    project: str
    state: State
    phase: Phase
    started_at: datetime
    last_state_change: datetime
    last_test_at: datetime | None = None
    wait_until: datetime | None = None
    counters: Counters = field(default_factory=Counters)
    commits: tuple[Commit, ...] = ()
    consecutive_build_failures: int = 0
    soak_checkpoint: int = 0
    stop_reason: str | None = None
    last_error: str | None = None
    # Failed TESTs since Start; the first one triggers the "first_failure" notification.
    test_failures: int = 0

    def to_document(self) -> dict[str, Any]:
        """The state-file fields this machine owns, plus ``machine`` for the rest.

        The store adds ``schema_version``, ``test_results``, ``nodes`` and ``logs`` around it.
        """
        return {
            "project": self.project,
            "state": str(self.state),
            "phase": self.phase,
            "timestamps": {
                "started_at": _iso(self.started_at),
                "last_state_change": _iso(self.last_state_change),
                "last_test_at": _iso(self.last_test_at),
                "wait_until": _iso(self.wait_until),
            },
            "counters": {
                "fix_attempts": self.counters.fix_attempts,
                "build_count": self.counters.build_count,
                "deploy_count": self.counters.deploy_count,
                "test_count": self.counters.test_count,
            },
            "commits": [{"sha": c.sha, "message": c.message, "time": _iso(c.time)} for c in self.commits],
            "machine": {
                "soak_checkpoint": self.soak_checkpoint,
                "consecutive_build_failures": self.consecutive_build_failures,
                "test_failures": self.test_failures,
                "stop_reason": self.stop_reason,
                "last_error": self.last_error,
            },
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> RunState:
        """Read a state document (ours or a base-format one, verbatim); keys we do not own are ignored.

        Missing ``machine`` fields get defaults inferred from the state (WAIT_1HR → checkpoint 1,
        WAIT_6HR and COMPLETE → 2, TEST in the soak phase → 1). Raises :class:`StateError` naming
        the field when the document cannot be a run state.
        """
        return _from_document(cls, doc)


# --------------------------------------------------------------------------- documents


def count_interrupted_stage(state: RunState) -> RunState:
    """``state`` resumed in a stage that a crash cut off: that run of the stage counts too.

    BUILD and DEPLOY are counted when entered, so the rerun that resuming starts is one more;
    a TEST is counted when it finishes, so the interrupted one is added here. Other states: unchanged.
    """
    c = state.counters
    if state.state is State.BUILD:
        c = replace(c, build_count=c.build_count + 1)
    elif state.state is State.DEPLOY:
        c = replace(c, deploy_count=c.deploy_count + 1)
    elif state.state is State.TEST:
        c = replace(c, test_count=c.test_count + 1)
    return replace(state, counters=c)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else iso_time(dt)


def _field(doc: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise StateError(f"state document: missing '{where}{key}'")
    return doc[key]


def _parse_time(value: Any, where: str, *, optional: bool = True) -> datetime | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise StateError(f"state document: '{where}' must be an ISO 8601 timestamp, got {value!r}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise StateError(f"state document: '{where}' is not an ISO 8601 timestamp: {value!r}") from None
    if dt.tzinfo is None:
        # Times are written "...Z"; a bare time is taken as UTC rather than refused.
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError(f"state document: '{where}' must be a non-negative integer, got {value!r}")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise StateError(f"state document: '{where}' must be a string or null, got {value!r}")
    return value


def _from_document(cls: type[RunState], doc: Mapping[str, Any]) -> RunState:
    if not isinstance(doc, Mapping):
        raise StateError(f"state document must be a JSON object, got {type(doc).__name__}")
    project = _field(doc, "project", "")
    if not isinstance(project, str) or not project:
        raise StateError(f"state document: 'project' must be a non-empty string, got {project!r}")
    raw_state = _field(doc, "state", "")
    try:
        state = State(raw_state)
    except ValueError:
        allowed = ", ".join(s.value for s in State)
        raise StateError(f"state document: unknown state {raw_state!r} (allowed: {allowed})") from None
    phase = doc.get("phase", "initial")
    if phase not in PHASES:
        raise StateError(f"state document: unknown phase {phase!r} (allowed: initial, soak)")

    ts = doc.get("timestamps") or {}
    if not isinstance(ts, Mapping):
        raise StateError("state document: 'timestamps' must be an object")
    started_at = _parse_time(_field(ts, "started_at", "timestamps."), "timestamps.started_at", optional=False)
    assert started_at is not None
    last_change = _parse_time(ts.get("last_state_change"), "timestamps.last_state_change") or started_at
    last_test_at = _parse_time(ts.get("last_test_at"), "timestamps.last_test_at")
    wait_until = _parse_time(ts.get("wait_until"), "timestamps.wait_until")
    if state in WAIT_STATES and wait_until is None:
        raise StateError(f"state document: state {state} needs 'timestamps.wait_until'")
    if state not in WAIT_STATES:
        wait_until = None  # a leftover from an earlier wait means nothing now

    raw_counters = doc.get("counters") or {}
    if not isinstance(raw_counters, Mapping):
        raise StateError("state document: 'counters' must be an object")
    counters = Counters(
        **{k: _count(raw_counters.get(k, 0), f"counters.{k}") for k in Counters.__dataclass_fields__}
    )

    raw_commits = doc.get("commits") or []
    if not isinstance(raw_commits, list):
        raise StateError("state document: 'commits' must be a list")
    commits = []
    for i, rc in enumerate(raw_commits):
        if not isinstance(rc, Mapping):
            raise StateError(f"state document: 'commits[{i}]' must be an object")
        sha = _field(rc, "sha", f"commits[{i}].")
        message = rc.get("message", "")
        if not isinstance(sha, str) or not isinstance(message, str):
            raise StateError(f"state document: 'commits[{i}]' sha and message must be strings")
        when = _parse_time(_field(rc, "time", f"commits[{i}]."), f"commits[{i}].time", optional=False)
        assert when is not None
        commits.append(Commit(sha, message, when))

    m = doc.get("machine") or {}
    if not isinstance(m, Mapping):
        raise StateError("state document: 'machine' must be an object")
    if "soak_checkpoint" in m:
        checkpoint = _count(m["soak_checkpoint"], "machine.soak_checkpoint")
        if checkpoint > 2:
            raise StateError(f"state document: 'machine.soak_checkpoint' must be 0, 1 or 2, got {checkpoint}")
    else:
        checkpoint = _infer_checkpoint(state, phase)
    stop_reason = _opt_str(m.get("stop_reason"), "machine.stop_reason")
    if state is State.STOPPED and not stop_reason:
        stop_reason = "stopped (reason not recorded)"
    if state is not State.STOPPED:
        stop_reason = None
    return cls(
        project=project,
        state=state,
        phase=phase,
        started_at=started_at,
        last_state_change=last_change,
        last_test_at=last_test_at,
        wait_until=wait_until,
        counters=counters,
        commits=tuple(commits),
        consecutive_build_failures=_count(
            m.get("consecutive_build_failures", 0), "machine.consecutive_build_failures"
        ),
        soak_checkpoint=checkpoint,
        stop_reason=stop_reason,
        last_error=_opt_str(m.get("last_error"), "machine.last_error"),
        test_failures=_count(m.get("test_failures", 0), "machine.test_failures"),
    )


def _infer_checkpoint(state: State, phase: str) -> int:
    if state is State.WAIT_1HR:
        return 1
    if state in (State.WAIT_6HR, State.COMPLETE):
        return 2
    # A soak TEST without a record of which one: assume the earlier checkpoint, so no wait is skipped.
    if phase == "soak":
        return 1
    return 0
