"""A real runner process whose stages are stand-ins that take a little time (for crash tests).

    python -m tests.e2e.fake_runner STATE_DIR [--stage-seconds S] [--wait-seconds W] [--project P]
                                    [--health FILE]

Stage outcomes depend only on the recorded state, so a process killed and started again makes the
same decisions: the first TEST fails until a fix commit is recorded; every later TEST passes.

``--health FILE`` tracks the health of nodes n1 and n2 (checked every 0.2 s, Suspect and Evicted
0.3 s apart, 2 respawn attempts): FILE is JSON the test rewrites while the runner runs,
``{"n1": "ok" | "dead" | "down", "respawn": "ok" | "fail"}`` (absent: ok).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from pytest_vpstest.config import HealthConfig, Inventory, Node, ProjectConfig, SoakConfig
from pytest_vpstest.errors import VpsTestError
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.health import NodeCheck
from pytest_vpstest.loop.runner import Runner, StageContext, TestOutcome, child_env


class SlowStages:
    def __init__(self, seconds: float, long_stage: str | None = None) -> None:
        self.seconds = seconds
        self.long_stage = long_stage

    def _work(self, ctx: StageContext, name: str) -> None:
        seconds = 600.0 if name == self.long_stage else self.seconds
        ctx.log(f"{name}: working for {seconds}s")
        ctx.stop.wait(seconds)

    def setup(self, ctx: StageContext) -> m.SetupFinished:
        self._work(ctx, "setup")
        return m.SetupFinished(2, 2)

    def build(self, ctx: StageContext) -> m.BuildFinished:
        self._work(ctx, "build")
        return m.BuildFinished(True)

    def deploy(self, ctx: StageContext) -> m.DeployFinished:
        self._work(ctx, "deploy")
        return m.DeployFinished(2, 2)

    def test(self, ctx: StageContext, checkpoint: int) -> TestOutcome:
        # Like the real TEST stage, run a child process (marked as this project's) meanwhile.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 env={**os.environ, **child_env(ctx.project_dir)}, start_new_session=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            self._work(ctx, f"test{checkpoint}")
        finally:
            child.kill()
            child.wait()
        ok = bool(ctx.state.commits)
        results = {"test_results": {"passed": ok, "suites": {"connectivity": {"relay": {
            "attempts": 4, "success": 4 if ok else 0, "rate": 100.0 if ok else 0.0}}}}}
        return TestOutcome(ok, "" if ok else "relay rate 0.0 (target 100)", results)

    def fix(self, ctx: StageContext, reason: str) -> m.FixFinished:
        self._work(ctx, "fix")
        n = len(ctx.state.commits) + 1
        return m.FixFinished(m.Commit(f"{n:040x}", f"fix {n}", datetime.now(UTC)))

    def restart(self, ctx: StageContext) -> None:
        self._work(ctx, "restart")

    def finish(self, ctx: StageContext) -> None:
        self._work(ctx, "finish")

    def stopped(self, ctx: StageContext, reason: str) -> None:
        ctx.log(f"stopped: {reason}")


class FileChecker:
    """Node checks as the test's JSON file says (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _spec(self) -> dict[str, str]:
        try:
            spec: dict[str, str] = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):  # being rewritten: all good this round
            return {}
        return spec

    def health_targets(self, ctx: StageContext) -> tuple[str, ...]:
        return ("n1", "n2")

    def check_nodes(self, ctx: StageContext, nodes: tuple[str, ...]) -> dict[str, NodeCheck]:
        spec = self._spec()
        looks = {"ok": NodeCheck(True, True), "dead": NodeCheck(True, False, "service agent not running"),
                 "down": NodeCheck(False, False, "ssh: connection refused")}
        return {n: looks[spec.get(n, "ok")] for n in nodes}

    def respawn(self, ctx: StageContext, node: str, *, redeploy: bool) -> str | None:
        return None if self._spec().get("respawn", "ok") == "ok" else "service did not start"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("state_dir")
    p.add_argument("--project", default="crashy")
    p.add_argument("--stage-seconds", type=float, default=0.5)
    p.add_argument("--wait-seconds", type=float, default=1.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--long-stage", help="this stage takes 600 s (interruptible)")
    p.add_argument("--health", type=Path, help="node checks from this JSON file (module docstring)")
    args = p.parse_args(argv)
    cfg = ProjectConfig(path=None, project=args.project, workspace=Path(args.state_dir),
                        soak=SoakConfig(wait_1hr_seconds=args.wait_seconds,
                                        wait_6hr_seconds=args.wait_seconds),
                        health=HealthConfig(check_seconds=0.2, suspect_after_seconds=0.3,
                                            evict_after_seconds=0.3, respawn_attempts=2))
    inv = Inventory(nodes=(Node(name="n1", host="127.0.0.1"), Node(name="n2", host="127.0.0.1")))
    runner = Runner(cfg, inv, Path(args.state_dir), stages=SlowStages(args.stage_seconds, args.long_stage),
                    install_signal_handlers=True, stop_poll_seconds=0.2, fix_retry_seconds=0.2, lease_ttl=5,
                    checker=FileChecker(args.health) if args.health else None)
    try:
        final = runner.run(resume_only=args.resume)
    except VpsTestError as exc:
        print(f"vpstest: error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"final: {final.state}", flush=True)
    return 0 if final.state is m.State.COMPLETE else 1


if __name__ == "__main__":
    sys.exit(main())
