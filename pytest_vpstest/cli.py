"""The ``vpstest`` command line: one subcommand per job; the work lives in the library modules.

    vpstest start [project] [focus] [criteria] [proof]   interview, then run the loop (background)
    vpstest status [--json]                              every project's loop
    vpstest stop <project>                               graceful stop (STOPPED, "user stop")
    vpstest logs <project> [--follow] [-n N]             recent transitions and runner log lines
    vpstest diagnose <node>                              service, logs, disk, memory, sockets over SSH
    vpstest nodes [--json]                               the fleet with live SSH reachability
    vpstest contract check [--node N] [--json]           every probe template once: what works, how to fix
    vpstest demo [--keep-lab] [--workspace DIR] [--prefix P]  the whole loop against the embedded lab
    vpstest lab up|down|status                           the embedded lab

``start`` and the detached runner live here; the other subcommands in ``pytest_vpstest.commands``
(status/stop/logs, nodes/diagnose), ``demo`` and ``lab.cli``. Errors are one line on stderr with exit
status 2; Ctrl-C exits 130 without touching the state file
(the runner itself turns Ctrl-C into a graceful stop).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_vpstest import __version__
from pytest_vpstest.commands import contract, dashboard, loops, nodes
from pytest_vpstest.commands.loading import (
    add_fleet_options,
    add_state_dir_option,
    config_path,
    default_state_dir,
    load_config,
    load_inventory,
    resolve_inventory_path,
    state_dir_of,
)
from pytest_vpstest.commands.loops import project_status
from pytest_vpstest.config import ProjectConfig
from pytest_vpstest.errors import ConfigError, VpsTestError
from pytest_vpstest.inventory import Inventory
from pytest_vpstest.suite import FOCUSES, FULL_SUITE

if TYPE_CHECKING:
    from pytest_vpstest.interview import Plan

__all__ = [
    "build_parser",
    "default_state_dir",
    "launch",
    "load_config",
    "load_inventory",
    "main",
    "run_foreground",
    "start_background",
]


# ----------------------------------------------------------------------------- start


def _cmd_start(args: argparse.Namespace) -> int:
    from pytest_vpstest.interview import Cancelled, Plan, console_io, prefill_from, run_interview

    if not args.yes and not sys.stdin.isatty():
        raise VpsTestError("no terminal for the interview; pass --yes to start with the given parameters")
    config = load_config(args.config)
    inventory = load_inventory(args.nodes, config)
    state_dir = state_dir_of(args, config)
    prefill = prefill_from([args.project, args.focus, args.criteria, args.proof])
    if args.yes:
        plan = Plan(
            project=prefill["project"] or config.project,
            focus=prefill["focus"] or config.focus or FULL_SUITE,
            criteria=prefill["criteria"] or config.criteria or "threshold",
            proof=prefill["proof"] or config.proof or "all-evidence",
            criteria_expr=config.criteria_expr,
        )
    else:
        try:
            plan = run_interview(prefill, config=config, inventory=inventory, io=console_io())
        except Cancelled as exc:
            print(f"vpstest: cancelled ({exc})", file=sys.stderr)
            return 1
    _check_plan(plan)
    return launch(plan, args=args, state_dir=state_dir, config=config, inventory=inventory)


def _check_plan(plan: Plan) -> None:
    from pytest_vpstest.config import CRITERIA, FOCUSES, PROOFS
    from pytest_vpstest.records.store import is_safe_identifier

    if not is_safe_identifier(plan.project):
        raise ConfigError(f"project name {plan.project!r} is not a safe identifier", key="project")
    for key, value, allowed in (("focus", plan.focus, FOCUSES), ("criteria", plan.criteria, CRITERIA),
                                ("proof", plan.proof, PROOFS)):
        if value not in allowed:
            raise ConfigError(f"unknown {key} {value!r}", key=key, allowed=allowed)


def launch(
    plan: Plan, *, args: argparse.Namespace, state_dir: Path, config: ProjectConfig, inventory: Inventory
) -> int:
    """Run the loop in the foreground, or start it detached and return once it holds the lease."""
    if args.foreground:
        return run_foreground(plan.apply(config), inventory, state_dir, resume=args.resume)
    cfg_path = config_path(args.config)
    argv = [sys.executable, "-m", "pytest_vpstest.cli", "_runner", "--config", str(cfg_path),
            "--state-dir", str(state_dir), "--project", plan.project, "--focus", plan.focus,
            "--criteria", plan.criteria, "--proof", plan.proof]
    if plan.criteria_expr:
        argv += ["--criteria-expr", plan.criteria_expr]
    if args.nodes:
        argv += ["--nodes", str(resolve_inventory_path(args.nodes, Path.cwd()))]
    if args.resume:
        from pytest_vpstest.loop.runner import nothing_to_resume

        # Said here, before a runner is started: otherwise it would be "started", then exit.
        why = nothing_to_resume(state_dir, plan.project)
        if why is not None:
            raise VpsTestError(why)
        argv.append("--resume")
    return start_background(argv, state_dir, plan.project)


def start_background(
    argv: Sequence[str], state_dir: Path, project: str, *, wait_seconds: float = 15.0
) -> int:
    """Start the runner in its own session (it survives the terminal); report its pid or its error."""
    pdir = state_dir / project
    pdir.mkdir(parents=True, exist_ok=True)
    out_path = pdir / "runner.out"
    with out_path.open("ab") as out:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            cwd=str(Path.cwd()), close_fds=True,
        )
    (pdir / "runner.pid").write_text(f"{proc.pid}\n")
    from pytest_vpstest.records.store import StateStore

    store = StateStore(state_dir, project)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            lines = [x for x in out_path.read_text(errors="replace").splitlines() if x.strip()]
            errors = [x for x in lines if x.startswith("vpstest: error: ")]
            if rc == 2 or errors or not (pdir / "state.json").exists():
                raise VpsTestError(errors[-1].removeprefix("vpstest: error: ") if errors
                                   else (lines[-1] if lines else f"runner exited {rc}"))
            row = project_status(state_dir, project)
            print(f"vpstest: {project}: runner pid {proc.pid} already finished: {row['state']}"
                  + (f" ({row['stop_reason']})" if row["stop_reason"] else ""))
            return 0 if row["state"] == "COMPLETE" else 1
        holder = store.holder()
        if holder is not None and holder.pid == proc.pid:
            print(f"vpstest: {project}: runner started in the background (pid {proc.pid})")
            print(f"  follow it:  vpstest logs {project} --follow --state-dir {state_dir}")
            print(f"  stop it:    vpstest stop {project} --state-dir {state_dir}")
            return 0
        time.sleep(0.1)
    print(f"vpstest: {project}: runner pid {proc.pid} started; it has not taken the lease yet "
          f"(see {pdir / 'runner.log'})")
    return 0


def run_foreground(config: ProjectConfig, inventory: Inventory, state_dir: Path, *, resume: bool,
                   out: Callable[[str], None] | None = None, **runner_kw: Any) -> int:
    from pytest_vpstest.loop import machine as m
    from pytest_vpstest.loop.runner import Runner

    printer = out or (lambda line: print(line, flush=True))
    runner = Runner(config, inventory, state_dir, out=printer, install_signal_handlers=True, **runner_kw)
    final = runner.run(resume_only=resume)
    if final.state is m.State.COMPLETE:
        print(f"vpstest: {config.project}: COMPLETE")
        return 0
    print(f"vpstest: {config.project}: {final.state} ({final.stop_reason or ''})")
    return 1


def _cmd_runner(args: argparse.Namespace) -> int:
    """The detached runner process (started by ``start``)."""
    from pytest_vpstest.interview import Plan

    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = load_config(args.config)
    inventory = load_inventory(args.nodes, config)
    plan = Plan(args.project, args.focus, args.criteria, args.proof, args.criteria_expr)
    from pytest_vpstest.loop.runner import Runner

    runner = Runner(plan.apply(config), inventory, Path(args.state_dir), install_signal_handlers=True)
    final = runner.run(resume_only=args.resume)
    return 0 if str(final.state) == "COMPLETE" else 1


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpstest",
        description="Build, deploy, test, fix and soak P2P software across a fleet of nodes.",
    )
    parser.add_argument("--version", action="version", version=f"vpstest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("start", help="interview, then run the build/deploy/test/fix/soak loop",
                       description="Ask for what is missing (project, focus, criteria, proof), show the test "
                                   "plan, then run the loop in the background (or --foreground).")
    p.add_argument("project", nargs="?", help="project name")
    p.add_argument("focus", nargs="?", help=" | ".join(FOCUSES))
    p.add_argument("criteria", nargs="?", help="all-pass | threshold | improvement | custom")
    p.add_argument("proof", nargs="?", help="logs | metrics | manual-verify | all-evidence")
    add_fleet_options(p)
    add_state_dir_option(p)
    p.add_argument("--yes", "-y", action="store_true", help="no questions: use the parameters and config")
    p.add_argument("--foreground", action="store_true", help="run in this terminal instead of detached")
    p.add_argument("--resume", action="store_true", help="only continue an unfinished run")
    p.set_defaults(handler=_cmd_start)

    loops.register(sub)
    nodes.register(sub)
    contract.register(sub)
    dashboard.register(sub)

    from pytest_vpstest import demo

    demo.register(sub)

    from pytest_vpstest.lab import cli as lab_cli

    lab_cli.register(sub)
    return parser


def _runner_parser() -> argparse.ArgumentParser:
    """The hidden ``vpstest _runner`` entry the detached runner process is started with."""
    p = argparse.ArgumentParser(prog="vpstest _runner")
    p.add_argument("--config", required=True)
    p.add_argument("--nodes")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--focus", required=True)
    p.add_argument("--criteria", required=True)
    p.add_argument("--proof", required=True)
    p.add_argument("--criteria-expr")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(handler=_cmd_runner)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The ``vpstest`` command; a reader that goes away (``vpstest ... | head -1``) ends it quietly."""
    try:
        try:
            return _main(argv)
        finally:  # also after argparse's --help (SystemExit): a broken pipe shows here, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        # Nothing more can be said on stdout; send what Python flushes at exit to /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_runner"]:
        args = _runner_parser().parse_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        rc: int = args.handler(args)
    except VpsTestError as exc:
        print(f"vpstest: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vpstest: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except OSError as exc:
        print(f"vpstest: error: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
