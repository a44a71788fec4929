"""Property: whatever the stage outcomes and wherever the runner crashes, resuming gives exactly the
transitions an uninterrupted run gives — none repeated, none lost — and keeps every fix commit."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.runner import Runner, StageContext, TestOutcome
from pytest_vpstest.records.store import StateStore
from tests.unit.loop.test_runner import INV, Crash, FakeClock, _config


class Oracle:
    """Scripted outcomes consumed by completed stage calls, shared across runner processes."""

    def __init__(self, builds: list[bool], tests: list[bool], fixes: list[bool],
                 crash_at: int | None) -> None:
        self.builds, self.tests, self.fixes = list(builds), list(tests), list(fixes)
        self.calls = 0
        self.crash_at = crash_at

    def _take(self, seq: list[bool]) -> bool:
        return seq.pop(0) if len(seq) > 1 else seq[0]

    def _call(self) -> None:
        if self.crash_at is not None and self.calls == self.crash_at:
            self.crash_at = None
            raise Crash("crash")
        self.calls += 1


class OracleStages:
    def __init__(self, oracle: Oracle) -> None:
        self.o = oracle

    def setup(self, ctx: StageContext) -> m.SetupFinished:
        self.o._call()
        return m.SetupFinished(2, 2)

    def build(self, ctx: StageContext) -> m.BuildFinished:
        self.o._call()
        return m.BuildFinished(self.o._take(self.o.builds), "err")

    def deploy(self, ctx: StageContext) -> m.DeployFinished:
        self.o._call()
        return m.DeployFinished(2, 2)

    def test(self, ctx: StageContext, checkpoint: int) -> TestOutcome:
        self.o._call()
        ok = self.o._take(self.o.tests)
        return TestOutcome(ok, "", {"test_results": {"passed": ok}})

    def fix(self, ctx: StageContext, reason: str) -> m.FixFinished:
        self.o._call()
        if self.o._take(self.o.fixes):
            n = len(ctx.state.commits) + 1
            return m.FixFinished(m.Commit(f"{n:040x}", f"fix {n}", datetime(2026, 1, 1, tzinfo=UTC)))
        return m.FixFinished(None, "no commit")

    def restart(self, ctx: StageContext) -> None:
        self.o._call()

    def finish(self, ctx: StageContext) -> None:
        self.o._call()

    def stopped(self, ctx: StageContext, reason: str) -> None:
        return None


def _run(state_dir: Path, oracle: Oracle) -> tuple[list[tuple[str, str, str]], dict]:
    clock = FakeClock()
    while True:
        runner = Runner(_config(state_dir), INV, state_dir, stages=OracleStages(oracle), clock=clock,
                        sleeper=clock.sleep, fix_retry_seconds=1)
        try:
            runner.run()
            break
        except Crash:
            continue
    store = StateStore(state_dir, "demo")
    entries = store.transitions()
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    doc = store.load()
    assert doc is not None
    return [(e["from"], e["to"], e["reason"]) for e in entries], doc


outcomes = st.lists(st.booleans(), min_size=1, max_size=6)


@settings(max_examples=20, deadline=None)
@given(builds=outcomes, tests=outcomes, fixes=outcomes, crash_at=st.integers(min_value=0, max_value=25))
def test_resume_after_a_crash_anywhere_equals_an_uninterrupted_run(
    builds: list[bool], tests: list[bool], fixes: list[bool], crash_at: int
) -> None:
    # Keep runs finite: the last scripted outcomes succeed.
    builds, tests, fixes = [*builds, True], [*tests, True], [*fixes, True]
    base = Path(tempfile.mkdtemp(prefix="vpsprop-"))
    try:
        reference, ref_doc = _run(base / "ref", Oracle(builds, tests, fixes, None))
        crashed, doc = _run(base / "crash", Oracle(builds, tests, fixes, crash_at))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert crashed == reference
    assert doc["state"] == ref_doc["state"]
    assert doc["commits"] == ref_doc["commits"]
    # The counters match, plus one for each stage a crash cut off (that run of it counts too).
    expected = dict(ref_doc["counters"])
    for state in doc_resumed(doc):
        key = {"BUILD": "build_count", "DEPLOY": "deploy_count", "TEST": "test_count"}.get(state)
        if key:
            expected[key] += 1
    assert doc["counters"] == expected


def doc_resumed(doc: dict) -> list[str]:
    """The states the runner resumed in, from the document's log."""
    prefix = "resuming demo in "
    return [e["message"][len(prefix):].split(" ")[0] for e in doc.get("logs", [])
            if e["message"].startswith(prefix)]
