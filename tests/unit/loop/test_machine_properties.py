"""The loop's state machine keeps its invariants under random event sequences and clock advances.

A Hypothesis rule-based test offers any event at any time (most of them invalid in the current
state) and also drives the loop forward with the event the runner would send. It checks: invalid
events raise InvalidEvent exactly when an independent model says they do not apply, and change
nothing; the state reached is the one the documented rules prescribe (a small oracle in this file);
terminal states stay terminal; every transition taken is in ALLOWED_TRANSITIONS;
counters never decrease; STOPPED always carries a reason; COMPLETE is reached only through
consecutive passing TESTs separated by the enabled waits, each wait lasting its full duration;
wait_until is set exactly in WAIT states; and the state document round-trips.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pytest_vpstest.loop.machine import (
    ALLOWED_TRANSITIONS,
    TERMINAL,
    WAIT_STATES,
    BuildFinished,
    Commit,
    DeployFinished,
    Event,
    Fatal,
    FixFinished,
    InvalidEvent,
    MachineConfig,
    RestartDone,
    RunState,
    SetupFinished,
    Start,
    State,
    TestFinished,
    UserStop,
    WaitElapsed,
    initial_state,
    step,
)

T0 = datetime(2025, 1, 10, 10, 0, tzinfo=UTC)

commits = st.builds(
    Commit,
    sha=st.text("0123456789abcdef", min_size=1, max_size=8),
    message=st.text(max_size=20),
    time=st.just(T0),
)


def rarely(rare: st.SearchStrategy[Event], usual: st.SearchStrategy[Event]) -> st.SearchStrategy[Event]:
    """``rare`` about one time in forty, so that random runs often get far before they stop."""
    return st.integers(0, 39).flatmap(lambda n: rare if n == 23 else usual)


def _counts(event_type: type, healthy: bool) -> st.SearchStrategy[Event]:
    def of_total(total: int) -> st.SearchStrategy[Event]:
        low = (total + 1) // 2 if healthy else 0
        return st.builds(event_type, st.integers(low, total), st.just(total))

    return st.integers(0 if not healthy else 1, 12).flatmap(of_total)


setup_events = rarely(_counts(SetupFinished, healthy=False), _counts(SetupFinished, healthy=True))
deploy_events = rarely(_counts(DeployFinished, healthy=False), _counts(DeployFinished, healthy=True))
build_events = st.builds(BuildFinished, st.booleans(), st.none() | st.text(max_size=10))
# Passes are made more likely than failures so that runs often reach the soak stages.
test_events = st.builds(TestFinished, st.sampled_from([True, True, False]), st.text(max_size=10))
fix_events = st.builds(FixFinished, st.none() | commits, st.none() | st.text(max_size=10))
stop_events = st.builds(UserStop, st.text(max_size=10)) | st.builds(Fatal, st.text(max_size=10))
any_event: st.SearchStrategy[Event] = rarely(
    stop_events,
    st.one_of(
        st.just(Start()),
        setup_events,
        build_events,
        deploy_events,
        test_events,
        fix_events,
        st.just(WaitElapsed()),
        st.just(RestartDone()),
    ),
)

_EXPECTED_EVENT: dict[State, type] = {
    State.IDLE: Start,
    State.SETUP: SetupFinished,
    State.BUILD: BuildFinished,
    State.DEPLOY: DeployFinished,
    State.TEST: TestFinished,
    State.FIX: FixFinished,
    State.WAIT_1HR: WaitElapsed,
    State.WAIT_6HR: WaitElapsed,
    State.RESTART: RestartDone,
}
_PROGRESS_EVENTS: dict[State, st.SearchStrategy[Event]] = {
    State.IDLE: st.just(Start()),
    State.SETUP: setup_events,
    State.BUILD: build_events,
    State.DEPLOY: deploy_events,
    State.TEST: test_events,
    State.FIX: fix_events,
    State.RESTART: st.just(RestartDone()),
}


def applies(state: RunState, ev: Event, now: datetime) -> bool:
    """The test's own statement of which events a state accepts (independent of machine.py)."""
    if state.state in TERMINAL:
        return False
    if isinstance(ev, UserStop | Fatal):
        return True
    if not isinstance(ev, _EXPECTED_EVENT[state.state]):
        return False
    if isinstance(ev, WaitElapsed):
        assert state.wait_until is not None
        return now >= state.wait_until
    return True


@dataclass(frozen=True)
class Entry:
    """A state entered (or a FIX re-run) at ``time`` because of ``cause``."""

    state: State
    time: datetime
    cause: Event | None


class LoopMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.state = initial_state("ant-quic", T0)
        self.cfg = MachineConfig()
        self.history: list[Entry] = [Entry(State.IDLE, T0, None)]
        # The test's own bookkeeping, for the oracle in expected_target().
        self.build_failures_in_a_row = 0
        self.passes_in_a_row = 0

    @initialize(
        # Mostly both waits on: that is the default path, and the one with most to get wrong.
        wait_1hr=st.sampled_from([True, True, True, False]),
        wait_6hr=st.sampled_from([True, True, True, False]),
        seconds_1=st.sampled_from([60, 0, 1, 3600]),
        seconds_6=st.sampled_from([360, 0, 1, 21600]),
        max_build_failures=st.sampled_from([3, 1, 2, 4]),
        max_fix_attempts=st.none() | st.integers(1, 6),
    )
    def configure(
        self,
        wait_1hr: bool,
        wait_6hr: bool,
        seconds_1: int,
        seconds_6: int,
        max_build_failures: int,
        max_fix_attempts: int | None,
    ) -> None:
        self.cfg = MachineConfig(
            wait_1hr_seconds=seconds_1,
            wait_6hr_seconds=seconds_6,
            wait_1hr=wait_1hr,
            wait_6hr=wait_6hr,
            max_build_failures=max_build_failures,
            max_fix_attempts=max_fix_attempts,
        )

    # ------------------------------------------------------------ rules

    @rule(seconds=st.integers(0, 30_000))
    def advance_clock(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(ev=any_event)
    def offer_any_event(self, ev: Event) -> None:
        self._offer(ev)

    @precondition(lambda self: self.state.state not in TERMINAL)
    @rule(data=st.data(), count=st.integers(1, 6))
    def offer_the_runners_answers(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            s = self.state.state
            if s in TERMINAL:
                return
            if s in WAIT_STATES:
                # The runner's wake-up lands on, just after or (clock skew) just before the deadline.
                assert self.state.wait_until is not None
                skew = timedelta(milliseconds=data.draw(st.integers(-1, 1)))
                self.now = max(self.now, self.state.wait_until + skew)
                self._offer(WaitElapsed())
            else:
                self._offer(data.draw(_PROGRESS_EVENTS[s]))

    @precondition(lambda self: self.state.state in WAIT_STATES)
    @rule(offset=st.integers(-3, 3))
    def offer_wait_elapsed_near_the_deadline(self, offset: int) -> None:
        assert self.state.wait_until is not None
        self.now = max(self.now, self.state.wait_until + timedelta(milliseconds=offset))
        self._offer(WaitElapsed())

    def expected_target(self, ev: Event) -> State:
        """Where the documented rules say ``ev`` leads from the current state (an independent oracle)."""
        cfg, s = self.cfg, self.state
        fix_limit_hit = cfg.max_fix_attempts is not None and s.counters.fix_attempts >= cfg.max_fix_attempts
        if isinstance(ev, UserStop | Fatal):
            return State.STOPPED
        if isinstance(ev, Start):
            return State.SETUP
        if isinstance(ev, SetupFinished):
            return State.STOPPED if ev.reachable * 2 < ev.total or ev.total == 0 else State.BUILD
        if isinstance(ev, DeployFinished):
            return State.STOPPED if ev.succeeded * 2 < ev.total or ev.total == 0 else State.TEST
        if isinstance(ev, BuildFinished):
            if ev.ok:
                return State.DEPLOY
            if self.build_failures_in_a_row + 1 >= cfg.max_build_failures or fix_limit_hit:
                return State.STOPPED
            return State.FIX
        if isinstance(ev, TestFinished):
            if ev.passed:
                waits = [
                    w for w, on in ((State.WAIT_1HR, cfg.wait_1hr), (State.WAIT_6HR, cfg.wait_6hr)) if on
                ]
                return waits[self.passes_in_a_row] if self.passes_in_a_row < len(waits) else State.COMPLETE
            if self.passes_in_a_row > 0:
                return State.RESTART
            return State.STOPPED if fix_limit_hit else State.FIX
        if isinstance(ev, FixFinished):
            if ev.commit is not None:
                return State.BUILD
            attempts = s.counters.fix_attempts + 1
            return (
                State.STOPPED
                if cfg.max_fix_attempts is not None and attempts >= cfg.max_fix_attempts
                else State.FIX
            )
        if isinstance(ev, WaitElapsed):
            return State.TEST
        assert isinstance(ev, RestartDone)
        return State.SETUP

    def _account(self, ev: Event) -> None:
        if isinstance(ev, BuildFinished):
            self.build_failures_in_a_row = 0 if ev.ok else self.build_failures_in_a_row + 1
        if isinstance(ev, TestFinished):
            self.passes_in_a_row = self.passes_in_a_row + 1 if ev.passed else 0

    def _offer(self, ev: Event) -> None:
        before = self.state
        before_doc = before.to_document()
        should_apply = applies(before, ev, self.now)
        try:
            after, effects = step(before, ev, self.now, self.cfg)
        except InvalidEvent as e:
            assert not should_apply, f"{ev!r} was refused in {before.state}: {e}"
            assert self.state == before and self.state.to_document() == before_doc
            assert str(before.state) in str(e) and type(ev).__name__ in str(e)
            return
        assert should_apply, f"{ev!r} was accepted in {before.state}"
        assert before.state not in TERMINAL
        expected = self.expected_target(ev)
        assert after.state is expected, f"{ev!r} in {before.state} led to {after.state}, rules say {expected}"
        self._account(ev)
        if after.state != before.state:
            assert (before.state, after.state) in ALLOWED_TRANSITIONS
            assert after.last_state_change == self.now
            self.history.append(Entry(after.state, self.now, ev))
        elif isinstance(ev, FixFinished):
            self.history.append(Entry(State.FIX, self.now, ev))
        else:
            raise AssertionError(f"{ev!r} in {before.state} neither moved nor re-ran a stage")
        for f in fields(before.counters):
            assert getattr(after.counters, f.name) >= getattr(before.counters, f.name), f.name
        assert after.commits[: len(before.commits)] == before.commits
        assert effects, f"{ev!r} in {before.state} produced no effect for the runner"
        self.state = after
        if after.state is State.COMPLETE:
            self._check_complete_path()

    def _check_complete_path(self) -> None:
        """COMPLETE only after consecutive passes separated by the enabled waits, each waited out."""
        waits = [
            w for w, on in ((State.WAIT_1HR, self.cfg.wait_1hr), (State.WAIT_6HR, self.cfg.wait_6hr)) if on
        ]
        expected = [State.TEST]
        for w in waits:
            expected += [w, State.TEST]
        expected.append(State.COMPLETE)
        tail = self.history[-len(expected) :]
        assert [e.state for e in tail] == expected, [e.state for e in self.history]
        # Each step out of a TEST in the tail was caused by a passing TestFinished.
        for entry in tail[1:]:
            if entry.state in WAIT_STATES or entry.state is State.COMPLETE:
                assert isinstance(entry.cause, TestFinished) and entry.cause.passed
        durations = {State.WAIT_1HR: self.cfg.wait_1hr_seconds, State.WAIT_6HR: self.cfg.wait_6hr_seconds}
        for entered, left in itertools.pairwise(tail):
            if entered.state in WAIT_STATES:
                assert isinstance(left.cause, WaitElapsed)
                assert left.time - entered.time >= timedelta(seconds=durations[entered.state])
        event("reached COMPLETE")

    # ------------------------------------------------------------ invariants

    @invariant()
    def terminal_states_stay_terminal(self) -> None:
        seen_terminal = [e for e in self.history if e.state in TERMINAL]
        if seen_terminal:
            assert self.history[-1] == seen_terminal[0] and self.state.state is seen_terminal[0].state

    @invariant()
    def stopped_carries_a_reason(self) -> None:
        if self.state.state is State.STOPPED:
            assert self.state.stop_reason and self.state.stop_reason.strip()
        else:
            assert self.state.stop_reason is None

    @invariant()
    def wait_until_is_set_exactly_in_wait_states(self) -> None:
        in_wait = self.state.state in WAIT_STATES
        assert (self.state.wait_until is not None) == in_wait
        if self.state.state is State.WAIT_1HR:
            assert self.state.soak_checkpoint == 1 and self.state.phase == "soak"
        if self.state.state is State.WAIT_6HR:
            assert self.state.soak_checkpoint == 2 and self.state.phase == "soak"

    @invariant()
    def fix_attempts_count_every_fix_run(self) -> None:
        runs = sum(1 for e in self.history if isinstance(e.cause, FixFinished))
        assert self.state.counters.fix_attempts == runs
        assert len(self.state.commits) == sum(
            1 for e in self.history if isinstance(e.cause, FixFinished) and e.cause.commit is not None
        )

    @invariant()
    def stage_counters_match_entries(self) -> None:
        c = self.state.counters
        assert c.build_count == sum(1 for e in self.history if e.state is State.BUILD)
        assert c.deploy_count == sum(1 for e in self.history if e.state is State.DEPLOY)
        assert c.test_count == sum(1 for e in self.history if isinstance(e.cause, TestFinished))

    @invariant()
    def document_round_trips(self) -> None:
        doc = json.loads(json.dumps(self.state.to_document()))
        assert RunState.from_document(doc) == self.state

    def teardown(self) -> None:
        event(f"ended in {self.state.state}")


# The explain phase takes a minute on this machine for a failing run and adds little to the
# step-by-step program Hypothesis prints anyway.
LoopMachine.TestCase.settings = settings(
    LoopMachine.TestCase.settings,
    # Boundary slips (a wait accepted a millisecond early, exactly 50% deployed) need a few hundred runs.
    max_examples=max(300, LoopMachine.TestCase.settings.max_examples),
    stateful_step_count=60,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestLoopMachine = LoopMachine.TestCase
