"""The real stages of the loop: SSH checks, local build, deploy, pytest on the suites, FIX, proof.

``Runner`` (``loop.runner``) calls these through its ``Stages`` seam (``loop.stage_context``); unit
tests pass fakes instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_vpstest._files import write_json_atomic
from pytest_vpstest.errors import VpsTestError
from pytest_vpstest.fleet.build import run_build
from pytest_vpstest.fleet.node import plan_node
from pytest_vpstest.inventory import Node
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.health import NodeCheck
from pytest_vpstest.loop.stage_context import StageContext, TestOutcome, child_env, utcnow
from pytest_vpstest.loop.stage_context import iso as _iso
from pytest_vpstest.node_skips import SKIP_FILE, SKIP_NODES_OPTION, nodes_to_skip
from pytest_vpstest.suite import FULL_SUITE, suites_directory

if TYPE_CHECKING:  # the SSH stack is imported when the first stage needs a session
    from pytest_vpstest.fleet.deploy import DeployReport
    from pytest_vpstest.fleet.node import NodePlan
    from pytest_vpstest.fleet.remote import Pool, Session
    from pytest_vpstest.loop.fixer import FixOutcome

__all__ = ["PLUGINS_OFF", "FleetStages", "suites_directory"]


_DISK_WARN_KB = 1024 * 1024  # warn under 1 GB free
_DISK_CRITICAL_KB = 200 * 1024  # clear old logs under 200 MB free


# pytest plugins the suites' runs never use: each costs start-up time in every TEST stage
# (Hypothesis's alone is about 1.6 s on a loaded 2-core machine).
PLUGINS_OFF = ("cacheprovider", "hypothesispytest")


def _plugins_off() -> list[str]:
    return [arg for name in PLUGINS_OFF for arg in ("-p", f"no:{name}")]


class FleetStages:
    """The real stages: SSH checks, local build, deploy, pytest on the suites, the FIX stage, proof.

    One ``SessionPool`` per runner (cached SSH sessions), closed when the run ends.
    """

    def __init__(self, *, pytest_args: tuple[str, ...] = ()) -> None:
        self._pool: Pool | None = None
        self.pytest_args = pytest_args

    # -- helpers -----------------------------------------------------------------------------
    def pool(self, ctx: StageContext) -> Pool:
        if self._pool is None:
            from pytest_vpstest.fleet.remote import SessionPool

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

    def _fetch_log(self, ctx: StageContext) -> Callable[[Node], str]:
        from pytest_vpstest.fleet.services import service_manager

        def fetch(node: Node) -> str:
            plan = plan_node(node, ctx.config)
            mgr = service_manager(self.pool(ctx).session(node.name), install_path=plan.install_path,
                                  log_dir=plan.log_dir)
            return mgr.logs(plan.service, 500)

        return fetch

    # -- SETUP -------------------------------------------------------------------------------
    def setup(self, ctx: StageContext) -> m.SetupFinished:
        from pytest_vpstest.errors import NodeError
        from pytest_vpstest.fleet.remote import quote_command

        cfg, inv = ctx.config, ctx.inventory
        ctx.log(f"config {cfg.path or '(in memory)'} valid: project {cfg.project}, focus {cfg.focus}, "
                f"criteria {cfg.criteria}, {len(inv.nodes)} node(s)")
        ctx.log(f"checking SSH and disk space on {len(inv.nodes)} node(s) in parallel")

        def check(session: Session) -> tuple[int | None, str]:
            plan = plan_node(session.node, cfg)
            # df on the deepest existing directory of the install path.
            probe = quote_command(
                'd={p}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d" | tail -1',
                p=plan.install_path,
            )
            res = session.run(probe, timeout=inv.connect_timeout + 20)
            if not res.ok:
                return None, res.summary()
            fields = res.stdout.split()
            free = int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() else None
            note = ""
            if free is not None and free < _DISK_CRITICAL_KB:
                clean = quote_command("find {d} -type f -name '*.log.*' -delete 2>/dev/null; "
                                      "find {d} -type f -name '*.log' -size +10M -exec truncate -s 0 {{}} + "
                                      "2>/dev/null; true", d=plan.log_dir)
                session.run(clean, timeout=60)
                note = f"disk critical ({free // 1024} MB free): cleared old logs in {plan.log_dir}"
            elif free is not None and free < _DISK_WARN_KB:
                note = f"low disk: {free // 1024} MB free"
            return free, note

        results = self.pool(ctx).fan_out(inv.names, check, parallelism=max(1, min(16, len(inv.names))))
        nodes = ctx.document.setdefault("nodes", {})
        reachable = 0
        unreachable: list[tuple[str, str]] = []
        now = _iso(utcnow())
        for name, res in results.items():
            if isinstance(res, NodeError):
                nodes[name] = {"status": "offline", "last_check": now, "error": str(res)}
                ctx.log(f"  {name}: unreachable: {res}")
                unreachable.append((name, str(res).splitlines()[0] if str(res) else "unreachable"))
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
        return m.SetupFinished(reachable, len(inv.nodes), tuple(unreachable))

    # -- node health (the runner's NodeChecker) ----------------------------------------------
    def health_targets(self, ctx: StageContext) -> tuple[str, ...]:
        from pytest_vpstest.fleet.deploy import target_nodes

        return tuple(target_nodes(ctx.inventory, ctx.config, None))

    def check_nodes(self, ctx: StageContext, nodes: tuple[str, ...]) -> dict[str, NodeCheck]:
        """One SSH round: the service manager's status of the service, and whether the binary is there."""
        from pytest_vpstest.fleet.remote import quote_command
        from pytest_vpstest.fleet.services import service_manager

        def check(session: Session) -> NodeCheck:
            plan = plan_node(session.node, ctx.config, self._artifact(ctx))
            status = service_manager(session, install_path=plan.install_path,
                                     log_dir=plan.log_dir).status(plan.service)
            present = session.run(quote_command("test -e {b}", b=plan.binary), timeout=30).ok
            if status.running:
                return NodeCheck(True, True, "", present, sees=self._peers_seen(ctx, session, plan))
            detail = f"service {plan.service} not running" + (f": {status.detail}" if status.detail else "")
            return NodeCheck(True, False, detail if present else f"{detail}; binary {plan.binary} missing",
                             present)

        out: dict[str, NodeCheck] = {}
        for name, res in self.pool(ctx).fan_out(list(nodes), check,
                                                parallelism=max(1, min(16, len(nodes)))).items():
            if isinstance(res, Exception):
                text = (str(res).splitlines() or [type(res).__name__])[0].strip("'\"")
                out[name] = NodeCheck(False, False, f"ssh: {text}")
            else:
                out[name] = res
        return out

    def _peers_seen(self, ctx: StageContext, session: Session, plan: NodePlan) -> dict[str, float] | None:
        """The peers the node says it heard from (its status answer's ``peers_seen``), or None."""
        from pytest_vpstest.errors import ConfigError
        from pytest_vpstest.fleet.probes import parse_output
        from pytest_vpstest.fleet.remote import quote_command
        from pytest_vpstest.loop.health import peers_seen_of

        inv = ctx.inventory
        fill = {**plan.placeholders(), "timeout": "10", "bootstrap": ",".join(inv.bootstrap),
                "registry": inv.registry.url if inv.registry else ""}
        try:
            command = quote_command(ctx.config.probes.status, **fill)
        except ConfigError:  # a template asking for values only a test has: no peer view
            return None
        answer, error = parse_output("status", session.run(command, timeout=20).stdout)
        return peers_seen_of(answer) if error is None else None

    def respawn(self, ctx: StageContext, node: str, *, redeploy: bool) -> str | None:
        from pytest_vpstest.errors import DeployError
        from pytest_vpstest.fleet.deploy import deploy, start_command
        from pytest_vpstest.fleet.services import service_manager

        artifact = self._artifact(ctx)
        try:
            if redeploy:
                if artifact is None:
                    return "the binary is missing and there is no artifact to deploy"
                report = deploy(self.pool(ctx), ctx.inventory, ctx.config, artifact, nodes=[node],
                                log=ctx.log)
                return None if report.succeeded == 1 else "; ".join(report.failure_lines())
            session = self.pool(ctx).session(node)
            plan = plan_node(session.node, ctx.config, artifact)
            manager = service_manager(session, install_path=plan.install_path, log_dir=plan.log_dir)
            manager.stop(plan.service)
            status = manager.start(plan.service, start_command(plan, ctx.inventory, ctx.config))
            return None if status.running else f"service did not start: {status.detail or 'not running'}"
        except (DeployError, VpsTestError) as exc:
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    # -- BUILD -------------------------------------------------------------------------------
    def build(self, ctx: StageContext) -> m.BuildFinished:
        cfg = ctx.config
        if cfg.build is None:
            ctx.log("no build configured; deploying the configured artifact as it is")
            return m.BuildFinished(True)
        ctx.log(f"building: {cfg.build.command} (in {cfg.workspace})")
        result = run_build(cfg, log=ctx.log, env=child_env(ctx.project_dir))
        if result.ok:
            if result.artifact:
                ctx.runner["artifact"] = str(result.artifact)
            warnings = result.warnings
            ctx.log(f"build complete in {result.duration:.1f}s: {result.artifact or 'no artifact'}"
                    + (f" ({len(warnings)} warning(s))" if warnings else ""))
            return m.BuildFinished(True)
        errors = [str(e) for e in result.errors]
        error = result.error or (errors[0] if errors else "build failed")
        for e in errors[:10]:
            ctx.log(f"  build error: {e}")
        return m.BuildFinished(False, str(error)[:500])

    # -- DEPLOY ------------------------------------------------------------------------------
    def deploy(self, ctx: StageContext) -> m.DeployFinished:
        from pytest_vpstest.errors import DeployError
        from pytest_vpstest.fleet.deploy import deploy

        artifact = self._artifact(ctx)
        if artifact is None:
            raise DeployError("nothing to deploy: configure build.artifact")
        report: DeployReport
        try:
            report = deploy(self.pool(ctx), ctx.inventory, ctx.config, artifact, log=ctx.log)
        except DeployError as exc:
            partial: DeployReport | None = getattr(exc, "report", None)
            if partial is None:
                raise
            report = partial
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
                # A node that could not be reached stays "offline"; one that was, but failed, is degraded.
                entry["status"] = "offline" if d.stage_failed == "connect" else "degraded"
                entry["error"] = f"deploy {d.stage_failed}: {d.error}"
            nodes[name] = entry
        return m.DeployFinished(report.succeeded, report.total)

    # -- TEST --------------------------------------------------------------------------------
    def test(self, ctx: StageContext, checkpoint: int) -> TestOutcome:
        from pytest_vpstest.loop.fixer import run_interruptible

        cfg = ctx.config
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        run_dir = ctx.project_dir / "runs" / f"loop-{stamp}-c{checkpoint}"
        run_dir.mkdir(parents=True, exist_ok=True)
        results_path = run_dir / "results.json"
        suites_dir = suites_directory()
        argv = [sys.executable, "-m", "pytest", str(suites_dir), *_plugins_off(), "-q", "-o", "addopts=",
                "--rootdir", str(suites_dir),
                "--vps-config", str(cfg.path), "--vps-focus", cfg.focus or FULL_SUITE,
                "--vps-criteria", cfg.criteria or "threshold", "--vps-proof", cfg.proof or "all-evidence",
                "--vps-state-dir", str(ctx.state_dir), "--vps-results-json", str(results_path),
                "--vps-project", cfg.project, "--vps-skip-build", "--vps-skip-deploy",
                "--html", str(run_dir / "report.html"), "--self-contained-html", *self.pytest_args]
        if ctx.inventory.path is not None:
            argv += ["--vps-nodes", str(ctx.inventory.path)]
        if cfg.criteria_expr:
            argv += ["--vps-criteria-expr", cfg.criteria_expr]
        # Nodes not Live, and nodes whose tests the config keeps from automatic runs: the plugin
        # skips every test touching one, with the reason given here.
        skip = nodes_to_skip(ctx.inventory.names, dict(ctx.runner.get("unhealthy") or {}),
                             cfg.dashboard.tests_mode)
        if skip:
            write_json_atomic(run_dir / SKIP_FILE, skip)
            argv += [SKIP_NODES_OPTION, str(run_dir / SKIP_FILE)]
            ctx.log(f"leaving out {len(skip)} node(s): " + "; ".join(skip.values()))
        label = ("initial", "after-1hr", "after-6hr")[min(checkpoint, 2)]
        env = {**os.environ, "VPSTEST_RUNNER_TOKEN": str(ctx.token), "VPSTEST_LOOP_STATE": f"TEST:{label}",
               "VPSTEST_RUNNER_PID": str(os.getpid()),
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
        failed_nodes = tuple(frozenset(str(n) for n in f.get("nodes") or ())
                             for f in results.get("failed_tests") or ())
        return TestOutcome(passed, summary, results, results_path, failed_nodes)

    # -- FIX ---------------------------------------------------------------------------------
    def fix(self, ctx: StageContext, reason: str) -> m.FixFinished:
        from pytest_vpstest.loop.fixer import git_head, obtain_fix, run_fix

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
    def _fix_event(ctx: StageContext, outcome: FixOutcome) -> m.FixFinished:
        if outcome.commit is None:
            return m.FixFinished(None, outcome.error)
        ctx.runner.pop("fix_base", None)
        c = outcome.commit
        when = datetime.fromisoformat(c.time.replace("Z", "+00:00"))
        return m.FixFinished(m.Commit(c.sha, c.message, when))

    # -- RESTART / COMPLETE / STOPPED --------------------------------------------------------
    def restart(self, ctx: StageContext) -> None:
        from pytest_vpstest.fleet.services import service_manager

        ctx.log("soak regression: stopping the service on every node before starting over")

        def stop_one(session: Session) -> None:
            plan = plan_node(session.node, ctx.config)
            service_manager(session, install_path=plan.install_path, log_dir=plan.log_dir).stop(plan.service)

        for name, res in self.pool(ctx).fan_out(ctx.inventory.names, stop_one).items():
            if isinstance(res, Exception):
                ctx.log(f"  {name}: could not stop the service: {res}")
        self.close()

    def finish(self, ctx: StageContext) -> None:
        from pytest_vpstest.loop.fixer import collect_logs

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
        """The loop's proof: the last run's criteria, the whole loop's duration, COMPLETE."""
        from pytest_vpstest.criteria import Verdict
        from pytest_vpstest.records.proof import ProofInput, write_proof

        last = ctx.runner.get("last_results")
        if not last:
            return None
        results = json.loads(Path(last).read_text(encoding="utf-8"))
        verdict = Verdict.from_json({"passed": results.get("passed"), **(results.get("verdict") or {})})
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
