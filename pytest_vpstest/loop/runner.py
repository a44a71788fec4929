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
   polling; a stop ends the run as STOPPED with reason "user stop" at the next safe point;
5. node health: before every TEST and every ``health.check_seconds`` of a WAIT a round of
   ``loop.health_keeper`` (checks, liveness machine, respawns, record); the nodes not Live go to the
   TEST as unhealthy, and ``NodesHealth`` to the machine (which stops the run under half Live).

Stages are a seam: unit tests pass fake stage functions; ``loop.stages.FleetStages`` does the real
work over SSH with the build, deploy, pytest-plugin and fixer modules.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from pytest_vpstest.config import Inventory, ProjectConfig
from pytest_vpstest.errors import StaleLeaseError, StateError, VpsTestError
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.event_text import event_reason, failure_event
from pytest_vpstest.loop.health import infrastructure_only
from pytest_vpstest.loop.health_keeper import HealthKeeper, NodeChecker
from pytest_vpstest.loop.notify import Notifier, build_channels
from pytest_vpstest.loop.project_files import (
    finished_marker,
    nothing_to_resume,
    project_dir,
    read_stop_request,
    reap_orphans,
    request_stop,
    write_finished_marker,
)
from pytest_vpstest.loop.run_state import count_interrupted_stage
from pytest_vpstest.loop.stage_context import (
    CHILD_MARKER,
    StageContext,
    Stages,
    TestOutcome,
    child_env,
    machine_config,
    utcnow,
)
from pytest_vpstest.loop.stage_context import iso as _iso
from pytest_vpstest.records.store import Lease, StateStore
from pytest_vpstest.redact import redact_text

__all__ = [
    "CHILD_MARKER",
    "LOG_LIMIT",
    "NodeChecker",
    "Runner",
    "StageContext",
    "Stages",
    "TestOutcome",
    "child_env",
    "machine_config",
    "nothing_to_resume",
    "project_dir",
    "read_stop_request",
    "reap_orphans",
    "request_stop",
    "utcnow",
]

# The state document's ``logs`` list keeps this many recent entries (runner.log keeps everything).
LOG_LIMIT = 200


class _Interrupted(Exception):
    """A stop request arrived while a stage or a wait was running."""


class _HealthStop(Exception):
    """A health round stopped the run (too few Live nodes); carries the machine's effects."""

    def __init__(self, effects: tuple[m.Effect, ...]) -> None:
        super().__init__("too few live nodes")
        self.effects = effects


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
        checker: NodeChecker | None = None,
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
        channels = build_channels(config.notify, self._log_line, self._dashboard_token)
        self.notifier = notifier or Notifier(self.dir / "outbox", self.project, channels, log=self._log_line)
        if stages is None:
            from pytest_vpstest.loop.stages import FleetStages

            fleet = FleetStages()
            stages, checker = fleet, checker or fleet
        self.stages: Stages = stages
        # None: node health is not tracked (custom stages without a checker).
        self.keeper = None if checker is None else HealthKeeper(
            checker, config.health, project=self.project, clock=clock, log=self.log,
            notify=lambda kind, text, data: self.notifier.emit(kind, text, data))
        self._lease: Lease | None = None
        self._lease_lost = threading.Event()
        self._heartbeat_stop = threading.Event()
        self.state: m.RunState | None = None
        self.extra: dict[str, Any] = {}

    def _run_files(self) -> dict[str, Any]:
        """Where this run's config and inventory are, for readers that act on the fleet (the dashboard)."""
        files: dict[str, Any] = {}
        if self.config.path is not None:
            files["config"] = str(self.config.path)
        if self.inventory.path is not None:
            files["inventory"] = str(self.inventory.path)
        return files

    def _dashboard_token(self) -> str | None:
        """The token the dashboard accepts POSTs with: the config's, else the one it wrote at start-up."""
        if self.config.dashboard.token:
            return self.config.dashboard.token
        from pytest_vpstest.dashboard.token import read_token

        return read_token(self.state_dir)

    # ------------------------------------------------------------------ logging

    def _log_line(self, message: str) -> None:
        """One timestamped line in runner.log (and on the progress output, if any); URLs redacted."""
        state = self.state.state if self.state is not None else "-"
        line = f"{_iso(utcnow())} [{state}] {redact_text(message)}"
        with self._log_lock, self.runner_log.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.out is not None:
            self.out(line)

    def log(self, message: str) -> None:
        """A progress line: runner.log, progress output, and the state document's bounded ``logs``."""
        self._log_line(message)
        state = str(self.state.state) if self.state is not None else "IDLE"
        logs = self.extra.setdefault("logs", [])
        logs.append({"time": _iso(self.clock()), "state": state, "message": redact_text(message)[:500]})
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
            finished_at = finished_marker(self.dir, previous)
            if previous.state is m.State.COMPLETE and not runner_doc.get("finished") and not finished_at:
                # Crashed during the final proof: the run is complete, finish its paperwork once, and
                # send the "complete" notification the crash may have cut off.
                self.state = previous
                self.extra = {k: doc.get(k) for k in ("test_results", "nodes", "logs", "runner") if k in doc}
                self.log("resuming the final proof of a completed run")
                self._execute(m.Finish(), retry_pause=False)
                if not self.extra.setdefault("runner", {}).get("complete_notified"):
                    self._execute(m.Notify("complete", f"VPS test complete for {self.project}"),
                                  retry_pause=False)
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
                self.state = count_interrupted_stage(previous)
                effects = m.resume_effects(previous, self.clock())
                if not effects and m.wait_is_over(previous, self.clock()):
                    pending.extend(self._apply(m.WaitElapsed()))
                else:
                    pending.extend(effects)
        if doc is None:
            if resume_only:
                raise StateError(f"project '{self.project}': no state file to resume in {self.dir}")
            self.state = m.initial_state(self.project, self.clock())
            self.extra = {"test_results": {}, "nodes": {}, "logs": [], "runner": self._run_files()}
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
            if isinstance(effect, m.RunTest):
                stopping = self._health_round(stop_allowed=True)
                if stopping:
                    pending.extend(stopping)
                    continue
            try:
                event = self._execute(effect, retry_pause=previous_fix_failed)
            except _Interrupted:
                self._stop_now(self._stop_reason or "user stop")
                return
            except _HealthStop as stop:
                pending.extend(stop.effects)
                continue
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
                "reason": event_reason(event),
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
            if effect.kind == "complete":
                self.extra.setdefault("runner", {})["complete_notified"] = _iso(self.clock())
                self._save(None)
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
            if self._wait_checking_health(effect.until):
                raise _Interrupted()
            return m.WaitElapsed()
        if isinstance(effect, m.Restart):
            self._guard_none("RESTART", lambda: self.stages.restart(ctx))
            return m.RestartDone()
        if isinstance(effect, m.Finish):
            self._guard_none("COMPLETE", lambda: self.stages.finish(ctx))
            finished = _iso(self.clock())
            self.extra.setdefault("runner", {})["finished"] = finished
            self._save(None)
            # Also beside the state file: a damaged state file recovered from the transitions log
            # (whose last snapshot predates this step) must not make the run look unfinished.
            assert self.state is not None
            write_finished_marker(self.dir, self.state, finished)
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
        infrastructure = False
        if not outcome.passed and self.keeper is not None:
            # Was it the nodes? Look again: a node that went bad during TEST shows now.
            self._health_round(stop_allowed=False)
            # Unhealthy now, found bad by that round (even if it respawned them), or skipped as such.
            bad = self.keeper.found_bad | set(ctx.runner.get("unhealthy") or {})
            bad |= set((outcome.results or {}).get("unhealthy") or {})
            infrastructure = infrastructure_only(outcome.results is not None, outcome.failed_nodes, bad)
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
        if infrastructure:
            self.log("every failed test involves a node that is not healthy: an infrastructure failure")
        return m.TestFinished(outcome.passed, outcome.summary, infrastructure=infrastructure)

    # ------------------------------------------------------------------ node health

    def _wait_checking_health(self, until: datetime) -> bool:
        """Wait until ``until``, with a health round every ``health.check_seconds``; True when stopped."""
        period = self.config.health.check_seconds
        while True:
            left = (until - self.clock()).total_seconds()
            if left <= 0:
                return False
            if self.keeper is None:
                return self._wait(left)
            if self._wait(min(left, period)):
                return True
            if (until - self.clock()).total_seconds() > 0:
                stopping = self._health_round(stop_allowed=True)
                if stopping:
                    raise _HealthStop(stopping)

    def _health_round(self, *, stop_allowed: bool) -> tuple[m.Effect, ...]:
        """One health round (``loop.health_keeper``); return the run's stop effects, if it stops.

        With ``stop_allowed`` false (after a TEST) the run is not stopped here: the verdict decides.
        """
        if self.keeper is None:
            return ()
        health = self.keeper.round(self._ctx(), self.extra)
        self._save(None)
        if health is None or not stop_allowed:
            return ()
        unhealthy = tuple(sorted(health.unhealthy().items()))
        event = m.NodesHealth(health.live_count(), len(health.names), unhealthy)
        effects = self._apply(event)
        assert self.state is not None
        return effects if self.state.state in m.TERMINAL else ()

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
            self.log(f"{stage}: {exc}")
            return failure_event(stage, str(exc))
        except Exception as exc:
            if self.stop_event.is_set():
                raise _Interrupted() from exc
            self._log_line(f"{stage} crashed:\n{traceback.format_exc()}")
            return m.Fatal(f"{stage} stage crashed: {type(exc).__name__}: {exc}")
        if self.stop_event.is_set() and not (isinstance(event, m.FixFinished) and event.commit is not None):
            raise _Interrupted()
        return event

    def _guard_none(self, stage: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # the terminal/cleanup actions must not lose the recorded state
            self._log_line(f"{stage} action failed: {type(exc).__name__}: {exc}")
