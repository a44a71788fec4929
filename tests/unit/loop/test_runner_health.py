"""Node health in the runner, with fake stages and a fake checker: the liveness machine decides and the
runner acts. A node whose service dies during a WAIT is respawned before the next checkpoint; a node
that is down before TEST is handed to the TEST as unhealthy and the run does not FIX; too few Live
nodes stop the run naming each node; an infrastructure-only failure does not FIX; health changes are
recorded in the state file's ``nodes`` map, as events, and notified."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pytest_vpstest.config import HealthConfig, Inventory, Node, ProjectConfig, SoakConfig
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.health import NodeCheck
from pytest_vpstest.loop.runner import Runner, StageContext, TestOutcome
from pytest_vpstest.records.store import StateStore

from .test_runner import FakeClock, FakeStages

NAMES = tuple(f"n{i}" for i in range(1, 11))
INV = Inventory(nodes=tuple(Node(name=n, host="127.0.0.1") for n in NAMES))


class FakeChecker:
    """Nodes whose SSH is ``down`` fail every check; ``dead`` services run again once respawned."""

    def __init__(self, clock: FakeClock, *, down: set[str] | None = None, dead: set[str] | None = None,
                 respawn_fails: set[str] | None = None) -> None:
        self.clock = clock
        self.down = down or set()
        self.dead = dead or set()
        self.respawn_fails = respawn_fails or set()
        self.respawns: list[str] = []
        self.respawned_after: list[str] = []
        self.calls: list[str] = []  # the stages' calls, to place the respawns in time
        self.rounds = 0

    def health_targets(self, ctx: StageContext) -> tuple[str, ...]:
        return ctx.inventory.names

    def check_nodes(self, ctx: StageContext, nodes: tuple[str, ...]) -> Mapping[str, NodeCheck]:
        self.rounds += 1
        out = {}
        for n in nodes:
            if n in self.down:
                out[n] = NodeCheck(False, False, "ssh: connection refused")
            elif n in self.dead:
                out[n] = NodeCheck(True, False, "service vpstest-demo not running")
            else:
                out[n] = NodeCheck(True, True)
        return out

    def respawn(self, ctx: StageContext, node: str, *, redeploy: bool) -> str | None:
        self.respawns.append(node)
        self.respawned_after.append(self.calls[-1] if self.calls else "")
        if node in self.down or node in self.respawn_fails:
            return "ssh: connection refused"
        self.dead.discard(node)
        return None


class HealthStages(FakeStages):
    """Tests pass unless they touch a node listed in ``failing``; records what each TEST was handed."""

    def __init__(self, *, failing: set[str] | None = None, **kw: Any) -> None:
        super().__init__(tests=[True], **kw)
        self.failing = failing or set()
        self.handed: list[dict[str, str]] = []
        self.on_wait: Any = None

    def test(self, ctx: StageContext, checkpoint: int) -> TestOutcome:
        self._enter(f"test{checkpoint}", ctx)
        unhealthy = dict(ctx.runner.get("unhealthy") or {})
        self.handed.append(unhealthy)
        bad = [n for n in sorted(self.failing) if n not in unhealthy]
        if not bad:
            return TestOutcome(True, "", {"passed": True, "unhealthy": unhealthy})
        return TestOutcome(False, f"{len(bad)} pairs failed", {"passed": False},
                           failed_nodes=tuple(frozenset({n, "n1"}) for n in bad))


def _runner(tmp_path: Path, stages: HealthStages, checker: FakeChecker, clock: FakeClock,
            **soak: Any) -> Runner:
    config = ProjectConfig(
        path=None, project="demo", workspace=tmp_path / "ws",
        soak=SoakConfig(wait_1hr_seconds=300, wait_6hr_seconds=300, **soak),
        health=HealthConfig(check_seconds=30, suspect_after_seconds=30, evict_after_seconds=30,
                            respawn_attempts=2),
    )
    return Runner(config, INV, tmp_path / "state", stages=stages, checker=checker, clock=clock,
                  sleeper=clock.sleep, fix_retry_seconds=1.0)


def _path(tmp_path: Path) -> list[str]:
    return [e["to"] for e in StateStore(tmp_path / "state", "demo").transitions()]


def test_a_service_that_dies_during_wait_is_respawned_before_the_next_checkpoint(tmp_path: Path) -> None:
    clock = FakeClock()
    checker = FakeChecker(clock)
    stages = HealthStages()
    checker.calls = stages.calls
    runner = _runner(tmp_path, stages, checker, clock)
    emitted: list[tuple[str, str]] = []
    original = runner.notifier.emit

    def spy(kind: str, message: str, data: Any = None) -> None:
        emitted.append((kind, message))
        original(kind, message, data)

    runner.notifier.emit = spy  # type: ignore[method-assign]

    def kill_n3(name: str, ctx: StageContext) -> None:
        if name == "test0":
            checker.dead.add("n3")  # the agent dies after the first checkpoint

    stages.hook = kill_n3
    final = runner.run()
    assert final.state is m.State.COMPLETE
    assert checker.respawns == ["n3"]
    # Every checkpoint after the respawn had all ten nodes.
    assert stages.handed[1:] == [{}, {}]
    doc = StateStore(tmp_path / "state", "demo").load()
    assert doc is not None
    assert doc["nodes"]["n3"]["health"] == "Live" and doc["nodes"]["n3"]["respawns"] == 1
    changes = [(e["from"], e["to"]) for e in doc["runner"]["health_events"] if e["node"] == "n3"]
    assert changes == [("Provisioning", "Live"), ("Live", "Suspect"), ("Suspect", "Evicted"),
                       ("Evicted", "Respawning"), ("Respawning", "Provisioning"), ("Provisioning", "Live")]
    assert any(kind == "node_health" and "n3 Live -> Suspect" in text for kind, text in emitted)
    # The respawn happened during the wait, between the checkpoints, not at the next one.
    assert checker.respawned_after == ["test0"]


def test_a_node_down_before_the_run_is_left_out_and_the_loop_does_not_fix(tmp_path: Path) -> None:
    clock = FakeClock()
    checker = FakeChecker(clock, down={"n8"})
    # n8's pairs would fail if they were tested.
    stages = HealthStages(failing={"n8"})
    final = _runner(tmp_path, stages, checker, clock, wait_1hr=False, wait_6hr=False).run()
    assert final.state is m.State.COMPLETE
    assert "FIX" not in _path(tmp_path)
    assert set(stages.handed[0]) == {"n8"}
    assert "ssh: connection refused" in stages.handed[0]["n8"]
    doc = StateStore(tmp_path / "state", "demo").load()
    assert doc is not None and doc["nodes"]["n8"]["health"] != "Live"


def test_six_of_ten_down_stops_the_run_naming_each_node(tmp_path: Path) -> None:
    clock = FakeClock()
    down = {"n2", "n3", "n5", "n6", "n8", "n9"}
    checker = FakeChecker(clock, down=down)
    stages = HealthStages()
    final = _runner(tmp_path, stages, checker, clock).run()
    assert final.state is m.State.STOPPED
    assert "test0" not in stages.calls
    reason = final.stop_reason or ""
    assert reason.startswith("only 4 of 10 nodes live")
    for n in down:
        assert f"{n} (provisioning: ssh: connection refused)" in reason
    assert "FIX" not in _path(tmp_path)


def test_too_few_live_nodes_during_wait_stop_the_run(tmp_path: Path) -> None:
    clock = FakeClock()
    checker = FakeChecker(clock, respawn_fails={"n1", "n2", "n3", "n4", "n5", "n6"})
    stages = HealthStages()

    def break_six(name: str, ctx: StageContext) -> None:
        if name == "test0":
            checker.dead |= {"n1", "n2", "n3", "n4", "n5", "n6"}

    stages.hook = break_six
    final = _runner(tmp_path, stages, checker, clock).run()
    assert final.state is m.State.STOPPED
    assert _path(tmp_path)[-2:] == ["WAIT_1HR", "STOPPED"]
    assert "only 4 of 10 nodes live" in (final.stop_reason or "")
    assert stages.calls.count("test1") == 0


def test_a_failure_whose_every_test_touches_a_node_gone_bad_does_not_fix(tmp_path: Path) -> None:
    clock = FakeClock()
    checker = FakeChecker(clock)
    stages = HealthStages(failing={"n5"})

    def n5_goes_down(name: str, ctx: StageContext) -> None:
        if name == "test0":
            checker.down.add("n5")  # during the TEST: the runner's check after it finds it

    stages.hook = n5_goes_down
    final = _runner(tmp_path, stages, checker, clock).run()
    assert final.state is m.State.STOPPED
    assert "FIX" not in _path(tmp_path)
    assert "infrastructure reasons only" in (final.stop_reason or "")


def test_a_software_failure_still_fixes_and_fixing_is_bounded(tmp_path: Path) -> None:
    clock = FakeClock()
    checker = FakeChecker(clock)
    stages = HealthStages(failing={"n5"}, fixes=[False])
    final = _runner(tmp_path, stages, checker, clock).run()
    assert final.state is m.State.STOPPED
    assert stages.calls.count("fix") == 5
    assert (final.stop_reason or "").startswith("no fix committed after 5 attempts")


def test_status_shows_each_nodes_health_in_text_and_json(tmp_path: Path, capsys: Any) -> None:
    import json

    from pytest_vpstest import cli

    clock = FakeClock()
    checker = FakeChecker(clock, down={"n8"})
    final = _runner(tmp_path, HealthStages(), checker, clock, wait_1hr=False, wait_6hr=False).run()
    assert final.state is m.State.COMPLETE
    capsys.readouterr()
    assert cli.main(["status", "--json", "--state-dir", str(tmp_path / "state")]) == 0
    row = json.loads(capsys.readouterr().out)["projects"][0]
    assert row["nodes"]["n1"]["health"] == "Live"
    assert row["nodes"]["n8"]["health"] == "Provisioning"
    assert "ssh: connection refused" in row["nodes"]["n8"]["health_reason"]
    assert cli.main(["status", "--state-dir", str(tmp_path / "state")]) == 0
    text = capsys.readouterr().out
    assert "nodes: 9/10 live" in text
    assert "n8: Provisioning (provisioning: ssh: connection refused)" in text


def test_an_agent_that_died_during_test_is_infrastructure_even_when_the_check_after_it_respawns_it(
    tmp_path: Path,
) -> None:
    """Found by the burn-in: the round after the TEST evicts and respawns the dead agent at once, so the
    node is Live again when the failure is judged; it was still the node's fault."""
    clock = FakeClock()
    checker = FakeChecker(clock)
    stages = HealthStages(failing={"n5"})

    def n5_dies(name: str, ctx: StageContext) -> None:
        if name == "test0":
            checker.dead.add("n5")
            clock.now += timedelta(seconds=120)  # a long TEST: the round after it evicts n5 at once

    stages.hook = n5_dies
    final = _runner(tmp_path, stages, checker, clock).run()
    assert checker.respawns == ["n5"]
    assert "FIX" not in _path(tmp_path)
    assert final.state is m.State.STOPPED
    assert "infrastructure reasons only" in (final.stop_reason or "")
