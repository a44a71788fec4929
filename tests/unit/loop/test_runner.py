"""The runner with fake stage functions: every state is reached, the state is committed after every
transition, waits are interrupted by a stop, three build failures stop the run, a failing fixer is
retried, a second runner on the same project is refused, and a run that crashes in any state
resumes without repeating or losing a transition."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.config import Inventory, Node, ProjectConfig, SoakConfig
from pytest_vpstest.errors import LeaseHeldError, StateError
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.runner import Runner, StageContext, TestOutcome, request_stop
from pytest_vpstest.records.store import StateStore

FULL_PATH = ["SETUP", "BUILD", "DEPLOY", "TEST", "FIX", "BUILD", "DEPLOY", "TEST", "WAIT_1HR", "TEST",
             "WAIT_6HR", "TEST", "COMPLETE"]


class Crash(BaseException):
    """Stands in for the process dying in the middle of a stage."""


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        self.now += timedelta(seconds=seconds)
        return stop.is_set()


class FakeStages:
    """Scripted outcomes; each list is consumed in order, the last value repeats."""

    def __init__(self, *, tests: list[bool] | None = None, builds: list[bool] | None = None,
                 fixes: list[bool] | None = None, crash_in: str | None = None,
                 hook: Callable[[str, StageContext], None] | None = None) -> None:
        self.tests = tests or [False, True]
        self.builds = builds or [True]
        self.fixes = fixes or [True]
        self.calls: list[str] = []
        self.crash_in = crash_in
        self.hook = hook
        self.n_fix = 0

    def _next(self, seq: list[bool]) -> bool:
        return seq.pop(0) if len(seq) > 1 else seq[0]

    def _enter(self, name: str, ctx: StageContext) -> None:
        self.calls.append(name)
        if self.hook:
            self.hook(name, ctx)
        if self.crash_in == name:
            self.crash_in = None
            raise Crash(name)

    def setup(self, ctx: StageContext) -> m.SetupFinished:
        self._enter("setup", ctx)
        ctx.document.setdefault("nodes", {})["n1"] = {"status": "online"}
        return m.SetupFinished(len(ctx.inventory.nodes), len(ctx.inventory.nodes))

    def build(self, ctx: StageContext) -> m.BuildFinished:
        self._enter("build", ctx)
        ok = self._next(self.builds)
        return m.BuildFinished(ok, None if ok else "error[E0308]: mismatched types")

    def deploy(self, ctx: StageContext) -> m.DeployFinished:
        self._enter("deploy", ctx)
        return m.DeployFinished(2, 2)

    def test(self, ctx: StageContext, checkpoint: int) -> TestOutcome:
        self._enter(f"test{checkpoint}", ctx)
        ok = self._next(self.tests)
        results = {"passed": ok, "test_results": {"passed": ok, "suites": {"connectivity": {
            "relay": {"attempts": 4, "success": 4 if ok else 0, "rate": 100.0 if ok else 0.0}}}}}
        return TestOutcome(ok, "" if ok else "relay rate 0 < 100", results)

    def fix(self, ctx: StageContext, reason: str) -> m.FixFinished:
        self._enter("fix", ctx)
        self.n_fix += 1
        if self._next(self.fixes):
            return m.FixFinished(m.Commit(f"{self.n_fix:040x}", f"fix {self.n_fix}", datetime.now(UTC)))
        return m.FixFinished(None, "fixer exited 1")

    def restart(self, ctx: StageContext) -> None:
        self._enter("restart", ctx)

    def finish(self, ctx: StageContext) -> None:
        self._enter("finish", ctx)

    def stopped(self, ctx: StageContext, reason: str) -> None:
        self.calls.append(f"stopped:{reason}")


def _config(tmp_path: Path, **soak: Any) -> ProjectConfig:
    return ProjectConfig(path=None, project="demo", workspace=tmp_path / "ws",
                         soak=SoakConfig(wait_1hr_seconds=soak.get("w1", 60),
                                         wait_6hr_seconds=soak.get("w6", 120)))


INV = Inventory(nodes=(Node(name="n1", host="127.0.0.1"), Node(name="n2", host="127.0.0.1")))


def _runner(tmp_path: Path, stages: FakeStages, clock: FakeClock | None = None, **kw: Any) -> Runner:
    clock = clock or FakeClock()
    return Runner(_config(tmp_path, **kw.pop("soak", {})), INV, tmp_path / "state", stages=stages,
                  clock=clock, sleeper=clock.sleep, fix_retry_seconds=kw.pop("fix_retry_seconds", 1.0), **kw)


def _path(tmp_path: Path) -> list[str]:
    entries = StateStore(tmp_path / "state", "demo").transitions()
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert len({e["id"] for e in entries}) == len(entries)
    for a, b in itertools.pairwise(entries):
        # No transition repeated, none lost; a new run after a finished one starts at IDLE.
        assert a["to"] == b["from"] or (a["to"] in ("COMPLETE", "STOPPED") and b["from"] == "IDLE")
    return [e["to"] for e in entries]


def test_full_loop_with_one_fix(tmp_path: Path) -> None:
    stages = FakeStages(tests=[False, True])
    final = _runner(tmp_path, stages).run()
    assert final.state is m.State.COMPLETE
    assert _path(tmp_path) == FULL_PATH
    assert stages.calls == ["setup", "build", "deploy", "test0", "fix", "build", "deploy", "test0", "test1",
                            "test2", "finish"]
    doc = StateStore(tmp_path / "state", "demo").load()
    assert doc is not None
    assert doc["state"] == "COMPLETE"
    assert doc["counters"] == {"fix_attempts": 1, "build_count": 2, "deploy_count": 2, "test_count": 4}
    assert [c["message"] for c in doc["commits"]] == ["fix 1"]
    assert doc["test_results"]["suites"]["connectivity"]["relay"]["rate"] == 100.0
    assert [c["checkpoint"] for c in doc["runner"]["checkpoints"]] == [0, 0, 1, 2]
    assert doc["nodes"]["n1"]["status"] == "online"
    assert any("SETUP -> BUILD" in entry["message"] for entry in doc["logs"])
    log = (tmp_path / "state" / "demo" / "runner.log").read_text()
    for kind in ("loop_start", "first_failure", "fix_committed", "wait_1hr", "wait_6hr", "complete"):
        assert f"notify[{kind}]" in log
    assert "notify[transition] demo: TEST -> COMPLETE" in log


def test_every_transition_is_committed_before_the_next_stage(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def hook(name: str, ctx: StageContext) -> None:
        doc = StateStore(tmp_path / "state", "demo").load()
        assert doc is not None
        seen.append((name, doc["state"]))

    _runner(tmp_path, FakeStages(tests=[True], hook=hook)).run()
    assert seen == [("setup", "SETUP"), ("build", "BUILD"), ("deploy", "DEPLOY"), ("test0", "TEST"),
                    ("test1", "TEST"), ("test2", "TEST"), ("finish", "COMPLETE")]


def test_build_failing_three_times_stops(tmp_path: Path) -> None:
    stages = FakeStages(builds=[False], fixes=[True])
    final = _runner(tmp_path, stages).run()
    assert final.state is m.State.STOPPED
    assert final.stop_reason is not None and "build failed 3 times in a row" in final.stop_reason
    assert _path(tmp_path) == ["SETUP", "BUILD", "FIX", "BUILD", "FIX", "BUILD", "STOPPED"]
    assert "notify[critical]" in (tmp_path / "state" / "demo" / "runner.log").read_text()


def test_failing_fixer_is_retried_after_a_pause(tmp_path: Path) -> None:
    clock = FakeClock()
    stages = FakeStages(tests=[False, True], fixes=[False, False, True])
    final = _runner(tmp_path, stages, clock, fix_retry_seconds=30).run()
    assert final.state is m.State.COMPLETE
    assert final.counters.fix_attempts == 3
    assert stages.calls.count("fix") == 3
    assert _path(tmp_path) == FULL_PATH  # failed attempts are not transitions
    log = (tmp_path / "state" / "demo" / "runner.log").read_text()
    assert log.count("fix attempt failed: fixer exited 1") == 2
    assert "trying again in 30s" in log


def test_soak_regression_restarts_from_setup(tmp_path: Path) -> None:
    stages = FakeStages(tests=[True, False, True])
    final = _runner(tmp_path, stages).run()
    assert final.state is m.State.COMPLETE
    assert _path(tmp_path) == ["SETUP", "BUILD", "DEPLOY", "TEST", "WAIT_1HR", "TEST", "RESTART", "SETUP",
                               "BUILD", "DEPLOY", "TEST", "WAIT_1HR", "TEST", "WAIT_6HR", "TEST", "COMPLETE"]
    assert "restart" in stages.calls


def test_wait_is_interrupted_promptly_by_a_stop_request(tmp_path: Path) -> None:
    stages = FakeStages(tests=[True])
    runner = Runner(_config(tmp_path, w1=3600), INV, tmp_path / "state", stages=stages,
                    stop_poll_seconds=0.1)
    result: list[m.RunState] = []
    t = threading.Thread(target=lambda: result.append(runner.run()))
    t.start()
    for _ in range(200):
        doc = StateStore(tmp_path / "state", "demo").load()
        if doc and doc["state"] == "WAIT_1HR":
            break
        time.sleep(0.05)
    t0 = time.monotonic()
    request_stop(tmp_path / "state", "demo")
    t.join(timeout=10)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 60  # not the hour the wait would last
    assert result[0].state is m.State.STOPPED and result[0].stop_reason == "user stop"
    assert _path(tmp_path)[-2:] == ["WAIT_1HR", "STOPPED"]
    assert not (tmp_path / "state" / "demo" / "stop.request").exists()
    assert "stopped:user stop" in stages.calls


def test_stop_during_a_stage_discards_its_result_and_stops(tmp_path: Path) -> None:
    holder: list[Runner] = []
    stages = FakeStages(hook=lambda name, ctx: holder[0].request_stop() if name == "deploy" else None)
    runner = _runner(tmp_path, stages)
    holder.append(runner)
    final = runner.run()
    assert final.state is m.State.STOPPED and final.stop_reason == "user stop"
    assert _path(tmp_path) == ["SETUP", "BUILD", "DEPLOY", "STOPPED"]


def test_second_runner_on_the_same_project_is_refused(tmp_path: Path) -> None:
    first = Runner(_config(tmp_path, w1=3600), INV, tmp_path / "state", stages=FakeStages(tests=[True]),
                   stop_poll_seconds=0.1)
    t = threading.Thread(target=first.run)
    t.start()
    try:
        for _ in range(200):
            if (tmp_path / "state" / "demo" / "runner.pid").exists():
                break
            time.sleep(0.05)
        second = Runner(_config(tmp_path), INV, tmp_path / "state", stages=FakeStages())
        with pytest.raises(LeaseHeldError, match="already being run by pid"):
            second.run()
    finally:
        first.request_stop()
        t.join(timeout=10)
    assert not t.is_alive()


@pytest.mark.parametrize("crash_in", ["setup", "build", "deploy", "test0", "fix", "test1", "test2", "finish"])
def test_resume_after_a_crash_in_each_state(tmp_path: Path, crash_in: str) -> None:
    clock = FakeClock()
    with pytest.raises(Crash):
        _runner(tmp_path, FakeStages(tests=[False, True], crash_in=crash_in), clock).run()
    before = _path(tmp_path)
    stages = FakeStages(tests=[False, True] if crash_in in ("setup", "build", "deploy", "test0") else [True])
    final = _runner(tmp_path, stages, clock).run(resume_only=True)
    assert final.state is m.State.COMPLETE
    after = _path(tmp_path)
    assert after[: len(before)] == before
    assert after == FULL_PATH
    # The resumed runner went on with the stage it crashed in, not from the start.
    assert stages.calls[0] == crash_in
    doc = StateStore(tmp_path / "state", "demo").load()
    assert doc is not None and doc["runner"]["finished"]
    assert len(doc["commits"]) == 1


def test_resume_in_a_wait_whose_time_has_passed_goes_straight_on(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(Crash):
        _runner(tmp_path, FakeStages(tests=[True], crash_in="test1"), clock).run()
    # Crashed in the soak TEST: rewrite time so the resumed runner finds WAIT_1HR already over.
    clock.now += timedelta(hours=2)
    stages = FakeStages(tests=[True])
    final = _runner(tmp_path, stages, clock).run(resume_only=True)
    assert final.state is m.State.COMPLETE
    assert stages.calls[0] == "test1"
    assert _path(tmp_path) == ["SETUP", "BUILD", "DEPLOY", "TEST", "WAIT_1HR", "TEST", "WAIT_6HR", "TEST",
                               "COMPLETE"]


def test_resume_only_without_state_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no state file to resume"):
        _runner(tmp_path, FakeStages()).run(resume_only=True)


def test_a_finished_run_starts_anew(tmp_path: Path) -> None:
    _runner(tmp_path, FakeStages(tests=[True])).run()
    with pytest.raises(StateError, match="nothing to resume"):
        _runner(tmp_path, FakeStages()).run(resume_only=True)
    final = _runner(tmp_path, FakeStages(tests=[True])).run()
    assert final.state is m.State.COMPLETE
    assert _path(tmp_path).count("COMPLETE") == 2


def test_stage_crash_is_a_critical_stop_not_a_traceback(tmp_path: Path) -> None:
    class Broken(FakeStages):
        def deploy(self, ctx: StageContext) -> m.DeployFinished:
            raise RuntimeError("disk on fire")

    final = _runner(tmp_path, Broken()).run()
    assert final.state is m.State.STOPPED
    assert final.stop_reason == "DEPLOY stage crashed: RuntimeError: disk on fire"


def test_two_projects_run_at_once(tmp_path: Path) -> None:
    results: dict[str, m.RunState] = {}

    def run(name: str) -> None:
        cfg = ProjectConfig(path=None, project=name, workspace=tmp_path,
                            soak=SoakConfig(wait_1hr_seconds=0.2, wait_6hr_seconds=0.2))
        results[name] = Runner(cfg, INV, tmp_path / "state", stages=FakeStages(tests=[False, True])).run()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert {k: v.state for k, v in results.items()} == {"alpha": m.State.COMPLETE, "beta": m.State.COMPLETE}
    for name in ("alpha", "beta"):
        assert [e["to"] for e in StateStore(tmp_path / "state", name).transitions()] == FULL_PATH


def test_webhook_and_dashboard_down_during_the_run_get_everything_later(tmp_path: Path) -> None:
    from pytest_vpstest.config import ChannelConfig, NotifyConfig
    from pytest_vpstest.loop.notify import Notifier, build_channels
    from tests.unit.loop.test_notify import Receiver

    hook, dash = Receiver(), Receiver()
    hook.start()
    dash.start()
    hook.stop()  # both endpoints are down for the whole run
    dash.stop()
    cfg = ProjectConfig(path=None, project="demo", workspace=tmp_path,
                        soak=SoakConfig(wait_1hr_seconds=1, wait_6hr_seconds=1),
                        notify=NotifyConfig(
                            channels=(ChannelConfig(kind="webhook", url=hook.url, timeout_seconds=1),),
                            dashboard_url=dash.url))
    clock = FakeClock()
    final = Runner(cfg, INV, tmp_path / "state", stages=FakeStages(tests=[False, True]), clock=clock,
                   sleeper=clock.sleep).run()
    assert final.state is m.State.COMPLETE
    hook.start()
    dash.start()
    try:
        later = Notifier(tmp_path / "state" / "demo" / "outbox", "demo", build_channels(cfg.notify, print))
        assert later.flush()
    finally:
        hook.stop()
        dash.stop()
    transitions = [e["data"]["to"] for e in dash.received if e["kind"] == "transition"]
    assert transitions == FULL_PATH
    seqs = [e["seq"] for e in dash.received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [e["kind"] for e in hook.received] == ["loop_start", "first_failure", "fix_committed", "wait_1hr",
                                                  "wait_6hr", "complete"]


def test_a_resumed_runner_ends_children_left_by_its_crashed_predecessor(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from pytest_vpstest.loop.runner import child_env, reap_orphans

    project_dir = tmp_path / "state" / "demo"
    project_dir.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              env={**os.environ, **child_env(project_dir)}, start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 env={**os.environ, **child_env(tmp_path / "other")}, start_new_session=True)
    try:
        time.sleep(0.2)  # let the children exec
        assert reap_orphans(project_dir) == [orphan.pid]
        assert orphan.wait(timeout=10) != 0
        assert bystander.poll() is None  # another project's child is left alone
    finally:
        for p in (orphan, bystander):
            if p.poll() is None:
                p.kill()
            p.wait()
