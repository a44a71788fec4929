"""The runner: carries out the state machine's effects until the run is COMPLETE or STOPPED.

``Runner.run()``:

1. takes the project's single-writer lease (``StateStore.acquire``; a second runner gets
   ``LeaseHeldError`` naming the holder) and renews it from a heartbeat thread;
2. loads the state file: none (or a finished run) → a new run from IDLE with ``Start``; an
   unfinished one → resume with ``machine.resume_effects`` (a WAIT whose time has passed goes on
   at once; BUILD/DEPLOY/TEST run again; FIX continues), never repeating a recorded transition;
3. executes effects in order. Each ``Run*`` effect calls a stage function (``Stages``) that
   returns the answering event; the event goes through ``machine.step``; the new document is
   committed (with a transition record when the state changed) **before** the next effect runs;
   the transition is also sent to the notifier's outbox (log, dashboard) and ``runner.log``;
4. waits (WAIT_1HR/WAIT_6HR, the pause between fix attempts) sleep on a ``threading.Event`` that a
   stop request (SIGTERM / SIGINT, or ``stop.request`` written by ``vpstest stop``) sets — no busy
   polling; a stop ends the run as STOPPED with reason "user stop" at the next safe point.

Stages are a seam: unit tests pass fake stage functions; ``FleetStages`` (below) does the real
work over SSH with the build, deploy, pytest-plugin and fixer modules.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import signal
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from pytest_vpstest import machine as m
from pytest_vpstest._proc import pid_alive
from pytest_vpstest.config import Inventory, ProjectConfig
from pytest_vpstest.errors import StaleLeaseError, StateError, VpsTestError
from pytest_vpstest.notify import Notifier, build_channels
from pytest_vpstest.store import Lease, StateStore

__all__ = [
    "CHILD_MARKER",
    "LOG_LIMIT",
    "Runner",
    "StageContext",
    "Stages",
    "TestOutcome",
    "child_env",
    "machine_config",
    "project_dir",
    "read_stop_request",
    "reap_orphans",
    "request_stop",
    "utcnow",
]

# The state document's ``logs`` list keeps this many recent entries (runner.log keeps everything).
LOG_LIMIT = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def project_dir(state_dir: Path, project: str) -> Path:
    return Path(state_dir) / project


def request_stop(state_dir: Path, project: str, reason: str = "user stop") -> Path:
    """Write ``stop.request`` for the project's runner (read at its next safe point)."""
    d = project_dir(state_dir, project)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "stop.request"
    tmp = d / ".stop.request.tmp"
    tmp.write_text(json.dumps({"reason": reason, "time": _iso(utcnow()), "pid": os.getpid()}) + "\n")
    os.replace(tmp, path)
    return path


def read_stop_request(state_dir: Path, project: str) -> str | None:
    path = project_dir(state_dir, project) / "stop.request"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "user stop"
    return str(doc.get("reason") or "user stop")


# Set in the environment of every long-running child (pytest, fixer, verification) so a runner
# resumed after a crash can find and end the children its dead predecessor left behind.
CHILD_MARKER = "VPSTEST_RUNNER_PROJECT_DIR"


def child_env(project_dir: Path) -> dict[str, str]:
    return {CHILD_MARKER: str(project_dir.resolve())}


def reap_orphans(project_dir: Path, *, grace_seconds: float = 5.0) -> list[int]:
    """End processes carrying this project's child marker (left by a crashed runner); return their pids.

    Called by the lease holder only, so every such process belongs to a runner that is gone.
    """
    marker = f"{CHILD_MARKER}={project_dir.resolve()}".encode()
    me = os.getpid()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.append(int(entry.name))
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = threading.Event()
    waited = 0.0
    while waited < grace_seconds and any(pid_alive(p) for p in found):
        deadline.wait(0.1)
        waited += 0.1
    for pid in found:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return found


def machine_config(config: ProjectConfig) -> m.MachineConfig:
    """The machine's knobs from the project config (waits, build failure limit)."""
    build_limit = config.build.max_consecutive_failures if config.build is not None else 3
    return m.MachineConfig(
        wait_1hr_seconds=config.soak.wait_1hr_seconds,
        wait_6hr_seconds=config.soak.wait_6hr_seconds,
        wait_1hr=config.soak.wait_1hr,
        wait_6hr=config.soak.wait_6hr,
        max_build_failures=max(1, build_limit),
    )


@dataclass
class TestOutcome:
    """What the TEST stage returns: the verdict plus the results document to merge."""

    __test__ = False  # not a pytest test class

    passed: bool
    summary: str = ""
    results: Mapping[str, Any] | None = None
    results_path: Path | None = None


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


class _Interrupted(Exception):
    """A stop request arrived while a stage or a wait was running."""


Sleeper = Callable[[float, threading.Event], bool]


def _event_wait(seconds: float, stop: threading.Event) -> bool:
    """Sleep up to ``seconds``; True when woken by a stop request (the process uses no CPU meanwhile)."""
    return stop.wait(max(0.0, seconds))


class Runner:
    """Runs one project's loop to a terminal state (or until stopped); see the module docstring.

    Seams: ``stages`` (the work), ``clock`` (the machine's "now"), ``sleeper(seconds, stop) -> bool``
    (waits; True when interrupted), ``notifier`` (notifications), ``out`` (progress lines).
    """

    def __init__(
        self,
        config: ProjectConfig,
        inventory: Inventory,
        state_dir: Path,
        *,
        stages: Stages | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleeper: Sleeper = _event_wait,
        notifier: Notifier | None = None,
        out: Callable[[str], None] | None = None,
        lease_ttl: float = 30.0,
        fix_retry_seconds: float = 5.0,
        stop_poll_seconds: float = 2.0,
        machine_cfg: m.MachineConfig | None = None,
        install_signal_handlers: bool = False,
    ) -> None:
        self.config = config
        self.inventory = inventory
        self.state_dir = Path(state_dir)
        self.project = config.project
        self.dir = project_dir(self.state_dir, self.project)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = StateStore(self.state_dir, self.project, lease_ttl=lease_ttl)
        self.clock = clock
        self.sleeper = sleeper
        self.out = out
        self.fix_retry_seconds = fix_retry_seconds
        self.stop_poll_seconds = stop_poll_seconds
        self.mcfg = machine_cfg or machine_config(config)
        self.stop_event = threading.Event()
        self._stop_reason: str | None = None
        self._install_signals = install_signal_handlers
        self._log_lock = threading.Lock()
        self.runner_log = self.dir / "runner.log"
        channels = build_channels(config.notify, self._log_line)
        self.notifier = notifier or Notifier(self.dir / "outbox", self.project, channels, log=self._log_line)
        self.stages: Stages = stages if stages is not None else FleetStages()
        self._lease: Lease | None = None
        self._lease_lost = threading.Event()
        self._heartbeat_stop = threading.Event()
        self.state: m.RunState | None = None
        self.extra: dict[str, Any] = {}

    # ------------------------------------------------------------------ logging

    def _log_line(self, message: str) -> None:
        """One timestamped line in runner.log (and on the progress output, if any)."""
        state = self.state.state if self.state is not None else "-"
        line = f"{_iso(utcnow())} [{state}] {message}"
        with self._log_lock, self.runner_log.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.out is not None:
            self.out(line)

    def log(self, message: str) -> None:
        """A progress line: runner.log, progress output, and the state document's bounded ``logs``."""
        self._log_line(message)
        state = str(self.state.state) if self.state is not None else "IDLE"
        logs = self.extra.setdefault("logs", [])
        logs.append({"time": _iso(self.clock()), "state": state, "message": message[:500]})
        del logs[:-LOG_LIMIT]

    # ------------------------------------------------------------------ stop

    def request_stop(self, reason: str = "user stop") -> None:
        self._stop_reason = self._stop_reason or reason
        self.stop_event.set()

    def _stop_requested(self) -> bool:
        if self.stop_event.is_set():
            return True
        reason = read_stop_request(self.state_dir, self.project)
        if reason is not None:
            self.request_stop(reason)
            return True
        return False

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` in slices, looking at stop.request between them; True when stopped."""
        end = self.clock().timestamp() + seconds
        while True:
            if self._stop_requested():
                return True
            left = end - self.clock().timestamp()
            if left <= 0:
                return False
            if self.sleeper(min(left, self.stop_poll_seconds), self.stop_event):
                return True

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop("user stop")

    # ------------------------------------------------------------------ lease

    def _heartbeat(self, interval: float) -> None:
        while not self._heartbeat_stop.wait(interval):
            lease = self._lease
            if lease is None:
                continue
            try:
                self._lease = self.store.renew(lease)
            except StaleLeaseError as exc:
                self._log_line(f"lease lost: {exc}; stopping without further writes")
                self._lease_lost.set()
                self.stop_event.set()
                return
            except Exception as exc:  # a transient I/O problem: try again next beat
                self._log_line(f"lease renewal failed: {exc}")

    # ------------------------------------------------------------------ documents

    def _document(self) -> dict[str, Any]:
        assert self.state is not None
        doc: dict[str, Any] = {
            "test_results": self.extra.get("test_results", {}),
            "nodes": self.extra.get("nodes", {}),
            "logs": self.extra.get("logs", []),
            "runner": self.extra.get("runner", {}),
        }
        doc.update(self.state.to_document())
        return doc

    def _save(self, transition: Mapping[str, Any] | None) -> int:
        if self._lease_lost.is_set() or self._lease is None:
            raise StaleLeaseError(f"project '{self.project}': the lease was lost; not writing")
        return self.store.commit(self._lease, self._document(), transition)

    def _ctx(self) -> StageContext:
        assert self.state is not None
        return StageContext(
            config=self.config,
            inventory=self.inventory,
            state_dir=self.state_dir,
            project_dir=self.dir,
            stop=self.stop_event,
            log=self.log,
            state=self.state,
            runner=self.extra.setdefault("runner", {}),
            document=self.extra,
            token=self._lease.token if self._lease else 0,
            save=self._save_now,
        )

    def _save_now(self) -> None:
        self._save(None)

    # ------------------------------------------------------------------ the loop

    def run(self, *, resume_only: bool = False) -> m.RunState:
        """Run until COMPLETE or STOPPED; return the final state.

        ``resume_only``: continue an unfinished run but do not start a new one (``--resume``);
        raises ``StateError`` when there is nothing to resume.
        """
        lease = self.store.acquire()
        self._lease = lease
        old_handlers: dict[signal.Signals, Any] = {}
        if self._install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        beat = threading.Thread(target=self._heartbeat, args=(max(0.5, self.store.lease_ttl / 3),),
                                name=f"lease-{self.project}", daemon=True)
        beat.start()
        (self.dir / "runner.pid").write_text(f"{os.getpid()}\n")
        self.notifier.start()
        try:
            return self._run(resume_only)
        finally:
            self._heartbeat_stop.set()
            beat.join(timeout=5)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self.notifier.close(drain_seconds=3.0)
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "runner.pid").unlink()
            if self._lease is not None and not self._lease_lost.is_set():
                with contextlib.suppress(StateError):
                    self.store.release(self._lease)

    def _run(self, resume_only: bool) -> m.RunState:
        # A stop request written before this runner started is not meant for it.
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "stop.request").unlink()
        doc = self.store.load()
        for note in self.store.recovered:
            self._log_line(f"state recovery: {note}")
        orphans = reap_orphans(self.dir)
        if orphans:
            self._log_line(f"ended {len(orphans)} process(es) left by a previous runner: {orphans}")
        pending: deque[m.Effect] = deque()
        if doc is not None:
            previous = m.RunState.from_document(doc)
            runner_doc = doc.get("runner") or {}
            if previous.state is m.State.COMPLETE and not runner_doc.get("finished"):
                # Crashed during the final proof: the run is complete, finish its paperwork once.
                self.state = previous
                self.extra = {k: doc.get(k) for k in ("test_results", "nodes", "logs", "runner") if k in doc}
                self.log("resuming the final proof of a completed run")
                self._execute(m.Finish(), retry_pause=False)
                return self.state
            if previous.state in m.TERMINAL or previous.state is m.State.IDLE:
                if resume_only:
                    raise StateError(
                        f"project '{self.project}': nothing to resume (the last run ended {previous.state}); "
                        f"start a new run without --resume"
                    )
                doc = None
            else:
                self.state = previous
                self.extra = {k: doc.get(k) for k in ("test_results", "nodes", "logs", "runner") if k in doc}
                self.extra.setdefault("logs", [])
                self.extra.setdefault("runner", {})
                self.log(f"resuming {self.project} in {previous.state} (pid {os.getpid()})")
                effects = m.resume_effects(previous, self.clock())
                if not effects and m.wait_is_over(previous, self.clock()):
                    pending.extend(self._apply(m.WaitElapsed()))
                else:
                    pending.extend(effects)
        if doc is None:
            if resume_only:
                raise StateError(f"project '{self.project}': no state file to resume in {self.dir}")
            self.state = m.initial_state(self.project, self.clock())
            self.extra = {"test_results": {}, "nodes": {}, "logs": [], "runner": {}}
            self.log(f"new run of {self.project} (pid {os.getpid()})")
            pending.extend(self._apply(m.Start()))
        try:
            self._drive(pending)
        except KeyboardInterrupt:
            self._log_line("interrupted; saving STOPPED")
            self._stop_now("user stop")
        assert self.state is not None
        return self.state

    def _drive(self, pending: deque[m.Effect]) -> None:
        previous_fix_failed = False
        while pending:
            assert self.state is not None
            if self.state.state not in m.TERMINAL and self._stop_requested():
                self._stop_now(self._stop_reason or "user stop")
                return
            effect = pending.popleft()
            try:
                event = self._execute(effect, retry_pause=previous_fix_failed)
            except _Interrupted:
                self._stop_now(self._stop_reason or "user stop")
                return
            if event is None:
                continue
            previous_fix_failed = isinstance(event, m.FixFinished) and event.commit is None
            # The stage finished while a stop arrived: its result is recorded only if it was a
            # fix commit (never lose a commit); otherwise the stop wins.
            is_commit = isinstance(event, m.FixFinished) and event.commit is not None
            if self.state.state not in m.TERMINAL and not is_commit and self._stop_requested():
                self._stop_now(self._stop_reason or "user stop")
                return
            pending.extend(self._apply(event))

    def _stop_now(self, reason: str) -> None:
        assert self.state is not None
        if self.state.state in m.TERMINAL:
            return
        effects = self._apply(m.UserStop(reason))
        for effect in effects:
            with contextlib.suppress(_Interrupted):
                self._execute(effect, retry_pause=False)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "stop.request").unlink()

    def _apply(self, event: m.Event) -> tuple[m.Effect, ...]:
        """Feed one event to the machine and commit the result before anything else happens."""
        assert self.state is not None
        before = self.state
        now = self.clock()
        after, effects = m.step(before, event, now, self.mcfg)
        self.state = after
        if after.state != before.state:
            transition = {
                "from": str(before.state),
                "to": str(after.state),
                "event": type(event).__name__,
                "reason": _event_reason(event),
            }
            self.log(f"{before.state} -> {after.state} ({transition['reason']})")
            seq = self._save(transition)
            self.notifier.emit(
                "transition",
                f"{self.project}: {before.state} -> {after.state}",
                {**transition, "seq": seq, "phase": after.phase, "counters": after.to_document()["counters"],
                 "wait_until": after.to_document()["timestamps"]["wait_until"]},
            )
        else:
            self._save(None)
        return effects

    def _execute(self, effect: m.Effect, *, retry_pause: bool) -> m.Event | None:
        ctx = self._ctx()
        if isinstance(effect, m.Notify):
            self.notifier.emit(effect.kind, effect.message)
            return None
        if isinstance(effect, m.RunSetup):
            return self._guard("SETUP", lambda: self.stages.setup(ctx))
        if isinstance(effect, m.RunBuild):
            return self._guard("BUILD", lambda: self.stages.build(ctx))
        if isinstance(effect, m.RunDeploy):
            return self._guard("DEPLOY", lambda: self.stages.deploy(ctx))
        if isinstance(effect, m.RunTest):
            return self._guard("TEST", lambda: self._test(ctx, effect.checkpoint))
        if isinstance(effect, m.RunFix):
            if retry_pause and self.fix_retry_seconds > 0:
                self.log(f"fix attempt made no commit; trying again in {self.fix_retry_seconds:g}s")
                if self._wait(self.fix_retry_seconds):
                    raise _Interrupted()
            return self._guard("FIX", lambda: self._fix(ctx, effect.reason))
        if isinstance(effect, m.StartWait):
            left = (effect.until - self.clock()).total_seconds()
            self.log(f"{effect.stage}: waiting until {_iso(effect.until)} ({max(left, 0):.0f}s)")
            self._save(None)
            if self._wait(left):
                raise _Interrupted()
            return m.WaitElapsed()
        if isinstance(effect, m.Restart):
            self._guard_none("RESTART", lambda: self.stages.restart(ctx))
            return m.RestartDone()
        if isinstance(effect, m.Finish):
            self._guard_none("COMPLETE", lambda: self.stages.finish(ctx))
            self.extra.setdefault("runner", {})["finished"] = _iso(self.clock())
            self._save(None)
            return None
        if isinstance(effect, m.Stop):
            self.log(f"stopped: {effect.reason}")
            self._guard_none("STOPPED", lambda: self.stages.stopped(ctx, effect.reason))
            self._save(None)
            return None
        raise AssertionError(f"unknown effect {effect!r}")

    def _test(self, ctx: StageContext, checkpoint: int) -> m.TestFinished:
        outcome = self.stages.test(ctx, checkpoint)
        if ctx.stop.is_set():
            raise _Interrupted()
        if outcome.results is not None:
            tr = outcome.results.get("test_results")
            merged = dict(tr) if isinstance(tr, Mapping) else {}
            merged.setdefault("passed", outcome.passed)
            merged.setdefault("last_run", _iso(self.clock()))
            self.extra["test_results"] = merged
        runner = self.extra.setdefault("runner", {})
        runner["last_results"] = str(outcome.results_path) if outcome.results_path else None
        checkpoints = runner.setdefault("checkpoints", [])
        checkpoints.append({"checkpoint": checkpoint, "passed": outcome.passed, "time": _iso(self.clock()),
                            "summary": outcome.summary[:300]})
        del checkpoints[:-50]
        return m.TestFinished(outcome.passed, outcome.summary)

    def _fix(self, ctx: StageContext, reason: str) -> m.FixFinished:
        event = self.stages.fix(ctx, reason)
        if event.commit is None and ctx.stop.is_set():
            raise _Interrupted()
        if event.commit is None:
            self.log(f"fix attempt failed: {event.error}")
        return event

    def _guard(self, stage: str, call: Callable[[], m.Event]) -> m.Event:
        """Run a stage; a stop during it interrupts; an unexpected crash becomes a critical stop."""
        try:
            event = call()
        except _Interrupted:
            raise
        except VpsTestError as exc:
            if self.stop_event.is_set():
                raise _Interrupted() from exc
            return self._failure_event(stage, str(exc))
        except Exception as exc:
            if self.stop_event.is_set():
                raise _Interrupted() from exc
            self._log_line(f"{stage} crashed:\n{traceback.format_exc()}")
            return m.Fatal(f"{stage} stage crashed: {type(exc).__name__}: {exc}")
        if self.stop_event.is_set() and not (isinstance(event, m.FixFinished) and event.commit is not None):
            raise _Interrupted()
        return event

    def _failure_event(self, stage: str, error: str) -> m.Event:
        """A stage's own error (one line) as the stage's failure event."""
        self.log(f"{stage}: {error}")
        if stage == "BUILD":
            return m.BuildFinished(False, error)
        if stage == "TEST":
            return m.TestFinished(False, error)
        if stage == "FIX":
            return m.FixFinished(None, error)
        return m.Fatal(f"{stage}: {error}")

    def _guard_none(self, stage: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # the terminal/cleanup actions must not lose the recorded state
            self._log_line(f"{stage} action failed: {type(exc).__name__}: {exc}")


def _event_reason(event: m.Event) -> str:
    if isinstance(event, m.Start):
        return "loop started"
    if isinstance(event, m.SetupFinished):
        return f"{event.reachable}/{event.total} nodes reachable"
    if isinstance(event, m.BuildFinished):
        return "build ok" if event.ok else f"build failed: {event.error or 'no detail'}"
    if isinstance(event, m.DeployFinished):
        return f"deployed {event.succeeded}/{event.total}"
    if isinstance(event, m.TestFinished):
        verdict = "tests passed" if event.passed else "tests failed"
        return verdict + (f": {event.summary}" if event.summary else "")
    if isinstance(event, m.FixFinished):
        return f"fix committed {event.commit.sha[:12]}" if event.commit else f"fix failed: {event.error}"
    if isinstance(event, m.WaitElapsed):
        return "wait elapsed"
    if isinstance(event, m.RestartDone):
        return "restart done"
    return event.reason


# --------------------------------------------------------------------------- the real stages

_DISK_WARN_KB = 1024 * 1024  # warn under 1 GB free
_DISK_CRITICAL_KB = 200 * 1024  # clear old logs under 200 MB free


class FleetStages:
    """The real stages: SSH checks, local build, deploy, pytest on the suites, the FIX stage, proof.

    One ``SessionPool`` per runner (cached SSH sessions), closed when the run ends.
    """

    def __init__(self, *, pytest_args: tuple[str, ...] = ()) -> None:
        self._pool: Any = None
        self.pytest_args = pytest_args

    # -- helpers -----------------------------------------------------------------------------
    def pool(self, ctx: StageContext) -> Any:
        if self._pool is None:
            from pytest_vpstest.remote import SessionPool

            self._pool = SessionPool(ctx.inventory)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.close_all()
            self._pool = None

    @staticmethod
    def _artifact(ctx: StageContext) -> Path | None:
        recorded = ctx.runner.get("artifact")
        if recorded:
            return Path(recorded)
        b = ctx.config.build
        if b is not None and b.artifact:
            return ctx.config.workspace / b.artifact
        return None

    def _fetch_log(self, ctx: StageContext) -> Callable[[Any], str]:
        from pytest_vpstest.deploy import plan_node
        from pytest_vpstest.remote import service_manager

        artifact = self._artifact(ctx) or Path("artifact")

        def fetch(node: Any) -> str:
            plan = plan_node(node, ctx.config, artifact)
            mgr = service_manager(self.pool(ctx).session(node.name), install_path=plan.install_path,
                                  log_dir=plan.log_dir)
            return str(mgr.logs(plan.service, 500))

        return fetch

    # -- SETUP -------------------------------------------------------------------------------
    def setup(self, ctx: StageContext) -> m.SetupFinished:
        from pytest_vpstest.errors import NodeError
        from pytest_vpstest.remote import quote_command

        cfg, inv = ctx.config, ctx.inventory
        ctx.log(f"config {cfg.path or '(in memory)'} valid: project {cfg.project}, focus {cfg.focus}, "
                f"criteria {cfg.criteria}, {len(inv.nodes)} node(s)")
        ctx.log(f"checking SSH and disk space on {len(inv.nodes)} node(s) in parallel")

        def check(session: Any) -> tuple[int | None, str]:
            node = session.node
            install = node.install_path or cfg.deploy.install_path
            # df on the deepest existing directory of the install path.
            probe = quote_command(
                'd={p}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d" | tail -1', p=install
            )
            res = session.run(probe, timeout=inv.connect_timeout + 20)
            if not res.ok:
                return None, res.summary()
            fields = res.stdout.split()
            free = int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() else None
            note = ""
            if free is not None and free < _DISK_CRITICAL_KB:
                log_dir = node.log_dir or posixpath_join(install, "logs")
                clean = quote_command("find {d} -type f -name '*.log.*' -delete 2>/dev/null; "
                                      "find {d} -type f -name '*.log' -size +10M -exec truncate -s 0 {{}} + "
                                      "2>/dev/null; true", d=log_dir)
                session.run(clean, timeout=60)
                note = f"disk critical ({free // 1024} MB free): cleared old logs in {log_dir}"
            elif free is not None and free < _DISK_WARN_KB:
                note = f"low disk: {free // 1024} MB free"
            return free, note

        results = self.pool(ctx).fan_out(inv.names, check, parallelism=max(1, min(16, len(inv.names))))
        nodes = ctx.document.setdefault("nodes", {})
        reachable = 0
        now = _iso(utcnow())
        for name, res in results.items():
            if isinstance(res, NodeError):
                nodes[name] = {"status": "offline", "last_check": now, "error": str(res)}
                ctx.log(f"  {name}: unreachable: {res}")
                continue
            free, note = res
            reachable += 1
            entry: dict[str, Any] = {"status": "degraded" if note else "online", "last_check": now}
            if free is not None:
                entry["disk_free_mb"] = free // 1024
            if note:
                entry["error"] = note
                ctx.log(f"  {name}: {note}")
            nodes[name] = entry
        ctx.log(f"verified {reachable}/{len(inv.nodes)} nodes")
        return m.SetupFinished(reachable, len(inv.nodes))

    # -- BUILD -------------------------------------------------------------------------------
    def build(self, ctx: StageContext) -> m.BuildFinished:
        cfg = ctx.config
        if cfg.build is None:
            ctx.log("no build configured; deploying the configured artifact as it is")
            return m.BuildFinished(True)
        ctx.log(f"building: {cfg.build.command} (in {cfg.workspace})")
        result = _run_build(cfg, ctx)
        ok = bool(getattr(result, "ok", False))
        duration = getattr(result, "duration", None)
        artifact = getattr(result, "artifact", None)
        if ok:
            if artifact:
                ctx.runner["artifact"] = str(artifact)
            took = f" in {duration:.1f}s" if isinstance(duration, int | float) else ""
            warnings = getattr(result, "warnings", None) or ()
            ctx.log(f"build complete{took}: {artifact or 'no artifact'}"
                    + (f" ({len(warnings)} warning(s))" if warnings else ""))
            return m.BuildFinished(True)
        errors = [str(e) for e in (getattr(result, "errors", None) or ())]
        error = getattr(result, "error", None) or (errors[0] if errors else "build failed")
        for e in errors[:10]:
            ctx.log(f"  build error: {e}")
        return m.BuildFinished(False, str(error)[:500])

    # -- DEPLOY ------------------------------------------------------------------------------
    def deploy(self, ctx: StageContext) -> m.DeployFinished:
        from pytest_vpstest.deploy import deploy
        from pytest_vpstest.errors import DeployError

        artifact = self._artifact(ctx)
        if artifact is None:
            raise DeployError("nothing to deploy: configure build.artifact")
        report: Any
        try:
            report = deploy(self.pool(ctx), ctx.inventory, ctx.config, artifact, log=ctx.log)
        except DeployError as exc:
            report = getattr(exc, "report", None)
            if report is None:
                raise
            ctx.log(str(exc))
        nodes = ctx.document.setdefault("nodes", {})
        now = _iso(utcnow())
        for name, d in report.per_node.items():
            entry = dict(nodes.get(name) or {})
            entry["last_check"] = now
            entry["deployed"] = bool(d.ok)
            if d.ok:
                entry["status"] = "online"
                entry.pop("error", None)
            else:
                entry["status"] = "degraded"
                entry["error"] = f"deploy {d.stage_failed}: {d.error}"
            nodes[name] = entry
        return m.DeployFinished(report.succeeded, report.total)

    # -- TEST --------------------------------------------------------------------------------
    def test(self, ctx: StageContext, checkpoint: int) -> TestOutcome:
        import suites
        from pytest_vpstest.fixer import run_interruptible

        cfg = ctx.config
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        run_dir = ctx.project_dir / "runs" / f"loop-{stamp}-c{checkpoint}"
        run_dir.mkdir(parents=True, exist_ok=True)
        results_path = run_dir / "results.json"
        suites_dir = Path(suites.__file__).parent
        argv = [sys.executable, "-m", "pytest", str(suites_dir), "-p", "no:cacheprovider", "-q",
                "-o", "addopts=", "--rootdir", str(suites_dir),
                "--vps-config", str(cfg.path), "--vps-focus", cfg.focus or "full-suite",
                "--vps-criteria", cfg.criteria or "threshold", "--vps-proof", cfg.proof or "all-evidence",
                "--vps-state-dir", str(ctx.state_dir), "--vps-results-json", str(results_path),
                "--vps-project", cfg.project, "--vps-skip-build", "--vps-skip-deploy",
                "--html", str(run_dir / "report.html"), "--self-contained-html", *self.pytest_args]
        if ctx.inventory.path is not None:
            argv += ["--vps-nodes", str(ctx.inventory.path)]
        if cfg.criteria_expr:
            argv += ["--vps-criteria-expr", cfg.criteria_expr]
        label = ("initial", "after-1hr", "after-6hr")[min(checkpoint, 2)]
        env = {**os.environ, "VPSTEST_RUNNER_TOKEN": str(ctx.token), "VPSTEST_LOOP_STATE": f"TEST:{label}",
               **child_env(ctx.project_dir)}
        ctx.log(f"running the {cfg.focus or 'full-suite'} suites ({label} checkpoint) -> {run_dir}")
        timeout = 3600.0

        def progress(line: str) -> None:
            if line.strip():
                ctx.log(f"  pytest: {line}")

        rc, text = run_interruptible(argv, cwd=cfg.workspace, env=env, stop=ctx.stop, timeout=timeout,
                                     output=progress)
        if rc is None:
            if ctx.stop.is_set():
                return TestOutcome(False, "stopped", None, None)
            return TestOutcome(False, f"pytest {text}", None, None)
        ctx.runner["last_report"] = str(run_dir / "report.html")
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            tail = [x for x in text.strip().splitlines() if x.strip()][-1:] or [""]
            return TestOutcome(False, f"pytest exited {rc} without results: {tail[0][:300]}", None, None)
        passed = bool(results.get("passed"))
        failures = (results.get("verdict") or {}).get("failures") or []
        summary = "; ".join(
            f"{f.get('metric')} {f.get('measured')} (target {f.get('target')})" for f in failures[:5]
        )
        if not passed and not summary:
            summary = f"pytest exited {rc}"
        ctx.log(f"tests {'passed' if passed else 'failed'}" + (f": {summary}" if summary else ""))
        return TestOutcome(passed, summary, results, results_path)

    # -- FIX ---------------------------------------------------------------------------------
    def fix(self, ctx: StageContext, reason: str) -> m.FixFinished:
        from pytest_vpstest.fixer import git_head, obtain_fix, run_fix

        cfg = ctx.config
        known = {c.sha for c in ctx.state.commits}
        head = git_head(cfg.workspace)
        base = ctx.runner.get("fix_base")
        if base is None:
            ctx.runner["fix_base"] = head.sha if head else None
            ctx.save()  # the base must survive a crash, or a fix made meanwhile would be missed
        elif head is not None and head.sha != base and head.sha not in known:
            # Resumed after a crash: the fixer had already committed. Verify and record it.
            ctx.log(f"found fix commit {head.sha[:12]} made before the restart")
            brief = ctx.project_dir / "fix" / "resumed.md"
            brief.parent.mkdir(parents=True, exist_ok=True)
            brief.write_text(f"Resumed FIX: commit {head.sha} found after a restart.\n")
            outcome = obtain_fix(replace(cfg.fix, command="true"), cfg.workspace, brief, stop=ctx.stop,
                                 output=ctx.log, base_sha=base, env=child_env(ctx.project_dir))
            return self._fix_event(ctx, outcome)
        results = None
        last = ctx.runner.get("last_results")
        if last:
            with contextlib.suppress(OSError, ValueError):
                results = json.loads(Path(last).read_text(encoding="utf-8"))
        outcome = run_fix(project=cfg.project, project_dir=ctx.project_dir, workspace=cfg.workspace,
                          config=cfg.fix, nodes=ctx.inventory.nodes, fetch=self._fetch_log(ctx),
                          reason=reason, results=results, stop=ctx.stop, output=ctx.log,
                          env=child_env(ctx.project_dir))
        return self._fix_event(ctx, outcome)

    @staticmethod
    def _fix_event(ctx: StageContext, outcome: Any) -> m.FixFinished:
        if outcome.commit is None:
            return m.FixFinished(None, outcome.error)
        ctx.runner.pop("fix_base", None)
        c = outcome.commit
        when = datetime.fromisoformat(c.time.replace("Z", "+00:00"))
        return m.FixFinished(m.Commit(c.sha, c.message, when))

    # -- RESTART / COMPLETE / STOPPED --------------------------------------------------------
    def restart(self, ctx: StageContext) -> None:
        from pytest_vpstest.deploy import plan_node
        from pytest_vpstest.remote import service_manager

        artifact = self._artifact(ctx) or Path("artifact")
        ctx.log("soak regression: stopping the service on every node before starting over")

        def stop_one(session: Any) -> None:
            plan = plan_node(session.node, ctx.config, artifact)
            service_manager(session, install_path=plan.install_path, log_dir=plan.log_dir).stop(plan.service)

        for name, res in self.pool(ctx).fan_out(ctx.inventory.names, stop_one).items():
            if isinstance(res, Exception):
                ctx.log(f"  {name}: could not stop the service: {res}")
        self.close()

    def finish(self, ctx: StageContext) -> None:
        from pytest_vpstest.fixer import collect_logs

        ctx.log("collecting final logs from every node")
        collect_logs(ctx.inventory.nodes, self._fetch_log(ctx), ctx.project_dir / "logs")
        final_proof = None
        try:
            final_proof = self._final_proof(ctx)
        except Exception as exc:  # the run is COMPLETE either way; the per-run proofs remain
            ctx.log(f"final proof not written: {type(exc).__name__}: {exc}")
        proofs = [final_proof] if final_proof else sorted(ctx.project_dir.glob("proof-*.md"),
                                                           key=lambda p: p.stat().st_mtime)
        s = ctx.state
        c = s.counters
        ctx.runner["final"] = {
            "proof": str(proofs[-1]) if proofs else None,
            "report": ctx.runner.get("last_report"),
            "logs": str(ctx.project_dir / "logs"),
            "state_file": str(ctx.project_dir / "state.json"),
        }
        duration = (utcnow() - s.started_at).total_seconds()
        ctx.log(f"statistics: duration {duration:.0f}s, builds {c.build_count}, deploys {c.deploy_count}, "
                f"tests {c.test_count}, fix attempts {c.fix_attempts}, commits "
                f"{', '.join(x.sha[:12] for x in s.commits) or 'none'}")
        if proofs:
            ctx.log(f"proof: {proofs[-1]}")
        self.close()

    def stopped(self, ctx: StageContext, reason: str) -> None:
        self.close()

    @staticmethod
    def _final_proof(ctx: StageContext) -> Path | None:
        """The loop's proof (seeds/001): the last run's criteria, the whole loop's duration, COMPLETE."""
        from pytest_vpstest.criteria import Check, Verdict
        from pytest_vpstest.proof import ProofInput, write_proof

        last = ctx.runner.get("last_results")
        if not last:
            return None
        results = json.loads(Path(last).read_text(encoding="utf-8"))
        v = results.get("verdict") or {}
        checks = tuple(
            Check(str(c.get("metric")), str(c.get("op", ">=")), c.get("target"), c.get("measured"),
                  bool(c.get("passed")), str(c.get("note", "")))
            for c in v.get("checks") or []
        )
        verdict = Verdict(bool(v.get("passed", results.get("passed"))), str(v.get("criteria", "")), checks,
                          tuple(str(n) for n in v.get("notes") or ()), v.get("expression"))
        run_evidence = {str(k): str(x) for k, x in (results.get("evidence") or {}).items()}
        evidence = {"Results": str(last), **run_evidence,
                    "Logs": str(ctx.project_dir / "logs"), "State": str(ctx.project_dir / "state.json"),
                    "Transitions": str(ctx.project_dir / "transitions.jsonl")}
        checkpoints = ctx.runner.get("checkpoints") or []
        if checkpoints:
            names = ("initial", "after 1 h", "after 6 h")
            evidence["Checkpoints"] = ", ".join(
                f"{names[min(int(c['checkpoint']), 2)]}: {'pass' if c['passed'] else 'fail'}"
                for c in checkpoints
            )
        now = utcnow()
        path = write_proof(ctx.project_dir, ProofInput(
            project=ctx.config.project,
            started_at=ctx.state.started_at.timestamp(),
            finished_at=now.timestamp(),
            verdict=verdict,
            focus=ctx.config.focus or "",
            result_label="COMPLETE",
            evidence=evidence,
            fix_commits=[c.sha[:12] for c in ctx.state.commits],
            nodes_tested=ctx.inventory.names,
            inventory=ctx.inventory,
            pairs=results.get("pairs") or (),
            run_id=str(results.get("run_id", "")),
            reproduce=str(results.get("reproduce", "")),
        ))
        return path


def posixpath_join(a: str, b: str) -> str:
    import posixpath

    return posixpath.join(a, b)


def _run_build(cfg: ProjectConfig, ctx: StageContext) -> Any:
    """The build module's ``run_build``, streaming its progress lines to the run's log."""
    build_mod = importlib.import_module("pytest_vpstest.build")
    run_build = build_mod.run_build
    params = inspect.signature(run_build).parameters
    if "log" in params:
        return run_build(cfg, log=ctx.log) if "workspace" not in params else run_build(
            cfg.build, cfg.workspace, log=ctx.log)
    return run_build(cfg)
