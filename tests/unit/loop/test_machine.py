"""The loop's state machine follows each rule of docs/how-it-works.md, one plain test per rule.

Also: the state document mapping (the shipped base-format example state file loads verbatim) and what a
restarted runner does for each saved state.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pytest_vpstest.errors import StateError
from pytest_vpstest.loop.machine import (
    ALLOWED_TRANSITIONS,
    TERMINAL,
    BuildFinished,
    Commit,
    Counters,
    DeployFinished,
    Fatal,
    Finish,
    FixFinished,
    InvalidEvent,
    MachineConfig,
    NodesHealth,
    Notify,
    Restart,
    RestartDone,
    RunBuild,
    RunDeploy,
    RunFix,
    RunSetup,
    RunState,
    RunTest,
    SetupFinished,
    Start,
    StartWait,
    State,
    Stop,
    TestFinished,
    UserStop,
    WaitElapsed,
    initial_state,
    resume_effects,
    step,
    wait_is_over,
)

DOCS = Path(__file__).resolve().parents[3] / "docs"
EXAMPLE_STATE = DOCS / "examples" / "example-state.json"
T0 = datetime(2025, 1, 10, 10, 0, tzinfo=UTC)
CFG = MachineConfig(wait_1hr_seconds=60, wait_6hr_seconds=360)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def kinds(effects: tuple[object, ...]) -> list[str]:
    return [e.kind for e in effects if isinstance(e, Notify)]


def drive(events: list[object], cfg: MachineConfig = CFG) -> tuple[RunState, tuple[object, ...]]:
    """Apply events one second apart from IDLE; return the last state and effects."""
    state = initial_state("ant-quic", T0)
    effects: tuple[object, ...] = ()
    now = T0
    for ev in events:
        now += timedelta(seconds=1)
        if isinstance(ev, WaitElapsed):
            assert state.wait_until is not None
            now = max(now, state.wait_until)
        state, effects = step(state, ev, now, cfg)  # type: ignore[arg-type]
    return state, effects


TO_TEST = [Start(), SetupFinished(10, 10), BuildFinished(True), DeployFinished(10, 10)]
PASS = TestFinished(True, "all green")
FAIL = TestFinished(False, "nat_traversed 70% < 85%")


def test_allowed_transitions_are_the_documented_diagram_plus_stop() -> None:
    s = State
    diagram = {
        (s.IDLE, s.SETUP),
        (s.SETUP, s.BUILD),
        (s.BUILD, s.DEPLOY),
        (s.BUILD, s.FIX),
        (s.DEPLOY, s.TEST),
        (s.TEST, s.FIX),
        (s.FIX, s.BUILD),
        (s.TEST, s.WAIT_1HR),
        (s.WAIT_1HR, s.TEST),
        (s.TEST, s.WAIT_6HR),
        (s.WAIT_6HR, s.TEST),
        (s.TEST, s.COMPLETE),
        (s.TEST, s.RESTART),
        (s.RESTART, s.SETUP),
    }
    stops = {(x, s.STOPPED) for x in s if x not in (s.COMPLETE, s.STOPPED)}
    assert diagram | stops == ALLOWED_TRANSITIONS
    assert {s.COMPLETE, s.STOPPED} == TERMINAL


def test_the_documented_diagram_lists_exactly_the_allowed_transitions() -> None:
    text = (DOCS / "how-it-works.md").read_text()
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set()
    for line in block.splitlines():
        m = re.match(r"\s*(\w+) --> (\w+)", line)
        if m and "[*]" not in line:
            edges.add((State(m.group(1)), State(m.group(2))))
    assert edges == ALLOWED_TRANSITIONS


def test_start_moves_idle_to_setup_and_announces_the_loop() -> None:
    state = initial_state("ant-quic", T0)
    nxt, effects = step(state, Start(), at(5))
    assert nxt.state is State.SETUP
    assert nxt.started_at == at(5) and nxt.last_state_change == at(5)
    assert effects == (Notify("loop_start", "VPS test loop started for ant-quic"), RunSetup())


def test_setup_with_fewer_than_half_reachable_stops_naming_the_numbers() -> None:
    state, effects = drive([Start(), SetupFinished(4, 10)])
    assert state.state is State.STOPPED
    assert state.stop_reason is not None and "4 of 10" in state.stop_reason and "50%" in state.stop_reason
    assert kinds(effects) == ["critical"]
    assert isinstance(effects[-1], Stop) and effects[-1].reason == state.stop_reason


def test_setup_with_half_reachable_goes_on_to_build() -> None:
    state, effects = drive([Start(), SetupFinished(5, 10)])
    assert state.state is State.BUILD
    assert effects == (RunBuild(),)
    assert state.counters.build_count == 1


def test_setup_with_no_nodes_stops() -> None:
    state, _ = drive([Start(), SetupFinished(0, 0)])
    assert state.state is State.STOPPED and "0 of 0" in (state.stop_reason or "")


def test_build_success_goes_to_deploy_and_counts_the_deploy() -> None:
    state, effects = drive([Start(), SetupFinished(10, 10), BuildFinished(True)])
    assert state.state is State.DEPLOY
    assert effects == (RunDeploy(),)
    assert state.counters == Counters(build_count=1, deploy_count=1)


def test_build_failure_goes_to_fix_with_the_error() -> None:
    state, effects = drive([Start(), SetupFinished(10, 10), BuildFinished(False, "E0425 at src/lib.rs:3")])
    assert state.state is State.FIX
    assert state.consecutive_build_failures == 1
    assert effects == (RunFix("build failed: E0425 at src/lib.rs:3"),)


def commit(n: int) -> Commit:
    return Commit(f"sha{n}", f"fix: attempt {n}", at(n))


def test_third_consecutive_build_failure_stops() -> None:
    fail = BuildFinished(False, "linker error")
    events = [Start(), SetupFinished(10, 10), fail, FixFinished(commit(1)), fail, FixFinished(commit(2))]
    state, _ = drive(events)
    assert state.state is State.BUILD and state.consecutive_build_failures == 2
    state, effects = drive([*events, fail])
    assert state.state is State.STOPPED
    assert "3 times in a row" in (state.stop_reason or "") and "linker error" in (state.stop_reason or "")
    assert kinds(effects) == ["critical"]


def test_a_successful_build_resets_the_consecutive_failure_count() -> None:
    fail = BuildFinished(False, "x")
    events = [Start(), SetupFinished(10, 10), fail, FixFinished(commit(1)), fail, FixFinished(commit(2))]
    events += [BuildFinished(True), DeployFinished(10, 10), FAIL, FixFinished(commit(3)), fail]
    state, _ = drive(events)
    assert state.state is State.FIX and state.consecutive_build_failures == 1


def test_deploy_below_half_stops_and_at_half_goes_on_to_test() -> None:
    base = [Start(), SetupFinished(10, 10), BuildFinished(True)]
    state, _ = drive([*base, DeployFinished(4, 10)])
    assert state.state is State.STOPPED and "4 of 10 nodes deployed" in (state.stop_reason or "")
    state, effects = drive([*base, DeployFinished(5, 10)])
    assert state.state is State.TEST and effects == (RunTest(0),)


def test_test_failure_in_initial_phase_goes_to_fix_and_notifies_first_failure_once() -> None:
    state, effects = drive([*TO_TEST, FAIL])
    assert state.state is State.FIX and state.phase == "initial"
    assert kinds(effects) == ["first_failure"]
    assert effects[-1] == RunFix(f"tests failed: {FAIL.summary}")
    state, effects = drive(
        [*TO_TEST, FAIL, FixFinished(commit(1)), BuildFinished(True), DeployFinished(9, 9), FAIL]
    )
    assert state.state is State.FIX and kinds(effects) == []
    assert state.test_failures == 2


def test_test_failure_in_soak_phase_restarts_then_setup_in_initial_phase() -> None:
    state, effects = drive([*TO_TEST, PASS, WaitElapsed(), FAIL])
    assert state.state is State.RESTART and state.phase == "soak"
    assert effects == (Notify("first_failure", f"First test failure for ant-quic: {FAIL.summary}"), Restart())
    state, effects = drive([*TO_TEST, PASS, WaitElapsed(), FAIL, RestartDone()])
    assert state.state is State.SETUP
    assert state.phase == "initial" and state.soak_checkpoint == 0
    assert effects == (RunSetup(),)


def test_first_pass_enters_wait_1hr_in_soak_phase() -> None:
    state, effects = drive([*TO_TEST, PASS])
    assert state.state is State.WAIT_1HR and state.phase == "soak" and state.soak_checkpoint == 1
    assert state.wait_until == state.last_state_change + timedelta(seconds=60)
    assert kinds(effects) == ["wait_1hr"]
    assert effects[-1] == StartWait(state.wait_until, State.WAIT_1HR)


def test_the_default_waits_are_one_and_six_hours() -> None:
    state, _ = drive([*TO_TEST, PASS], MachineConfig())
    assert state.wait_until == state.last_state_change + timedelta(hours=1)
    state, _ = drive([*TO_TEST, PASS, WaitElapsed(), PASS], MachineConfig())
    assert state.wait_until == state.last_state_change + timedelta(hours=6)


def test_pass_after_1hr_enters_wait_6hr_and_pass_after_6hr_completes() -> None:
    state, effects = drive([*TO_TEST, PASS, WaitElapsed()])
    assert state.state is State.TEST and effects == (RunTest(1),) and state.wait_until is None
    state, effects = drive([*TO_TEST, PASS, WaitElapsed(), PASS])
    assert state.state is State.WAIT_6HR and state.soak_checkpoint == 2
    assert state.wait_until == state.last_state_change + timedelta(seconds=360)
    assert kinds(effects) == ["wait_6hr"]
    state, effects = drive([*TO_TEST, PASS, WaitElapsed(), PASS, WaitElapsed()])
    assert effects == (RunTest(2),)
    state, effects = drive([*TO_TEST, PASS, WaitElapsed(), PASS, WaitElapsed(), PASS])
    assert state.state is State.COMPLETE
    assert effects == (Finish(), Notify("complete", "VPS test complete for ant-quic"))
    assert state.counters == Counters(fix_attempts=0, build_count=1, deploy_count=1, test_count=3)


@pytest.mark.parametrize(
    ("wait_1hr", "wait_6hr", "path"),
    [
        (False, True, [State.WAIT_6HR, State.TEST, State.COMPLETE]),
        (True, False, [State.WAIT_1HR, State.TEST, State.COMPLETE]),
        (False, False, [State.COMPLETE]),
    ],
)
def test_disabled_waits_are_skipped_in_order(wait_1hr: bool, wait_6hr: bool, path: list[State]) -> None:
    cfg = MachineConfig(wait_1hr_seconds=60, wait_6hr_seconds=360, wait_1hr=wait_1hr, wait_6hr=wait_6hr)
    state, _ = drive(TO_TEST, cfg)
    seen = []
    now = at(100)
    for _ in path:
        event = WaitElapsed() if state.state in (State.WAIT_1HR, State.WAIT_6HR) else PASS
        now = max(now, state.wait_until or now) + timedelta(seconds=1)
        state, _ = step(state, event, now, cfg)
        seen.append(state.state)
    assert seen == path


def test_wait_elapsed_is_refused_before_wait_until_and_accepted_at_it() -> None:
    state, _ = drive([*TO_TEST, PASS])
    assert state.wait_until is not None
    early = state.wait_until - timedelta(microseconds=1)
    with pytest.raises(InvalidEvent, match=r"WaitElapsed does not apply in state WAIT_1HR .*wait runs until"):
        step(state, WaitElapsed(), early, CFG)
    assert not wait_is_over(state, early) and wait_is_over(state, state.wait_until)
    nxt, _ = step(state, WaitElapsed(), state.wait_until, CFG)
    assert nxt.state is State.TEST


def test_fix_with_a_commit_records_it_and_rebuilds() -> None:
    c = commit(7)
    state, effects = drive([*TO_TEST, FAIL, FixFinished(c)])
    assert state.state is State.BUILD
    assert state.commits == (c,)
    assert state.counters.fix_attempts == 1 and state.counters.build_count == 2
    assert effects == (Notify("fix_committed", "Fix committed for ant-quic: sha7 fix: attempt 7"), RunBuild())


def test_fix_without_a_commit_stays_in_fix_and_counts_the_attempt() -> None:
    before, _ = drive([*TO_TEST, FAIL])
    state, effects = step(before, FixFinished(None, "fixer found nothing"), at(99), CFG)
    assert state.state is State.FIX
    assert state.last_state_change == before.last_state_change
    assert state.counters.fix_attempts == 1
    failure = f"tests failed: {FAIL.summary}"
    assert state.last_error == failure  # still the failure being fixed
    assert effects == (RunFix(f"{failure} (previous fix attempt made no commit: fixer found nothing)"),)
    assert resume_effects(state, at(100)) == (RunFix(failure),)


def test_fix_attempts_stop_after_five_by_default_and_the_limit_is_configurable() -> None:
    state, effects = drive([*TO_TEST, FAIL] + [FixFinished(None)] * 5)
    assert state.state is State.STOPPED and state.counters.fix_attempts == 5
    assert (state.stop_reason or "").startswith("no fix committed after 5 attempts for: tests failed")
    assert kinds(effects) == ["critical"]
    state, _ = drive([*TO_TEST, FAIL] + [FixFinished(None)] * 50, MachineConfig(max_fix_attempts=None))
    assert state.state is State.FIX and state.counters.fix_attempts == 50
    cfg = MachineConfig(max_fix_attempts=2)
    state, effects = drive([*TO_TEST, FAIL, FixFinished(None), FixFinished(None)], cfg)
    assert state.stop_reason == (
        f"no fix committed after 2 attempts for: tests failed: {FAIL.summary}; last: no detail"
    )
    assert kinds(effects) == ["critical"]
    # Attempts spent earlier count when a later failure would enter FIX again.
    events = [*TO_TEST, FAIL, FixFinished(None), FixFinished(commit(1)), BuildFinished(False, "x")]
    state, _ = drive(events, cfg)
    assert state.state is State.STOPPED and "fix attempts exhausted" in (state.stop_reason or "")


def reach(target: State) -> RunState:
    paths: dict[State, list[object]] = {
        State.IDLE: [],
        State.SETUP: [Start()],
        State.BUILD: [Start(), SetupFinished(10, 10)],
        State.DEPLOY: [Start(), SetupFinished(10, 10), BuildFinished(True)],
        State.TEST: TO_TEST,
        State.FIX: [*TO_TEST, FAIL],
        State.WAIT_1HR: [*TO_TEST, PASS],
        State.WAIT_6HR: [*TO_TEST, PASS, WaitElapsed(), PASS],
        State.RESTART: [*TO_TEST, PASS, WaitElapsed(), FAIL],
        State.COMPLETE: [*TO_TEST, PASS, WaitElapsed(), PASS, WaitElapsed(), PASS],
        State.STOPPED: [UserStop()],
    }
    state, _ = drive(paths[target])
    assert state.state is target
    return state


@pytest.mark.parametrize("source", [s for s in State if s not in TERMINAL])
def test_user_stop_and_fatal_stop_any_running_state_with_the_reason(source: State) -> None:
    state = reach(source)
    stopped, effects = step(state, UserStop("operator asked"), at(10_000), CFG)
    assert stopped.state is State.STOPPED and stopped.stop_reason == "operator asked"
    assert stopped.wait_until is None
    assert effects == (Stop("operator asked"),)
    stopped, effects = step(state, Fatal("state store unwritable"), at(10_000), CFG)
    assert stopped.stop_reason == "state store unwritable"
    assert kinds(effects) == ["critical"] and effects[-1] == Stop("state store unwritable")


def test_a_blank_stop_reason_is_replaced_so_stopped_always_has_one() -> None:
    stopped, _ = step(reach(State.BUILD), UserStop("  "), at(9), CFG)
    assert stopped.stop_reason == "user stop"
    stopped, _ = step(reach(State.BUILD), Fatal(""), at(9), CFG)
    assert stopped.stop_reason == "fatal error"


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("event", [Start(), UserStop(), Fatal("x"), PASS, WaitElapsed(), RestartDone()])
def test_terminal_states_refuse_every_event(terminal: State, event: object) -> None:
    with pytest.raises(InvalidEvent, match=f"state {terminal}"):
        step(reach(terminal), event, at(10_000), CFG)  # type: ignore[arg-type]


def test_an_event_that_does_not_apply_names_state_and_event() -> None:
    state = reach(State.BUILD)
    with pytest.raises(
        InvalidEvent, match=r"project 'ant-quic': event TestFinished does not apply in state BUILD"
    ):
        step(state, PASS, at(50), CFG)
    with pytest.raises(InvalidEvent, match="Start does not apply in state SETUP"):
        step(reach(State.SETUP), Start(), at(50), CFG)


def test_test_finish_counts_the_test_and_stamps_last_test_at() -> None:
    state = reach(State.TEST)
    nxt, _ = step(state, FAIL, at(77), CFG)
    assert nxt.counters.test_count == state.counters.test_count + 1
    assert nxt.last_test_at == at(77)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        step(reach(State.IDLE), Start(), datetime(2025, 1, 1))


def test_event_payloads_are_checked() -> None:
    with pytest.raises(ValueError, match="reachable"):
        SetupFinished(11, 10)
    with pytest.raises(ValueError, match="succeeded"):
        DeployFinished(-1, 10)
    with pytest.raises(ValueError, match="max_build_failures"):
        MachineConfig(max_build_failures=0)


# ----------------------------------------------------------------- documents


def test_the_example_state_file_loads_verbatim() -> None:
    doc = json.loads(EXAMPLE_STATE.read_text())
    state = RunState.from_document(doc)
    assert state.project == "ant-quic" and state.state is State.WAIT_1HR and state.phase == "soak"
    assert state.started_at == datetime(2025, 1, 10, 10, 0, tzinfo=UTC)
    assert state.wait_until == datetime(2025, 1, 10, 15, 30, tzinfo=UTC)
    assert state.counters == Counters(fix_attempts=3, build_count=4, deploy_count=4, test_count=5)
    assert [c.sha for c in state.commits] == ["abc123", "def456"]
    assert state.soak_checkpoint == 1  # inferred from WAIT_1HR
    # The loaded state drives on: the wait ends, then a passing test enters WAIT_6HR.
    nxt, _ = step(state, WaitElapsed(), datetime(2025, 1, 10, 15, 30, tzinfo=UTC), CFG)
    nxt, _ = step(nxt, PASS, datetime(2025, 1, 10, 15, 40, tzinfo=UTC), CFG)
    assert nxt.state is State.WAIT_6HR


def test_document_round_trip_keeps_every_field() -> None:
    state = reach(State.RESTART)
    doc = state.to_document()
    assert json.loads(json.dumps(doc)) == doc
    assert RunState.from_document(doc) == state
    assert doc["timestamps"]["started_at"].endswith("Z")
    assert set(doc) == {"project", "state", "phase", "timestamps", "counters", "commits", "machine"}


@pytest.mark.parametrize(
    ("state", "phase", "checkpoint"),
    [
        ("WAIT_6HR", "soak", 2),
        ("COMPLETE", "soak", 2),
        ("TEST", "soak", 1),
        ("TEST", "initial", 0),
        ("FIX", "initial", 0),
    ],
)
def test_missing_machine_fields_are_inferred(state: str, phase: str, checkpoint: int) -> None:
    doc = {
        "project": "p",
        "state": state,
        "phase": phase,
        "timestamps": {"started_at": "2025-01-10T10:00:00Z"},
    }
    if state.startswith("WAIT"):
        doc["timestamps"]["wait_until"] = "2025-01-10T11:00:00Z"  # type: ignore[index]
    assert RunState.from_document(doc).soak_checkpoint == checkpoint


def test_a_stopped_document_without_reason_still_has_one() -> None:
    doc = {"project": "p", "state": "STOPPED", "timestamps": {"started_at": "2025-01-10T10:00:00Z"}}
    assert RunState.from_document(doc).stop_reason


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("project"), "missing 'project'"),
        (lambda d: d.update(state="SLEEPING"), "unknown state 'SLEEPING'"),
        (lambda d: d.update(phase="warm"), "unknown phase"),
        (lambda d: d["timestamps"].pop("wait_until"), "needs 'timestamps.wait_until'"),
        (lambda d: d["timestamps"].update(started_at="yesterday"), "timestamps.started_at"),
        (lambda d: d["counters"].update(build_count=-1), "counters.build_count"),
        (lambda d: d["commits"].append({"sha": "x"}), r"commits\[2\]"),
        (lambda d: d.update(machine={"soak_checkpoint": 5}), "soak_checkpoint"),
    ],
)
def test_bad_documents_raise_state_error_naming_the_field(mutate: object, message: str) -> None:
    doc = json.loads(EXAMPLE_STATE.read_text())
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(StateError, match=message):
        RunState.from_document(doc)


# ----------------------------------------------------------------- resume


def test_resume_effects_follow_checkpoint_and_resume() -> None:
    now = at(10_000)
    assert resume_effects(reach(State.IDLE), now) == ()
    assert resume_effects(reach(State.SETUP), now) == (RunSetup(),)
    assert resume_effects(reach(State.BUILD), now) == (RunBuild(),)
    assert resume_effects(reach(State.DEPLOY), now) == (RunDeploy(),)
    assert resume_effects(reach(State.TEST), now) == (RunTest(0),)
    assert resume_effects(reach(State.FIX), now) == (RunFix(f"tests failed: {FAIL.summary}"),)
    assert resume_effects(reach(State.RESTART), now) == (Restart(),)
    assert resume_effects(reach(State.COMPLETE), now) == ()
    assert resume_effects(reach(State.STOPPED), now) == ()


def test_resume_in_a_wait_waits_for_the_rest_or_goes_straight_on() -> None:
    waiting = reach(State.WAIT_6HR)
    assert waiting.wait_until is not None
    before = waiting.wait_until - timedelta(seconds=1)
    assert resume_effects(waiting, before) == (StartWait(waiting.wait_until, State.WAIT_6HR),)
    assert resume_effects(waiting, waiting.wait_until) == ()
    assert wait_is_over(waiting, waiting.wait_until)
    resumed = RunState.from_document(waiting.to_document())
    nxt, effects = step(resumed, WaitElapsed(), waiting.wait_until, CFG)
    assert nxt.state is State.TEST and effects == (RunTest(2),)


def test_a_test_failure_of_infrastructure_only_stops_instead_of_fixing() -> None:
    infra = TestFinished(False, "n3 unreachable", infrastructure=True)
    state, effects = drive([*TO_TEST, infra])
    assert state.state is State.STOPPED and state.counters.fix_attempts == 0
    assert "infrastructure reasons only" in (state.stop_reason or "")
    assert "n3 unreachable" in (state.stop_reason or "")
    assert not any(isinstance(e, RunFix) for e in effects)
    # The same failure with a software cause goes to FIX.
    state, _ = drive([*TO_TEST, TestFinished(False, "relay rate 40")])
    assert state.state is State.FIX


def test_too_few_live_nodes_stop_the_run_naming_each_node() -> None:
    unhealthy = (("n1", "ssh: connection refused"), ("n2", "service not running"))
    for target in (State.TEST, State.WAIT_1HR, State.FIX, State.BUILD):
        before = reach(target)
        same, effects = step(before, NodesHealth(5, 10, unhealthy), at(9000), CFG)
        assert same == before and effects == ()  # half Live is enough
        stopped, effects = step(before, NodesHealth(4, 10, unhealthy), at(9000), CFG)
        assert stopped.state is State.STOPPED
        assert stopped.stop_reason == (
            "only 4 of 10 nodes live (need at least 50%): "
            "n1 (ssh: connection refused); n2 (service not running)"
        )
        assert kinds(effects) == ["critical"]
    with pytest.raises(InvalidEvent):
        step(reach(State.IDLE), NodesHealth(0, 10), at(1), CFG)


def test_setup_stop_reason_names_the_unreachable_nodes() -> None:
    ev = SetupFinished(4, 10, tuple((f"n{i}", "ssh: timed out") for i in range(6)))
    state, _ = drive([Start(), ev])
    assert state.state is State.STOPPED
    assert all(f"n{i} (ssh: timed out)" in (state.stop_reason or "") for i in range(6))
