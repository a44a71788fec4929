"""The loop's state machine (docs/how-it-works.md), as a pure function.

``step(state, event, now, cfg) -> (new_state, effects)``: given the current :class:`RunState`,
something that happened (an *event*, e.g. :class:`BuildFinished`) and the current time, return
the next state and the *effects* the runner must carry out (e.g. :class:`RunDeploy`). Nothing
here does I/O or reads a clock; ``loop.py`` executes the effects, persists the state after every
step and feeds the outcome back as the next event.

    IDLE ─► SETUP ─► BUILD ─► DEPLOY ─► TEST ─► WAIT_1HR ─► TEST ─► WAIT_6HR ─► TEST ─► COMPLETE
                       ▲  │               │                  │                   │
                       │  ▼               ▼ (initial phase)  ▼ (soak phase)      ▼
                       └─ FIX ◄───────────┘               RESTART ─► SETUP ◄─────┘
    any non-terminal state ─► STOPPED (user stop, fatal error, or a rule below)

Rules:
- SETUP: fewer than ``min_reachable_fraction`` (50%) of nodes reachable → STOPPED, naming each
  unreachable node and why.
- BUILD: failure → FIX; the ``max_build_failures``-th (3rd) consecutive failure → STOPPED.
- DEPLOY: fewer than ``min_deployed_fraction`` (50%) of nodes deployed → STOPPED, else TEST.
- TEST: failure → FIX in the initial phase, → RESTART in the soak phase; a pass moves to the next
  enabled soak checkpoint: WAIT_1HR, then WAIT_6HR, then COMPLETE. A failure whose causes are all
  infrastructure (unreachable or unhealthy nodes, timed-out SSH) is not the software's fault: it
  never enters FIX (STOPPED in the initial phase, RESTART in the soak phase).
- FIX: a commit → BUILD; no commit → another fix run, at most ``max_fix_attempts`` (5) attempts in
  all, then STOPPED with the reason.
- Node health (``NodesHealth``, any running state): fewer than ``min_live_fraction`` (50%) of the
  nodes Live → STOPPED naming each node that is not Live and why; otherwise nothing changes.
- WAIT_*: ``WaitElapsed`` is accepted only once ``now >= wait_until`` → TEST.
- RESTART: ``RestartDone`` → SETUP, back in the initial phase.

The run state itself (:class:`RunState`, :class:`State`) and its state-document form live in
``loop.run_state``; they are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeAlias

from pytest_vpstest.errors import InvalidEvent
from pytest_vpstest.loop.run_state import TERMINAL, WAIT_STATES, Commit, Counters, RunState, State
from pytest_vpstest.records.state_doc import Phase, iso_time, new_state_document

__all__ = [
    "ALLOWED_TRANSITIONS",
    "NOTIFY_KINDS",
    "TERMINAL",
    "WAIT_STATES",
    "BuildFinished",
    "Commit",
    "Counters",
    "DeployFinished",
    "Effect",
    "Event",
    "Fatal",
    "Finish",
    "FixFinished",
    "InvalidEvent",
    "MachineConfig",
    "NodesHealth",
    "Notify",
    "Phase",
    "Restart",
    "RestartDone",
    "RunBuild",
    "RunDeploy",
    "RunFix",
    "RunSetup",
    "RunState",
    "RunTest",
    "SetupFinished",
    "Start",
    "StartWait",
    "State",
    "Stop",
    "TestFinished",
    "UserStop",
    "WaitElapsed",
    "initial_state",
    "resume_effects",
    "step",
    "wait_is_over",
]


_S = State
# The edges of the diagram in docs/how-it-works.md ...
_DIAGRAM_EDGES = {
    (_S.IDLE, _S.SETUP),
    (_S.SETUP, _S.BUILD),
    (_S.BUILD, _S.DEPLOY),
    (_S.BUILD, _S.FIX),
    (_S.DEPLOY, _S.TEST),
    (_S.TEST, _S.FIX),
    (_S.FIX, _S.BUILD),
    (_S.TEST, _S.WAIT_1HR),
    (_S.WAIT_1HR, _S.TEST),
    (_S.TEST, _S.WAIT_6HR),
    (_S.WAIT_6HR, _S.TEST),
    (_S.TEST, _S.COMPLETE),
    (_S.TEST, _S.RESTART),
    (_S.RESTART, _S.SETUP),
}
# ... plus "user stop or unrecoverable error" from every state that has not ended.
ALLOWED_TRANSITIONS: frozenset[tuple[State, State]] = frozenset(
    _DIAGRAM_EDGES | {(s, _S.STOPPED) for s in State if s not in TERMINAL}
)

NotifyKind: TypeAlias = Literal[
    "loop_start", "first_failure", "fix_committed", "wait_1hr", "wait_6hr", "complete", "critical"
]
# The moments someone watching the loop is told about (docs/loop.md "Notifications").
NOTIFY_KINDS: tuple[NotifyKind, ...] = (
    "loop_start",
    "first_failure",
    "fix_committed",
    "wait_1hr",
    "wait_6hr",
    "complete",
    "critical",
)


@dataclass(frozen=True)
class MachineConfig:
    """The knobs of the machine; ``loop.py`` fills them from the project config."""

    wait_1hr_seconds: float = 3600.0
    wait_6hr_seconds: float = 21600.0
    wait_1hr: bool = True
    wait_6hr: bool = True
    max_build_failures: int = 3
    # Fix attempts in a run before it stops; None: unlimited (only when configured so explicitly).
    max_fix_attempts: int | None = 5
    min_reachable_fraction: float = 0.5
    min_deployed_fraction: float = 0.5
    min_live_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.wait_1hr_seconds < 0 or self.wait_6hr_seconds < 0:
            raise ValueError("wait durations must not be negative")
        if self.max_build_failures < 1:
            raise ValueError("max_build_failures must be at least 1")
        if self.max_fix_attempts is not None and self.max_fix_attempts < 1:
            raise ValueError("max_fix_attempts must be at least 1 (or None for unlimited)")
        for name in ("min_reachable_fraction", "min_deployed_fraction", "min_live_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Start:
    """The user started the loop (after the interview/confirmation)."""


@dataclass(frozen=True)
class SetupFinished:
    reachable: int
    total: int
    # (node, cause) of each node that could not be reached, for the stop reason.
    unreachable: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.reachable <= self.total:
            raise ValueError(
                f"SetupFinished needs 0 <= reachable <= total, got {self.reachable}/{self.total}"
            )


@dataclass(frozen=True)
class BuildFinished:
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class DeployFinished:
    succeeded: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.succeeded <= self.total:
            raise ValueError(
                f"DeployFinished needs 0 <= succeeded <= total, got {self.succeeded}/{self.total}"
            )


@dataclass(frozen=True)
class TestFinished:
    __test__ = False  # not a pytest test class

    passed: bool
    summary: str = ""
    # A failure whose every cause is infrastructure (unreachable/unhealthy node, SSH timeout).
    infrastructure: bool = False


@dataclass(frozen=True)
class NodesHealth:
    """The runner's liveness round: ``live`` of ``total`` nodes are Live; ``unhealthy`` names the others.

    Accepted in every running state; it changes nothing unless too few nodes are Live.
    """

    live: int
    total: int
    unhealthy: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.live <= self.total:
            raise ValueError(f"NodesHealth needs 0 <= live <= total, got {self.live}/{self.total}")


@dataclass(frozen=True)
class FixFinished:
    """A fix run ended: with a commit (→ BUILD) or without one (→ another fix run)."""

    commit: Commit | None
    error: str | None = None


@dataclass(frozen=True)
class WaitElapsed:
    """The runner's wait reached ``wait_until``."""


@dataclass(frozen=True)
class RestartDone:
    """The RESTART effect finished; the loop starts over at SETUP."""


@dataclass(frozen=True)
class UserStop:
    reason: str = "user stop"


@dataclass(frozen=True)
class Fatal:
    """An unrecoverable error outside the rules (e.g. the store failed)."""

    reason: str


Event: TypeAlias = (
    Start
    | SetupFinished
    | BuildFinished
    | DeployFinished
    | TestFinished
    | FixFinished
    | WaitElapsed
    | RestartDone
    | NodesHealth
    | UserStop
    | Fatal
)


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class RunSetup:
    """Verify nodes (SSH, disk); answer with SetupFinished."""


@dataclass(frozen=True)
class RunBuild:
    """Build locally; answer with BuildFinished."""


@dataclass(frozen=True)
class RunDeploy:
    """Deploy to the nodes; answer with DeployFinished."""


@dataclass(frozen=True)
class RunTest:
    """Run the suites; ``checkpoint`` is the soak checkpoint (0 initial, 1 after 1 h, 2 after 6 h)."""

    checkpoint: int


@dataclass(frozen=True)
class RunFix:
    """Run the fix stage for ``reason``; answer with FixFinished."""

    reason: str


@dataclass(frozen=True)
class StartWait:
    """Wait (without burning CPU) until ``until``, then answer with WaitElapsed."""

    until: datetime
    stage: State


@dataclass(frozen=True)
class Notify:
    kind: NotifyKind
    message: str


@dataclass(frozen=True)
class Restart:
    """Soak regression: tear down what the run started; answer with RestartDone."""


@dataclass(frozen=True)
class Finish:
    """COMPLETE: write the final proof and statistics."""


@dataclass(frozen=True)
class Stop:
    """STOPPED: kill what the run started and log the reason."""

    reason: str


Effect: TypeAlias = (
    RunSetup | RunBuild | RunDeploy | RunTest | RunFix | StartWait | Notify | Restart | Finish | Stop
)
Step: TypeAlias = tuple[RunState, tuple[Effect, ...]]


# --------------------------------------------------------------------------- the machine


def initial_state(project: str, now: datetime) -> RunState:
    """A fresh run in IDLE: the state document every new project starts from (``records.state_doc``)."""
    return RunState.from_document(new_state_document(project, _utc(now)))


def step(state: RunState, event: Event, now: datetime, cfg: MachineConfig | None = None) -> Step:
    """Apply ``event`` at time ``now``; return the new state and the effects to carry out, in order.

    Raises :class:`InvalidEvent` (and changes nothing) when the event does not apply in the
    current state, including any event once the run is COMPLETE or STOPPED.
    """
    cfg = cfg or MachineConfig()
    now = _utc(now)
    if state.state in TERMINAL:
        raise InvalidEvent(state.state, event, state.project, "the run has ended")
    if isinstance(event, UserStop):
        return _stop(state, now, event.reason.strip() or "user stop", critical=False)
    if isinstance(event, Fatal):
        return _stop(state, now, event.reason.strip() or "fatal error", critical=True)

    s = state.state
    if isinstance(event, NodesHealth) and s is not State.IDLE:
        return _on_health(state, event, now, cfg)
    if s is State.IDLE and isinstance(event, Start):
        nxt = replace(state, started_at=now)
        return _enter(
            nxt, State.SETUP, now, (Notify("loop_start", f"VPS test loop started for {state.project}"),)
        )
    if s is State.SETUP and isinstance(event, SetupFinished):
        return _on_setup(state, event, now, cfg)
    if s is State.BUILD and isinstance(event, BuildFinished):
        return _on_build(state, event, now, cfg)
    if s is State.DEPLOY and isinstance(event, DeployFinished):
        return _on_deploy(state, event, now, cfg)
    if s is State.TEST and isinstance(event, TestFinished):
        return _on_test(state, event, now, cfg)
    if s is State.FIX and isinstance(event, FixFinished):
        return _on_fix(state, event, now, cfg)
    if s in WAIT_STATES and isinstance(event, WaitElapsed):
        assert state.wait_until is not None
        if now < state.wait_until:
            raise InvalidEvent(s, event, state.project, f"the wait runs until {_iso(state.wait_until)}")
        return _enter(state, State.TEST, now)
    if s is State.RESTART and isinstance(event, RestartDone):
        return _enter(replace(state, phase="initial", soak_checkpoint=0), State.SETUP, now)
    raise InvalidEvent(s, event, state.project)


def wait_is_over(state: RunState, now: datetime) -> bool:
    """True when ``state`` is a WAIT state whose ``wait_until`` has been reached."""
    return state.state in WAIT_STATES and state.wait_until is not None and _utc(now) >= state.wait_until


def resume_effects(state: RunState, now: datetime) -> tuple[Effect, ...]:
    """What a restarted runner does for a state read back from the state file.

    - BUILD/DEPLOY/TEST/SETUP/RESTART: run that stage again; FIX: continue fixing.
    - WAIT_* not yet over: ``StartWait`` until the saved ``wait_until``.
    - WAIT_* already over: nothing to wait for; the runner sends ``WaitElapsed`` straight away
      (``wait_is_over`` tells it so).
    - IDLE, COMPLETE, STOPPED: nothing.
    """
    s = state.state
    if s in WAIT_STATES:
        if wait_is_over(state, now):
            return ()
        assert state.wait_until is not None
        return (StartWait(state.wait_until, s),)
    if s is State.SETUP:
        return (RunSetup(),)
    if s is State.BUILD:
        return (RunBuild(),)
    if s is State.DEPLOY:
        return (RunDeploy(),)
    if s is State.TEST:
        return (RunTest(state.soak_checkpoint),)
    if s is State.FIX:
        return (RunFix(state.last_error or "resumed fix"),)
    if s is State.RESTART:
        return (Restart(),)
    return ()


def _on_setup(state: RunState, ev: SetupFinished, now: datetime, cfg: MachineConfig) -> Step:
    if ev.total == 0 or ev.reachable < cfg.min_reachable_fraction * ev.total:
        reason = (
            f"only {ev.reachable} of {ev.total} nodes reachable at SETUP "
            f"(need at least {_pct(cfg.min_reachable_fraction)})" + _named(ev.unreachable)
        )
        return _stop(state, now, reason, critical=True)
    return _enter(state, State.BUILD, now)


def _on_health(state: RunState, ev: NodesHealth, now: datetime, cfg: MachineConfig) -> Step:
    if ev.total > 0 and ev.live >= cfg.min_live_fraction * ev.total:
        return state, ()
    reason = (
        f"only {ev.live} of {ev.total} nodes live (need at least {_pct(cfg.min_live_fraction)})"
        + _named(ev.unhealthy)
    )
    return _stop(state, now, reason, critical=True)


def _named(nodes: tuple[tuple[str, str], ...]) -> str:
    """``: n1 (cause); n2 (cause)`` for a stop reason, or nothing."""
    return (": " + "; ".join(f"{name} ({cause})" for name, cause in nodes)) if nodes else ""


def _on_build(state: RunState, ev: BuildFinished, now: datetime, cfg: MachineConfig) -> Step:
    if ev.ok:
        return _enter(replace(state, consecutive_build_failures=0), State.DEPLOY, now)
    failures = state.consecutive_build_failures + 1
    error = f"build failed: {ev.error or 'no detail'}"
    failed = replace(state, consecutive_build_failures=failures, last_error=error)
    if failures >= cfg.max_build_failures:
        return _stop(failed, now, f"build failed {failures} times in a row; last: {ev.error or 'no detail'}")
    return _enter_fix(failed, now, cfg, error)


def _on_deploy(state: RunState, ev: DeployFinished, now: datetime, cfg: MachineConfig) -> Step:
    if ev.total == 0 or ev.succeeded < cfg.min_deployed_fraction * ev.total:
        reason = (
            f"only {ev.succeeded} of {ev.total} nodes deployed "
            f"(need at least {_pct(cfg.min_deployed_fraction)})"
        )
        return _stop(state, now, reason, critical=True)
    return _enter(state, State.TEST, now)


def _on_test(state: RunState, ev: TestFinished, now: datetime, cfg: MachineConfig) -> Step:
    c = state.counters
    tested = replace(state, counters=replace(c, test_count=c.test_count + 1), last_test_at=now)
    if ev.passed:
        return _after_pass(tested, now, cfg)
    error = f"tests failed: {ev.summary or 'no summary'}"
    failed = replace(tested, test_failures=tested.test_failures + 1, last_error=error)
    notes: tuple[Effect, ...] = ()
    if state.test_failures == 0:
        notes = (
            Notify("first_failure", f"First test failure for {state.project}: {ev.summary or 'no summary'}"),
        )
    if state.phase == "soak":
        return _enter(failed, State.RESTART, now, notes)
    if ev.infrastructure:
        # Nothing for a fix to change in the code: the nodes are at fault.
        summary = ev.summary or "no summary"
        reason = f"tests failed for infrastructure reasons only (not a software failure): {summary}"
        stopped, effects = _stop(failed, now, reason)
        return stopped, (*notes, *effects)
    return _enter_fix(failed, now, cfg, error, notes)


def _after_pass(state: RunState, now: datetime, cfg: MachineConfig) -> Step:
    """A passing TEST moves to the next enabled soak checkpoint (disabled waits are skipped)."""
    if state.soak_checkpoint == 0 and cfg.wait_1hr:
        until = now + timedelta(seconds=cfg.wait_1hr_seconds)
        nxt = replace(state, phase="soak", soak_checkpoint=1, wait_until=until)
        note = Notify("wait_1hr", f"{state.project} passed; soak wait until {_iso(until)}")
        return _enter(nxt, State.WAIT_1HR, now, (note,))
    if state.soak_checkpoint <= 1 and cfg.wait_6hr:
        until = now + timedelta(seconds=cfg.wait_6hr_seconds)
        nxt = replace(state, phase="soak", soak_checkpoint=2, wait_until=until)
        note = Notify("wait_6hr", f"{state.project} passed again; soak wait until {_iso(until)}")
        return _enter(nxt, State.WAIT_6HR, now, (note,))
    return _enter(state, State.COMPLETE, now)


def _on_fix(state: RunState, ev: FixFinished, now: datetime, cfg: MachineConfig) -> Step:
    c = state.counters
    fixed = replace(state, counters=replace(c, fix_attempts=c.fix_attempts + 1))
    if ev.commit is not None:
        commit = Commit(ev.commit.sha, ev.commit.message, _utc(ev.commit.time))
        nxt = replace(fixed, commits=(*state.commits, commit))
        note = Notify("fix_committed", f"Fix committed for {state.project}: {commit.sha} {commit.message}")
        return _enter(nxt, State.BUILD, now, (note,))
    # last_error keeps the failure being fixed; the next run is told why the last one failed too.
    failure = state.last_error or "failure"
    detail = ev.error or "no detail"
    attempts = fixed.counters.fix_attempts
    if cfg.max_fix_attempts is not None and attempts >= cfg.max_fix_attempts:
        return _stop(fixed, now, f"no fix committed after {attempts} attempts for: {failure}; last: {detail}")
    # Still in FIX: not a transition, so last_state_change stays.
    return fixed, (RunFix(f"{failure} (previous fix attempt made no commit: {detail})"),)


def _enter_fix(
    state: RunState, now: datetime, cfg: MachineConfig, reason: str, notes: tuple[Effect, ...] = ()
) -> Step:
    attempts = state.counters.fix_attempts
    if cfg.max_fix_attempts is not None and attempts >= cfg.max_fix_attempts:
        stopped, effects = _stop(state, now, f"fix attempts exhausted ({attempts}); {reason}")
        return stopped, (*notes, *effects)
    return _enter(state, State.FIX, now, notes)


def _stop(state: RunState, now: datetime, reason: str, *, critical: bool = True) -> Step:
    nxt, effects = _enter(replace(state, stop_reason=reason), State.STOPPED, now)
    if critical:
        effects = (Notify("critical", f"{state.project} stopped: {reason}"), *effects)
    return nxt, effects


def _enter(state: RunState, target: State, now: datetime, before: tuple[Effect, ...] = ()) -> Step:
    """Move to ``target``: keep the state file's bookkeeping and emit its entry effects."""
    if (state.state, target) not in ALLOWED_TRANSITIONS:
        raise AssertionError(f"machine bug: {state.state} -> {target} is not an allowed transition")
    c = state.counters
    if target is State.BUILD:
        c = replace(c, build_count=c.build_count + 1)
    elif target is State.DEPLOY:
        c = replace(c, deploy_count=c.deploy_count + 1)
    nxt = replace(
        state,
        state=target,
        last_state_change=now,
        counters=c,
        wait_until=state.wait_until if target in WAIT_STATES else None,
        stop_reason=state.stop_reason if target is State.STOPPED else None,
    )
    entry: tuple[Effect, ...]
    if target is State.SETUP:
        entry = (RunSetup(),)
    elif target is State.BUILD:
        entry = (RunBuild(),)
    elif target is State.DEPLOY:
        entry = (RunDeploy(),)
    elif target is State.TEST:
        entry = (RunTest(nxt.soak_checkpoint),)
    elif target is State.FIX:
        entry = (RunFix(nxt.last_error or "failure"),)
    elif target in WAIT_STATES:
        assert nxt.wait_until is not None
        entry = (StartWait(nxt.wait_until, target),)
    elif target is State.RESTART:
        entry = (Restart(),)
    elif target is State.COMPLETE:
        entry = (Finish(), Notify("complete", f"VPS test complete for {state.project}"))
    elif target is State.STOPPED:
        entry = (Stop(nxt.stop_reason or "stopped"),)
    else:  # pragma: no cover - IDLE is never entered
        entry = ()
    return nxt, (*before, *entry)


# --------------------------------------------------------------------------- helpers


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()}: the machine needs timezone-aware UTC times")
    return dt.astimezone(UTC)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else iso_time(dt)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"
