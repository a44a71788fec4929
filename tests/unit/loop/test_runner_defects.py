"""Defects a burn-in found in the runner, each pinned by a test that failed before its fix:

* a kill during COMPLETE lost the ``complete`` notification (the resumed runner ran only the final step);
* a damaged state file of a finished run made ``--resume`` redo the final step (recovered from the
  transitions log, whose last snapshot predates it) instead of saying there is nothing to resume;
* the BUILD child lacked the marker a resumed runner finds orphans by.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pytest_vpstest.config import BuildConfig, ProjectConfig
from pytest_vpstest.errors import StateError
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.runner import StageContext, reap_orphans

from .test_runner import INV, Crash, FakeClock, FakeStages, _runner


def _complete_events(tmp_path: Path) -> list[str]:
    log = (tmp_path / "state" / "demo" / "runner.log").read_text()
    return [line for line in log.splitlines() if "notify[complete]" in line]


def test_a_kill_during_complete_still_sends_the_complete_notification_once(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(Crash):
        _runner(tmp_path, FakeStages(tests=[True], crash_in="finish"), clock).run()
    assert _complete_events(tmp_path) == []  # cut off by the crash
    stages = FakeStages(tests=[True])
    final = _runner(tmp_path, stages, clock).run(resume_only=True)
    assert final.state is m.State.COMPLETE and stages.calls == ["finish"]
    assert len(_complete_events(tmp_path)) == 1
    # Resuming again finds nothing to do and sends nothing more.
    with pytest.raises(StateError, match="nothing to resume"):
        _runner(tmp_path, FakeStages(), clock).run(resume_only=True)
    assert len(_complete_events(tmp_path)) == 1


def test_a_damaged_state_file_of_a_finished_run_has_nothing_to_resume(tmp_path: Path) -> None:
    clock = FakeClock()
    first = FakeStages(tests=[True])
    assert _runner(tmp_path, first, clock).run().state is m.State.COMPLETE
    assert first.calls.count("finish") == 1
    state_file = tmp_path / "state" / "demo" / "state.json"
    state_file.write_text(state_file.read_text()[:40])  # damaged: the store falls back to the log
    again = FakeStages(tests=[True])
    with pytest.raises(StateError, match="nothing to resume"):
        _runner(tmp_path, again, clock).run(resume_only=True)
    assert again.calls == []  # no final step redone, no node contacted


def test_the_build_child_carries_the_marker_a_resumed_runner_reaps_by(tmp_path: Path) -> None:
    from pytest_vpstest.loop.stages import FleetStages

    ws = tmp_path / "ws"
    ws.mkdir()
    started = ws / "started"
    config = ProjectConfig(path=None, project="demo", workspace=ws,
                           build=BuildConfig(command=f"touch {started}; sleep 60", timeout_seconds=120))
    project_dir = tmp_path / "state" / "demo"
    project_dir.mkdir(parents=True)
    ctx = StageContext(config=config, inventory=INV, state_dir=tmp_path / "state", project_dir=project_dir,
                       stop=threading.Event(), log=lambda _line: None,
                       state=m.initial_state("demo", FakeClock()()))
    result: list[m.BuildFinished] = []
    builder = threading.Thread(target=lambda: result.append(FleetStages().build(ctx)), daemon=True)
    builder.start()
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the build never started"
    # What a runner resumed after a crash does first: end the children of its dead predecessor.
    reaped = reap_orphans(project_dir, grace_seconds=5)
    assert reaped, "the build child was not found by its marker"
    assert all(pid != os.getpid() for pid in reaped)
    builder.join(30)
    assert result and not result[0].ok


def test_webhook_and_dashboard_credentials_never_reach_a_file(tmp_path: Path) -> None:
    """Planted secrets in the notification URLs; the receivers are down, so delivery fails and is logged.
    No file the run writes (runner.log, the state file, the transitions log, the outbox) holds them."""
    from pytest_vpstest.config import ChannelConfig, NotifyConfig, SoakConfig
    from pytest_vpstest.loop.runner import Runner
    from tests.unit.loop.test_notify import Receiver

    hook, dash = Receiver(), Receiver()
    hook.start()
    dash.start()
    hook.stop()
    dash.stop()
    secrets = ("hunter2pw", "tok3nvalue", "dashpassw0rd", "apik3yvalue")
    hook_url = hook.url.replace("http://", "http://alice:hunter2pw@") + "?token=tok3nvalue&room=ops"
    dash_url = dash.url.replace("http://", "http://ops:dashpassw0rd@") + "?api_key=apik3yvalue"
    cfg = ProjectConfig(path=None, project="demo", workspace=tmp_path,
                        soak=SoakConfig(wait_1hr_seconds=1, wait_6hr_seconds=1),
                        notify=NotifyConfig(
                            channels=(ChannelConfig(kind="webhook", url=hook_url, timeout_seconds=1),),
                            dashboard_url=dash_url))
    clock = FakeClock()
    final = Runner(cfg, INV, tmp_path / "state", stages=FakeStages(tests=[True]), clock=clock,
                   sleeper=clock.sleep).run()
    assert final.state is m.State.COMPLETE
    log = (tmp_path / "state" / "demo" / "runner.log").read_text()
    assert "failed" in log and "***" in log  # the failures were logged, with the URL redacted
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"{secret} written to {path}"


@pytest.mark.parametrize(("crash_in", "counter"), [("build", "build_count"), ("deploy", "deploy_count"),
                                                   ("test1", "test_count")])
def test_a_stage_cut_off_by_a_crash_is_counted(tmp_path: Path, crash_in: str, counter: str) -> None:
    clock = FakeClock()
    uninterrupted = tmp_path / "plain"
    _runner(uninterrupted, FakeStages(tests=[True]), FakeClock()).run()
    expected = _counters(uninterrupted)[counter] + 1  # the same run plus the one the crash cut off
    with pytest.raises(Crash):
        _runner(tmp_path, FakeStages(tests=[True], crash_in=crash_in), clock).run()
    final = _runner(tmp_path, FakeStages(tests=[True]), clock).run(resume_only=True)
    assert final.state is m.State.COMPLETE
    assert _counters(tmp_path)[counter] == expected


def _counters(tmp_path: Path) -> dict[str, int]:
    from pytest_vpstest.records.store import StateStore

    doc = StateStore(tmp_path / "state", "demo").load()
    assert doc is not None
    return dict(doc["counters"])
