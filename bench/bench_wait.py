"""What a runner costs while it waits, and how fast `stop` ends a wait.

A real Runner (instant stand-in stages, a real state store) enters WAIT_1HR for WAIT seconds.
Measured: the process's CPU seconds during the wait, beside a baseline measured in the same run —
a naive wait that polls a stop file every 10 ms for the same time (a "sleep/poll" loop done
eagerly). Then a stop request arrives mid-wait: how long until the runner is STOPPED.

    .venv/bin/python bench/bench_wait.py [--wait 10]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from pytest_vpstest.config import Inventory, Node, ProjectConfig, SoakConfig
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.runner import Runner, StageContext, TestOutcome, request_stop


class InstantStages:
    def setup(self, ctx: StageContext) -> m.SetupFinished:
        return m.SetupFinished(1, 1)

    def build(self, ctx: StageContext) -> m.BuildFinished:
        return m.BuildFinished(True)

    def deploy(self, ctx: StageContext) -> m.DeployFinished:
        return m.DeployFinished(1, 1)

    def test(self, ctx: StageContext, checkpoint: int) -> TestOutcome:
        return TestOutcome(True, "", {"test_results": {"passed": True, "suites": {}}})

    def fix(self, ctx: StageContext, reason: str) -> m.FixFinished:
        return m.FixFinished(None, "not used")

    def restart(self, ctx: StageContext) -> None: ...

    def finish(self, ctx: StageContext) -> None: ...

    def stopped(self, ctx: StageContext, reason: str) -> None: ...


def naive_wait(seconds: float, stop_file: Path) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop_file.exists():
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wait", type=float, default=10.0, help="seconds of WAIT measured (default 10)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp)
        config = ProjectConfig(
            path=None,
            project="bench-wait",
            workspace=state_dir,
            soak=SoakConfig(wait_1hr_seconds=args.wait + 30, wait_6hr_seconds=60),
        )
        inventory = Inventory(nodes=(Node("n1", "127.0.0.1"),))
        runner = Runner(config, inventory, state_dir, stages=InstantStages())
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        def waiting() -> bool:
            return runner.state is not None and runner.state.state == m.State.WAIT_1HR

        while not waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not waiting():
            raise SystemExit("bench_wait: the runner never reached WAIT_1HR")

        cpu0 = time.process_time()
        time.sleep(args.wait)
        runner_cpu = time.process_time() - cpu0

        asked = time.monotonic()
        request_stop(state_dir, "bench-wait")
        thread.join(timeout=30)
        stop_latency = time.monotonic() - asked
        final = runner.state.state if runner.state else None

        cpu0 = time.process_time()
        naive_wait(args.wait, state_dir / "never")
        naive_cpu = time.process_time() - cpu0

    print(f"wait measured: {args.wait:g} s")
    print(f"{'':28}{'CPU s':>8}{'CPU %':>8}")
    print(f"{'runner in WAIT_1HR':28}{runner_cpu:8.3f}{100 * runner_cpu / args.wait:8.2f}")
    print(f"{'baseline: 10 ms file poll':28}{naive_cpu:8.3f}{100 * naive_cpu / args.wait:8.2f}")
    print(f"stop request -> runner {final}: {stop_latency:.2f} s")
    print("(the runner looks for a stop request every 2 s, and at once on SIGTERM)")


if __name__ == "__main__":
    main()
