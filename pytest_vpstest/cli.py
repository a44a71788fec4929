"""The ``vpstest`` command line: one subcommand per job; the work lives in the library modules.

    vpstest start [project] [focus] [criteria] [proof]   interview, then run the loop (background)
    vpstest status [--json]                              every project's loop
    vpstest stop <project>                               graceful stop (STOPPED, "user stop")
    vpstest logs <project> [--follow] [-n N]             recent transitions and runner log lines
    vpstest diagnose <node>                              service, logs, disk, memory, sockets over SSH
    vpstest nodes [--json]                               the fleet with live SSH reachability
    vpstest demo [--keep-lab] [--workspace DIR]          the whole loop against the embedded lab
    vpstest lab up|down|status                           the embedded lab

Errors are one line on stderr with exit status 2; Ctrl-C exits 130 without touching the state file
(the runner itself turns Ctrl-C into a graceful stop).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_vpstest import __version__
from pytest_vpstest.errors import ConfigError, NodeError, StateError, VpsTestError

__all__ = ["build_parser", "default_state_dir", "main"]


def default_state_dir() -> Path:
    """``$VPSTEST_STATE_DIR``, else ``$XDG_STATE_HOME/vpstest``, else ``~/.local/state/vpstest``."""
    if os.environ.get("VPSTEST_STATE_DIR"):
        return Path(os.environ["VPSTEST_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vpstest"


# ----------------------------------------------------------------------------- loading


def _config_path(arg: str | None) -> Path:
    spec = arg or os.environ.get("VPSTEST_CONFIG") or "vpstest.yaml"
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        raise ConfigError("config file not found; pass --config FILE (or set VPSTEST_CONFIG)", path=path)
    return path


def _loaders() -> Any:
    mod = importlib.import_module("pytest_vpstest.config")
    if not hasattr(mod, "load_project_config"):
        raise ConfigError("this installation cannot load config files (config.load_project_config missing)")
    return mod


def load_config(arg: str | None) -> Any:
    path = _config_path(arg)
    return _loaders().load_project_config(path)


def resolve_inventory_path(spec: str, base: Path) -> Path:
    """``lab`` / ``lab:<prefix>`` → the lab's inventory; otherwise a path relative to ``base``."""
    if spec == "lab" or spec.startswith("lab:"):
        from pytest_vpstest import lab

        prefix = spec[4:] if ":" in spec else "vps"
        path = Path(lab.inventory_path(prefix))
        if not path.exists():
            raise ConfigError(f"no lab inventory at {path}: start the lab with 'vpstest lab up'")
        return path
    path = Path(spec).expanduser()
    return path if path.is_absolute() else base / path


def load_inventory(nodes: str | None, config: Any | None) -> Any:
    if nodes:
        path = resolve_inventory_path(nodes, Path.cwd())
    elif config is not None and config.inventory:
        base = config.path.parent if config.path is not None else Path.cwd()
        path = resolve_inventory_path(config.inventory, base)
    else:
        raise ConfigError("no inventory: pass --nodes FILE|lab or set 'inventory' in the config")
    return _loaders().load_inventory(path)


def state_dir_of(args: argparse.Namespace, config: Any | None = None) -> Path:
    if getattr(args, "state_dir", None):
        return Path(args.state_dir).expanduser().resolve()
    if config is not None and config.state_dir is not None:
        return Path(config.state_dir)
    if getattr(args, "config", None):
        with contextlib.suppress(VpsTestError):
            cfg = load_config(args.config)
            if cfg.state_dir is not None:
                return Path(cfg.state_dir)
    return default_state_dir()


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
            focus=prefill["focus"] or config.focus or "full-suite",
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


def _check_plan(plan: Any) -> None:
    from pytest_vpstest.config import CRITERIA, FOCUSES, PROOFS
    from pytest_vpstest.records.store import is_safe_identifier

    if not is_safe_identifier(plan.project):
        raise ConfigError(f"project name {plan.project!r} is not a safe identifier", key="project")
    for key, value, allowed in (("focus", plan.focus, FOCUSES), ("criteria", plan.criteria, CRITERIA),
                                ("proof", plan.proof, PROOFS)):
        if value not in allowed:
            raise ConfigError(f"unknown {key} {value!r}", key=key, allowed=allowed)


def launch(plan: Any, *, args: argparse.Namespace, state_dir: Path, config: Any, inventory: Any) -> int:
    """Run the loop in the foreground, or start it detached and return once it holds the lease."""
    if args.foreground:
        return run_foreground(plan.apply(config), inventory, state_dir, resume=args.resume)
    cfg_path = _config_path(args.config)
    argv = [sys.executable, "-m", "pytest_vpstest.cli", "_runner", "--config", str(cfg_path),
            "--state-dir", str(state_dir), "--project", plan.project, "--focus", plan.focus,
            "--criteria", plan.criteria, "--proof", plan.proof]
    if plan.criteria_expr:
        argv += ["--criteria-expr", plan.criteria_expr]
    if args.nodes:
        argv += ["--nodes", str(resolve_inventory_path(args.nodes, Path.cwd()))]
    if args.resume:
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


def run_foreground(config: Any, inventory: Any, state_dir: Path, *, resume: bool,
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


# ----------------------------------------------------------------------------- status / stop / logs


def _projects(state_dir: Path) -> list[str]:
    if not state_dir.is_dir():
        return []
    return sorted(p.name for p in state_dir.iterdir()
                  if p.is_dir() and ((p / "state.json").exists() or (p / "transitions.jsonl").exists()))


def project_status(state_dir: Path, project: str) -> dict[str, Any]:
    from pytest_vpstest.records.store import StateStore

    store = StateStore(state_dir, project)
    doc = store.load() or {}
    holder = store.holder()
    ts = doc.get("timestamps") or {}
    tr = doc.get("test_results") or {}
    machine = doc.get("machine") or {}
    return {
        "project": project,
        "state": doc.get("state"),
        "phase": doc.get("phase"),
        "since": ts.get("last_state_change"),
        "wait_until": ts.get("wait_until"),
        "counters": doc.get("counters") or {},
        "last_result": None if not tr else {"passed": tr.get("passed"), "time": tr.get("last_run")},
        "stop_reason": machine.get("stop_reason"),
        "commits": len(doc.get("commits") or []),
        "runner_alive": holder is not None,
        "runner_pid": holder.pid if holder is not None else None,
    }


def _cmd_status(args: argparse.Namespace) -> int:
    state_dir = state_dir_of(args)
    rows = [project_status(state_dir, p) for p in _projects(state_dir)]
    if args.json:
        print(json.dumps({"state_dir": str(state_dir), "projects": rows}, indent=2))
        return 0
    if not rows:
        print(f"no loops in {state_dir}")
        return 0
    header = f"{'PROJECT':<16} {'STATE':<9} {'PHASE':<8} {'SINCE':<21} {'WAIT UNTIL':<21} " \
             f"{'FIX/BLD/DEP/TST':<16} {'LAST RESULT':<12} RUNNER"
    print(header)
    for r in rows:
        c = r["counters"]
        counters = "/".join(str(c.get(k, 0)) for k in ("fix_attempts", "build_count", "deploy_count",
                                                         "test_count"))
        lr = r["last_result"]
        last = "-" if lr is None else ("passed" if lr.get("passed") else "failed")
        alive = f"alive (pid {r['runner_pid']})" if r["runner_alive"] else "not running"
        since, until = _short_time(r["since"]), _short_time(r["wait_until"])
        print(f"{r['project']:<16} {r['state'] or '-':<9} {r['phase'] or '-':<8} {since:<21} "
              f"{until:<21} {counters:<16} {last:<12} {alive}")
        if r["stop_reason"]:
            print(f"{'':<16} stop reason: {r['stop_reason']}")
    return 0


def _short_time(value: str | None) -> str:
    """An ISO time to the second (``2026-01-10T10:00:00Z``), for tables."""
    if not value:
        return "-"
    return value[:19] + "Z" if len(value) > 19 else value


def _cmd_stop(args: argparse.Namespace) -> int:
    from pytest_vpstest.loop import machine as m
    from pytest_vpstest.loop.runner import request_stop
    from pytest_vpstest.records.store import StateStore

    state_dir = state_dir_of(args)
    store = StateStore(state_dir, args.project)
    doc = store.load()
    if doc is None:
        raise StateError(f"no project '{args.project}' in {state_dir}")
    holder = store.holder()
    if holder is None:
        state = m.RunState.from_document(doc)
        if state.state in m.TERMINAL:
            print(f"vpstest: {args.project} is already {state.state}")
            return 0
        # No runner: record the stop ourselves, through the lease like any writer.
        lease = store.acquire()
        try:
            new, _ = m.step(state, m.UserStop("user stop"), datetime.now(UTC))
            document = {**doc, **new.to_document()}
            store.commit(lease, document, {"from": str(state.state), "to": str(new.state),
                                           "event": "UserStop", "reason": "user stop"})
        finally:
            store.release(lease)
        print(f"vpstest: {args.project}: no runner was running; state set to STOPPED (user stop)")
        return 0
    request_stop(state_dir, args.project)
    if holder.host == socket.gethostname():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(holder.pid, signal.SIGTERM)
    print(f"vpstest: {args.project}: stop requested (runner pid {holder.pid} on {holder.host})")
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        current = store.load() or {}
        if current.get("state") in ("STOPPED", "COMPLETE") and store.holder() is None:
            print(f"vpstest: {args.project}: {current.get('state')}")
            return 0
        time.sleep(0.2)
    raise StateError(f"project '{args.project}': runner pid {holder.pid} did not stop within "
                     f"{args.timeout:g}s; it will stop at the end of its current step")


def _tail_lines(path: Path, n: int) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            return fh.read().decode("utf-8", "replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def _cmd_logs(args: argparse.Namespace) -> int:
    from pytest_vpstest.records.store import StateStore

    state_dir = state_dir_of(args)
    store = StateStore(state_dir, args.project)
    if not store.directory.is_dir():
        raise StateError(f"no project '{args.project}' in {state_dir}")
    entries = store.transitions()[-args.lines:]
    print(f"== transitions ({store.log_path})")
    for e in entries:
        print(f"{e.get('time')}  #{e.get('seq'):<4} {e.get('from', '?'):>8} -> {e.get('to', '?'):<9} "
              f"{e.get('reason', '')}")
    log = store.directory / "runner.log"
    print(f"== runner log ({log})")
    lines = _tail_lines(log, args.lines)
    for line in lines:
        print(line)
    if not args.follow:
        return 0
    with contextlib.suppress(FileNotFoundError):
        pos = log.stat().st_size
    if not log.exists():
        pos = 0
    try:
        idle = 0.0
        while True:
            time.sleep(0.5)
            if log.exists() and log.stat().st_size > pos:
                with log.open("rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                pos += len(chunk)
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
                idle = 0.0
            else:
                idle += 0.5
            if idle >= 2.0 and store.holder() is None:
                doc = store.load() or {}
                if doc.get("state") in ("COMPLETE", "STOPPED"):
                    print(f"== {args.project} is {doc.get('state')}; runner not running")
                    return 0
    except KeyboardInterrupt:
        return 0


# ----------------------------------------------------------------------------- nodes / diagnose

_ROLE_LABEL = {"registry": "Registry", "bootstrap": "Bootstrap", "test": "Test"}
_NAT_SHORT = {"full-cone": "Full Cone", "address-restricted": "Addr Restr", "port-restricted": "Port Restr",
              "symmetric": "Symmetric"}
_NAT_SUMMARY = {
    "full-cone": ("Full Cone NAT", "Easy - 95% success"),
    "address-restricted": ("Address Restricted", "Medium - 85% success"),
    "port-restricted": ("Port Restricted", "Medium - 85% success"),
    "symmetric": ("Symmetric NAT", "Hard - 70% success"),
}


def _inventory_for(args: argparse.Namespace) -> Any:
    config = None
    default_config = os.environ.get("VPSTEST_CONFIG") or Path("vpstest.yaml").exists()
    if args.config or (not args.nodes and default_config):
        config = load_config(args.config)
    return load_inventory(args.nodes, config), config


def check_reachability(inventory: Any, timeout: float = 10.0) -> dict[str, str | None]:
    """``{node: None}`` when SSH answered, else ``{node: one-line cause}``; checked in parallel."""
    from pytest_vpstest.fleet.remote import SessionPool

    with SessionPool(inventory) as pool:
        results = pool.fan_out(inventory.names, lambda s: s.run("true", timeout=timeout),
                               parallelism=max(1, len(inventory.names)))
    out: dict[str, str | None] = {}
    for name, res in results.items():
        if isinstance(res, NodeError):
            out[name] = str(res)
        elif not res.ok:
            out[name] = f"{name}: {res.summary()}"
        else:
            out[name] = None
    return out


def _cmd_nodes(args: argparse.Namespace) -> int:
    inventory, _ = _inventory_for(args)
    reach = check_reachability(inventory, timeout=args.timeout)
    rows = []
    for n in inventory.nodes:
        rows.append({"name": n.name, "host": n.host, "fallback_ip": n.fallback_ip, "role": n.role,
                     "nat": n.nat, "provider": n.provider, "region": n.region, "notes": n.notes,
                     "status": "ONLINE" if reach.get(n.name) is None else "UNREACHABLE",
                     "error": reach.get(n.name)})
    if args.json:
        print(json.dumps({"checked_at": _iso_now(), "nodes": rows}, indent=2))
        return 0 if all(r["status"] == "ONLINE" for r in rows) else 1
    title = f"VPS Nodes Status (verified {_iso_now()})"
    print(title)
    print("=" * len(title))
    print()
    width = max([len(r["name"]) for r in rows] + [8])
    for r in rows:
        role = f"NAT: {_NAT_SHORT[r['nat']]}" if r["nat"] != "none" else _ROLE_LABEL.get(r["role"], r["role"])
        where = "/".join(x for x in (r["provider"], r["region"]) if x) or "-"
        notes = f"  [{r['notes']}]" if r["notes"] else ""
        line = (f"{r['name']:<{width}}  ({role}){'':<{max(0, 16 - len(role))}} {r['host']:<17} {where:<19} "
                f"{r['status']:<11}{notes}")
        print(line.rstrip())
        if r["error"]:
            print(f"{'':<{width}}  -> {r['error']}")
    nat_rows = [r for r in rows if r["nat"] != "none"]
    if nat_rows:
        print()
        print("NAT Emulation Summary:")
        for r in nat_rows:
            label, difficulty = _NAT_SUMMARY.get(r["nat"], (r["nat"], ""))
            print(f"  {r['name'] + ':':<{width + 1}}  {label:<20} ({difficulty})")
    return 0 if all(r["status"] == "ONLINE" for r in rows) else 1


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from pytest_vpstest.fleet.remote import SessionPool, quote_command, service_manager

    inventory, config = _inventory_for(args)
    try:
        node = inventory.node(args.node)
    except KeyError:
        raise NodeError(args.node, f"not in the inventory (nodes: {', '.join(inventory.names)})") from None
    install_path = node.install_path or (config.deploy.install_path if config else "/opt/vpstest/")
    log_dir = node.log_dir or "/var/log/vpstest"
    with SessionPool(inventory) as pool:
        session = pool.session(node.name)
        first = session.run("uname -a; uptime", timeout=args.timeout)  # raises UnreachableNodeError
        sections: list[tuple[str, str]] = [("System", first.stdout.strip() or first.summary())]
        services = _service_names(config)
        mgr = service_manager(session, install_path=install_path, log_dir=log_dir)
        for svc in services:
            try:
                st = mgr.status(svc)
                state = f"running (pid {st.pid})" if st.running else "not running"
                sections.append((f"Service {svc}", f"{state}{' - ' + st.detail if st.detail else ''}"))
                sections.append((f"Recent logs of {svc}", mgr.logs(svc, args.lines).rstrip() or "(empty)"))
            except VpsTestError as exc:
                sections.append((f"Service {svc}", f"could not inspect: {exc}"))
        checks = (
            ("Disk", "df -h " + quote_command("{p}", p=install_path.rstrip("/") or "/") + " / 2>/dev/null"),
            ("Memory", "free -m 2>/dev/null || head -5 /proc/meminfo"),
            ("Listening sockets", "ss -tulpn 2>/dev/null || netstat -tulpn 2>/dev/null || cat /proc/net/udp"),
        )
        for title, cmd in checks:
            res = session.run(cmd, timeout=args.timeout)
            sections.append((title, res.stdout.rstrip() or res.summary()))
    header = f"Diagnosis of {node.name} ({node.host}, role {node.role}, NAT {node.nat}) at {_iso_now()}"
    print(header)
    print("=" * len(header))
    for title, body in sections:
        print()
        print(f"## {title}")
        print(body)
    return 0


def _service_names(config: Any) -> list[str]:
    if config is None:
        return []
    prefix = config.deploy.service_prefix
    names = [f"{prefix}-{name}" for name, _ in config.modules]
    return names or [f"{prefix}-{config.project}"]


# ----------------------------------------------------------------------------- parser


def _add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", metavar="DIR",
                   help="state directory (default: $VPSTEST_STATE_DIR, else ~/.local/state/vpstest)")


def _add_fleet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="project config (default: ./vpstest.yaml)")
    p.add_argument("--nodes", metavar="FILE|lab", help="node inventory, or 'lab' for the embedded lab")


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
    p.add_argument("focus", nargs="?", help="connectivity | nat-traversal | gossip | throughput | full-suite")
    p.add_argument("criteria", nargs="?", help="all-pass | threshold | improvement | custom")
    p.add_argument("proof", nargs="?", help="logs | metrics | manual-verify | all-evidence")
    _add_fleet(p)
    _add_state_dir(p)
    p.add_argument("--yes", "-y", action="store_true", help="no questions: use the parameters and config")
    p.add_argument("--foreground", action="store_true", help="run in this terminal instead of detached")
    p.add_argument("--resume", action="store_true", help="only continue an unfinished run")
    p.set_defaults(handler=_cmd_start)

    p = sub.add_parser("status", help="show every project's loop", description="Show every project's loop.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", metavar="FILE", help="take the state directory from this config")
    _add_state_dir(p)
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser("stop", help="gracefully stop a project's loop",
                       description="Ask the runner to stop; it saves the state as STOPPED ('user stop').")
    p.add_argument("project")
    p.add_argument("--config", metavar="FILE", help="take the state directory from this config")
    _add_state_dir(p)
    p.add_argument("--no-wait", action="store_true", help="return once the request is written")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the runner (default 60)")
    p.set_defaults(handler=_cmd_stop)

    p = sub.add_parser("logs", help="recent transitions and runner log lines of a project",
                       description="Recent transitions and runner log lines of a project.")
    p.add_argument("project")
    p.add_argument("--config", metavar="FILE", help="take the state directory from this config")
    _add_state_dir(p)
    p.add_argument("-n", "--lines", type=int, default=30, help="how many of each (default 30)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new runner log lines")
    p.set_defaults(handler=_cmd_logs)

    p = sub.add_parser("diagnose", help="inspect one node over SSH",
                       description="Service status, recent logs, disk, memory and listening sockets "
                                   "of a node.")
    p.add_argument("node")
    _add_fleet(p)
    p.add_argument("-n", "--lines", type=int, default=40, help="log lines per service (default 40)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per remote command (default 15)")
    p.set_defaults(handler=_cmd_diagnose)

    p = sub.add_parser("nodes", help="list the fleet with live SSH reachability",
                       description="The 'VPS Nodes Status' listing, reachability checked in parallel.")
    _add_fleet(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per node (default 10)")
    p.set_defaults(handler=_cmd_nodes)

    p = sub.add_parser("dashboard", help="serve the live fleet dashboard (needs the 'dashboard' extra)",
                       description="A web page over the state directory and the history: every project's "
                                   "loop, the fleet's compartments, the matrix, the history, the log.")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8099, help="port (default 8099; 0 picks a free one)")
    p.add_argument("--config", metavar="FILE", action="append", default=[],
                   help="a project config (repeatable): its state_dir, token and node test settings")
    _add_state_dir(p)
    p.set_defaults(handler=_cmd_dashboard)

    from pytest_vpstest import demo

    demo.register(sub)

    from pytest_vpstest.lab import cli as lab_cli

    lab_cli.register(sub)
    return parser


def _cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        from pytest_vpstest.dashboard.app import Settings
        from pytest_vpstest.dashboard.server import serve
        from pytest_vpstest.dashboard.token import use_token
    except ImportError as exc:
        raise VpsTestError(
            f"the dashboard needs its extra: pip install 'pytest-vpstest[dashboard]' ({exc.name} is missing)"
        ) from None
    configs = [load_config(c) for c in args.config]
    state_dir = state_dir_of(args, configs[0] if configs else None)
    tokens = {c.dashboard.token for c in configs if c.dashboard.token}
    if len(tokens) > 1:
        raise ConfigError("the configs set different dashboard.token values; a dashboard has one token")
    token = use_token(state_dir, next(iter(tokens), None) or os.environ.get("VPSTEST_DASHBOARD_TOKEN"))
    settings = Settings(state_dir=state_dir, token=token, bind=args.bind,
                        configs={c.project: c for c in configs})
    print(f"dashboard: state directory {state_dir}")
    try:
        serve(settings, args.port)
    except OSError as exc:
        where = f"{args.bind}:{args.port}"
        raise VpsTestError(f"dashboard: cannot listen on {where}: {exc.strerror or exc}") from exc
    return 0


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
    except OSError as exc:
        print(f"vpstest: error: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
