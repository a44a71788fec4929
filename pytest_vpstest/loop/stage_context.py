"""The seam between the runner and its stages: what a stage gets, what the TEST stage returns, and
the ``Stages`` protocol the runner calls.

``loop.runner`` drives any ``Stages``; ``loop.stages.FleetStages`` is the real one and unit tests pass
fakes. Both sides import this module and neither needs the other's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pytest_vpstest.config import Inventory, ProjectConfig
from pytest_vpstest.loop import machine as m

__all__ = [
    "CHILD_MARKER", "StageContext", "Stages", "TestOutcome", "child_env", "iso", "machine_config", "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """``dt`` in UTC as the state file writes times: ``2026-01-26T01:02:03Z``."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Set in the environment of every long-running child (pytest, fixer, verification) so a runner
# resumed after a crash can find and end the children its dead predecessor left behind.
CHILD_MARKER = "VPSTEST_RUNNER_PROJECT_DIR"


def child_env(project_dir: Path) -> dict[str, str]:
    return {CHILD_MARKER: str(project_dir.resolve())}


@dataclass
class TestOutcome:
    """What the TEST stage returns: the verdict plus the results document to merge."""

    __test__ = False  # not a pytest test class

    passed: bool
    summary: str = ""
    results: Mapping[str, Any] | None = None
    results_path: Path | None = None
    # Nodes of the tests that failed (every failed test's nodes; empty when unknown).
    failed_nodes: tuple[frozenset[str], ...] = ()


@dataclass
class StageContext:
    """What a stage function gets: the run's configuration, its directories and its services."""

    config: ProjectConfig
    inventory: Inventory
    state_dir: Path
    project_dir: Path
    stop: threading.Event
    log: Callable[[str], None]
    state: m.RunState
    # The runner's own section of the state document (artifact, fix base, last results, ...).
    runner: dict[str, Any] = field(default_factory=dict)
    document: dict[str, Any] = field(default_factory=dict)
    token: int = 0
    # Persist the document now (no transition): for stages that must record something before
    # a long step (the FIX stage's base commit), so a crash cannot lose it.
    save: Callable[[], None] = lambda: None


class Stages(Protocol):
    """The stage functions the runner calls; each returns the event that answers its effect."""

    def setup(self, ctx: StageContext) -> m.SetupFinished: ...

    def build(self, ctx: StageContext) -> m.BuildFinished: ...

    def deploy(self, ctx: StageContext) -> m.DeployFinished: ...

    def test(self, ctx: StageContext, checkpoint: int) -> TestOutcome: ...

    def fix(self, ctx: StageContext, reason: str) -> m.FixFinished: ...

    def restart(self, ctx: StageContext) -> None: ...

    def finish(self, ctx: StageContext) -> None: ...

    def stopped(self, ctx: StageContext, reason: str) -> None: ...


def machine_config(config: ProjectConfig) -> m.MachineConfig:
    """The machine's knobs from the project config (waits, build and fix limits, live nodes needed)."""
    build_limit = config.build.max_consecutive_failures if config.build is not None else 3
    return m.MachineConfig(
        wait_1hr_seconds=config.soak.wait_1hr_seconds,
        wait_6hr_seconds=config.soak.wait_6hr_seconds,
        wait_1hr=config.soak.wait_1hr,
        wait_6hr=config.soak.wait_6hr,
        max_build_failures=max(1, build_limit),
        max_fix_attempts=config.fix.max_attempts,
        min_live_fraction=config.health.min_live_fraction,
    )
