"""``vpstest demo``: the whole loop, for real, against the embedded lab — the README's main job.

1. Creates a demo workspace: a git repository holding a copy of the reference agent's source
   (``pytest_vpstest/lab/agent``), a ``build.py`` that builds it into ``dist/agent.pyz``, a project
   config (``vpstest.yaml``: lab inventory, waits of seconds) and ``fixer.py``, the demo's fixer.
2. Plants a defect as its own commit: the agent drops datagrams relayed through a bootstrap (and
   logs an error for each), so the first TEST's relay connections fail.
3. Brings the lab up (as root: network namespaces with NAT; otherwise the loopback flavour), unless
   a lab of the demo's prefix is already up.
4. Runs the loop in the foreground: SETUP → BUILD → DEPLOY → TEST (fails) → FIX (the fixer reads the
   failure brief, repairs the defect and commits) → BUILD → DEPLOY → TEST (passes) → WAIT_1HR → TEST
   → WAIT_6HR → TEST → COMPLETE; then prints where the proof, state file, HTML report and logs are.
5. Stops the deployed services and takes the lab down again (unless ``--keep-lab`` or the lab was
   already up before the demo).

The default topology is ``small`` (registry, bootstrap, one port-restricted NAT node, one public
node): all three connection methods occur and four full test runs fit well within five minutes on
two cores; ``--topology full`` runs the ten-node lab (slower: the connectivity
matrix grows with the square of the nodes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_vpstest.errors import LabError, VpsTestError

__all__ = ["DEMO_PREFIX", "DEMO_PROJECT", "create_workspace", "plant_defect", "register", "run_demo"]

DEMO_PREFIX = "vdemo"
DEMO_PROJECT = "demo-agent"

# The planted defect: relayed datagrams are dropped (with an error line) instead of handled.
GOOD_LINE = 'self._on_peer(parsed[1], parsed[0], Route("relay", src))'
BROKEN_LINE = 'log.error("relay: dropped forwarded datagram from %s: sender check failed", parsed[0])'

_BUILD_PY = '''"""Build the agent into dist/agent.pyz. ``--check`` only compiles every source file (the
local verification the loop runs after a fix)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "agent"


def check() -> None:
    for path in sorted(SOURCE.glob("*.py")):
        try:
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        except SyntaxError as exc:
            sys.exit(f"{path.relative_to(ROOT)}:{exc.lineno}: error: {exc.msg}")
    print(f"check: {len(list(SOURCE.glob('*.py')))} source files compile")


def build() -> Path:
    spec = importlib.util.spec_from_file_location("agent_build", SOURCE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_zipapp(SOURCE, ROOT / "dist" / "agent.pyz")


if __name__ == "__main__":
    check()
    if "--check" not in sys.argv:
        out = build()
        print(f"built {out.relative_to(ROOT)} ({out.stat().st_size} bytes)")
'''

_FIXER_PY = '''"""The demo's fixer: reads the failure brief, repairs the relay defect it points at, commits.

Run by the loop's FIX stage as ``python3 fixer.py <brief.md>`` (any program could stand here:
a script, an automated code-repair tool, or a person committing by hand).
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BROKEN = {broken!r}
GOOD = {good!r}


def main() -> int:
    brief = Path(sys.argv[1]).read_text(encoding="utf-8")
    evidence = [line for line in brief.splitlines() if "relay" in line.lower()]
    print(f"fixer: read {{sys.argv[1]}} ({{len(evidence)}} line(s) mention relay)")
    for line in evidence[:5]:
        print(f"fixer:   {{line[:160]}}")
    node = ROOT / "agent" / "node.py"
    text = node.read_text(encoding="utf-8")
    if BROKEN not in text:
        print("fixer: no known defect in agent/node.py; nothing to fix")
        return 1
    node.write_text(text.replace(BROKEN, GOOD), encoding="utf-8")
    subprocess.run(["git", "-c", "user.name=vpstest demo fixer", "-c", "user.email=fixer@vpstest.invalid",
                    "commit", "-q", "-am", "fix: handle datagrams relayed by a bootstrap again"],
                   cwd=ROOT, check=True)
    print("fixer: committed the repair")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

_CONFIG_YAML = """# The demo project: the reference agent against the embedded lab, with waits of seconds.
project: {project}
workspace: {workspace}
inventory: "lab:{prefix}"
state_dir: {state_dir}
focus: connectivity
criteria: threshold
proof: all-evidence

modules:
  agent:
    binary: agent.pyz
    tests: [connectivity]

build:
  command: {python} build.py
  artifact: dist/agent.pyz
  timeout_seconds: 120

deploy:
  install_path: /opt/vpstest/
  service_prefix: vdemo
  start_command: >-
    {{bin}} run --node {{node}} --bind {{p2p_address}}
    --registry {{registry}} --bootstrap {{bootstrap}}
  registration_timeout_seconds: 20

tests:
  connectivity:
    success_criteria:
      direct: 99
      nat_traversed: 85
      relay: 100
    attempts: 2
    nat_cooloff_seconds: 0
    timeout_seconds: 4

soak:
  wait_1hr: true
  wait_6hr: true
  regression_tolerance: 0
  wait_1hr_seconds: 5
  wait_6hr_seconds: 10

fix:
  command: {python} fixer.py
  verify_command: {python} build.py --check
  commit_wait_seconds: 60

notify:
  channels:
    - kind: log
    - kind: voice
"""


def _git(ws: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=vpstest demo", "-c", "user.email=demo@vpstest.invalid",
                    "-c", "init.defaultBranch=main", *args], cwd=ws, check=True, capture_output=True)


def create_workspace(ws: Path, *, prefix: str = DEMO_PREFIX, project: str = DEMO_PROJECT) -> Path:
    """Write the demo workspace into ``ws`` (must be empty or missing) and commit it; return the config."""
    from pytest_vpstest.lab import agent as agent_pkg

    if ws.exists() and any(ws.iterdir()):
        raise VpsTestError(f"demo workspace {ws} is not empty; pass --workspace with a new directory")
    ws.mkdir(parents=True, exist_ok=True)
    src = Path(agent_pkg.__file__).resolve().parent
    (ws / "agent").mkdir()
    for f in sorted(src.glob("*.py")):
        shutil.copy2(f, ws / "agent" / f.name)
    (ws / "build.py").write_text(_BUILD_PY)
    (ws / "fixer.py").write_text(_FIXER_PY.format(broken=BROKEN_LINE, good=GOOD_LINE))
    config = ws / "vpstest.yaml"
    config.write_text(_CONFIG_YAML.format(project=project, workspace=ws, prefix=prefix,
                                          state_dir=ws / ".vpstest", python=sys.executable))
    (ws / ".gitignore").write_text("dist/\n.vpstest/\n__pycache__/\n")
    (ws / "README.md").write_text(
        "# vpstest demo workspace\n\nThe reference P2P agent (`agent/`), built by `build.py` into "
        "`dist/agent.pyz`.\nRun state lives in `.vpstest/`; `vpstest status --config vpstest.yaml`.\n"
    )
    _git(ws, "init", "-q")
    _git(ws, "add", "-A")
    _git(ws, "commit", "-q", "-m", "agent: import the reference node")
    plant_defect(ws)
    return config


def plant_defect(ws: Path) -> None:
    """Commit the defect: relayed datagrams are dropped with an error line instead of handled."""
    node = ws / "agent" / "node.py"
    text = node.read_text(encoding="utf-8")
    if text.count(GOOD_LINE) != 1:
        raise VpsTestError(f"{node}: the agent's relay handling changed; the demo cannot plant its defect "
                           f"(looked for {GOOD_LINE!r})")
    node.write_text(text.replace(GOOD_LINE, BROKEN_LINE), encoding="utf-8")
    _git(ws, "commit", "-q", "-am", "relay: check the sender of forwarded datagrams")


def _lab_is_up(prefix: str) -> bool:
    from pytest_vpstest import lab

    try:
        lab.status(prefix)
    except LabError:
        return False
    return lab.inventory_path(prefix).exists()


def _stop_services(config: Any, inventory: Any, say: Callable[[str], None]) -> None:
    """Stop the agent the demo deployed on every node (best effort; the lab's teardown follows)."""
    from pytest_vpstest.fleet.node import plan_node
    from pytest_vpstest.fleet.remote import Session, SessionPool
    from pytest_vpstest.fleet.services import service_manager

    def stop(session: Session) -> None:
        plan = plan_node(session.node, config)
        service_manager(session, install_path=plan.install_path, log_dir=plan.log_dir).stop(plan.service)

    with SessionPool(inventory) as pool:
        for name, res in pool.fan_out(inventory.names, stop).items():
            if isinstance(res, Exception):
                say(f"demo: could not stop the agent on {name}: {res}")


def run_demo(
    *,
    workspace: Path | None = None,
    keep_lab: bool = False,
    topology: str = "small",
    flavour: str | None = None,
    prefix: str = DEMO_PREFIX,
    out: Callable[[str], None] | None = None,
    dashboard_port: int | None = None,
) -> int:
    """Run the demo end to end; 0 when the loop reached COMPLETE.

    With ``dashboard_port`` (0: any free port) the dashboard is served for the run and its URL printed.
    """
    from pytest_vpstest import lab
    from pytest_vpstest.config import load_inventory, load_project_config
    from pytest_vpstest.lab.plan import check_prefix
    from pytest_vpstest.loop import machine as m
    from pytest_vpstest.loop.runner import Runner, machine_config

    say = out or (lambda line: print(line, flush=True))
    check_prefix(prefix)  # a bad prefix is one error line before anything is made
    t0 = time.monotonic()
    chosen = lab.choose_flavour(flavour)  # type: ignore[arg-type]
    if flavour is not None:
        why = "as asked"
    else:
        why = "root with network namespaces" if chosen == "netns" else "no root or no network namespaces"
    ws = workspace or Path(tempfile.mkdtemp(prefix="vpstest-demo-"))
    ws = ws.resolve()
    say(f"demo: workspace {ws}")
    config_path = create_workspace(ws, prefix=prefix)
    say("demo: planted a defect in agent/node.py (commit 'relay: check the sender of forwarded datagrams')")
    lab_was_up = _lab_is_up(prefix)
    if lab_was_up:
        say(f"demo: using the lab '{prefix}' that is already up")
    else:
        say(f"demo: bringing up the {chosen} lab '{prefix}' ({topology} topology; {why})")
        record = lab.up(topology, chosen, prefix)
        say(f"demo: lab up with {len(record.nodes)} nodes")
    config = load_project_config(config_path)
    inventory = load_inventory(lab.inventory_path(prefix))
    final = None
    dashboard: Any = None
    try:
        # Bounded fix attempts: a demo must end even if something unexpected breaks the lab.
        mcfg = machine_config(config)
        mcfg = m.MachineConfig(**{**mcfg.__dict__, "max_fix_attempts": 3})
        state_dir = config.state_dir or ws / ".vpstest"
        if dashboard_port is not None:
            dashboard, config = _start_dashboard(config, state_dir, dashboard_port, say)
        runner = Runner(config, inventory, state_dir, out=say, install_signal_handlers=True,
                        fix_retry_seconds=2.0, machine_cfg=mcfg)
        final = runner.run()
    finally:
        if dashboard is not None:
            dashboard.stop()
        if not keep_lab and not lab_was_up:
            with _suppress_all():
                _stop_services(config, inventory, say)
            removed = lab.down(prefix)
            say(f"demo: lab '{prefix}' taken down ({len(removed)} items removed)")
        elif keep_lab:
            say(f"demo: lab '{prefix}' left up (vpstest lab down --prefix {prefix} removes it)")
    _summary(final, config, ws, config_path, time.monotonic() - t0, say)
    return 0 if final is not None and final.state is m.State.COMPLETE else 1


def _start_dashboard(config: Any, state_dir: Path, port: int, say: Callable[[str], None]) -> tuple[Any, Any]:
    """Serve the dashboard over the demo's state directory; the runner POSTs its events to it.

    Returns (server or None, the config with ``notify.dashboard_url`` set). Without the dashboard
    extra, or with the port taken, the demo says so and runs without it.
    """
    from dataclasses import replace

    try:
        from pytest_vpstest.dashboard.app import Settings
        from pytest_vpstest.dashboard.server import DashboardServer
        from pytest_vpstest.dashboard.token import use_token
    except ImportError as exc:
        say(f"demo: no dashboard ({exc.name} is missing; pip install 'pytest-vpstest[dashboard]')")
        return None, config
    token = use_token(state_dir, config.dashboard.token)
    settings = Settings(state_dir=Path(state_dir), token=token, configs={config.project: config})
    try:
        server = DashboardServer(settings, port).start()
    except OSError as exc:
        say(f"demo: no dashboard: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); "
            "pass --dashboard-port 0 for any free port")
        return None, config
    say(f"demo: dashboard at {server.url}  (watch the loop there; actions token: {token})")
    url = f"{server.url}api/events"
    return server, replace(config, notify=replace(config.notify, dashboard_url=url))


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def _summary(final: Any, config: Any, ws: Path, config_path: Path, seconds: float,
             say: Callable[[str], None]) -> None:
    from pytest_vpstest.records.store import StateStore

    state_dir = config.state_dir or ws / ".vpstest"
    store = StateStore(state_dir, config.project)
    doc = store.load() or {}
    runner = doc.get("runner") or {}
    fin = runner.get("final") or {}
    proofs = sorted((state_dir / config.project).glob("proof-*.md"), key=lambda p: p.stat().st_mtime)
    reports = sorted((state_dir / config.project / "runs").glob("*/report.html"),
                     key=lambda p: p.stat().st_mtime)
    path = " -> ".join(e.get("to", "?") for e in store.transitions())
    say("")
    say(f"demo: {doc.get('state', '?')} after {seconds:.0f}s "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC)")
    say(f"  path:          IDLE -> {path}")
    commits = doc.get("commits") or []
    if commits:
        say("  fix commits:   " + ", ".join(f"{c['sha'][:12]} {c['message']}" for c in commits))
    say(f"  proof:         {fin.get('proof') or (proofs[-1] if proofs else 'none')}")
    say(f"  state file:    {state_dir / config.project / 'state.json'}")
    say(f"  transitions:   {state_dir / config.project / 'transitions.jsonl'}")
    say(f"  HTML report:   {fin.get('report') or (reports[-1] if reports else 'none')}")
    say(f"  node logs:     {state_dir / config.project / 'logs'}")
    say(f"  runner log:    {state_dir / config.project / 'runner.log'}")
    say(f"  failure brief: {state_dir / config.project / 'fix' / '1' / 'brief.md'}")
    say(f"  workspace:     {ws} (git log shows the planted defect and its fix)")
    say(f"  try:           vpstest dashboard --config {config_path}")
    say(f"                 vpstest status --config {config_path}")
    say(f"                 vpstest logs {config.project} --config {config_path}")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the whole loop against the embedded lab (the main job)",
        description="Create a demo workspace with a planted defect, bring the lab up and run SETUP → BUILD → "
                    "DEPLOY → TEST (fail) → FIX → ... → COMPLETE with waits of seconds.",
    )
    p.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--workspace", metavar="DIR", type=Path, help="new directory for the demo workspace")
    p.add_argument("--topology", default="small", help="small (default, quick) or full (the 10-node fleet)")
    p.add_argument("--prefix", default=DEMO_PREFIX,
                   help=f"the lab's name prefix (default {DEMO_PREFIX}): another prefix lets demos and labs "
                        "of other work run beside it")
    p.add_argument("--flavour", choices=("netns", "loopback"), default=None,
                   help="lab flavour (default: netns as root, else loopback)")
    p.add_argument("--dashboard-port", type=int, default=8099, metavar="PORT",
                   help="serve the dashboard on 127.0.0.1:PORT during the run (default 8099; 0: any port)")
    p.add_argument("--no-dashboard", action="store_true", help="run without the dashboard")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_demo(workspace=args.workspace, keep_lab=args.keep_lab, topology=args.topology,
                    flavour=args.flavour, prefix=args.prefix,
                    dashboard_port=None if args.no_dashboard else args.dashboard_port)
