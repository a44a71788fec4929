"""The matrix engine on the full 10-node lab: the connectivity suite (K attempts per pair) measured
the way the suite used to run it — every probe one after another through one cached session per
node — and by the engine in a pytest run, with single probes and with the reference agent's batch
command, side by side in the same run. Prints wall time, speed-up and the harness's CPU per probe.
Target (issue 9): the engine at least 8× faster than the serial run (≤ 18 s), CPU per probe ≤ 5 ms.

Needs root (it brings up its own netns lab under ``--prefix`` and removes it afterwards):

    .venv/bin/python bench/bench_matrix.py [--prefix v9f] [--attempts 3] [--timeout 10] [--skip-serial]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CONFIG = """\
project: benchmatrix
workspace: {ws}
state_dir: {ws}/state
modules:
  agent: {{binary: agent.pyz}}
build:
  command: {python} -m pytest_vpstest.lab.agent.build dist/agent.pyz
  artifact: dist/agent.pyz
  timeout_seconds: 120
deploy:
  install_path: /opt/vpstest/
  service_prefix: benchmatrix
  start_command: >-
    {{bin}} run --node {{node}} --bind {{p2p_address}} --registry {{registry}} --bootstrap {{bootstrap}}
  registration_timeout_seconds: 30
probes:
{probes}
tests:
  connectivity: {{attempts: {attempts}, timeout_seconds: {timeout}, success_criteria: {{relay: 100}}}}
"""


def write_config(ws: Path, args: argparse.Namespace, batch: bool) -> Path:
    probes = '  batch: "{bin} probe batch"' if batch else '  status: "{bin} probe status --json"'
    text = CONFIG.format(
        ws=ws, python=sys.executable, probes=probes, attempts=args.attempts, timeout=args.timeout
    )
    path = ws / ("batch.yaml" if batch else "single.yaml")
    path.write_text(textwrap.dedent(text))
    return path


def pytest_run(config: Path, inventory: Path, *extra: str) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of the pytest process (and its children) and the summary line."""
    argv = [
        sys.executable, "-m", "pytest", "--pyargs", "pytest_vpstest.suites", "-q", "-p", "no:cacheprovider",
        "-p", "no:hypothesispytest", f"--vps-config={config}", f"--vps-nodes={inventory}",
        "--vps-focus=connectivity", *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "VPSTEST_RUNNER_TOKEN"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=config.parent)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or "failed" in ln)), "")
    return wall, cpu, summary or (lines[-1] if lines else proc.stderr.strip()[-300:])


def serial_probes(config: Path, inventory: Path) -> tuple[float, float, int, int]:
    """Every probe of the suite one after another (the suite's order), as each test used to run them."""
    from pytest_vpstest.config import load_inventory, load_project_config
    from pytest_vpstest.fleet.node import plan_node
    from pytest_vpstest.fleet.probes import NodeSlots, ProbeRunner
    from pytest_vpstest.fleet.remote import SessionPool
    from pytest_vpstest.plugin.pairs import connectivity_pairs

    cfg = load_project_config(config)
    inv = load_inventory(inventory)
    settings = cfg.suite("connectivity")
    with SessionPool(inv) as pool:
        plans = {n.name: plan_node(n, cfg) for n in inv.nodes}
        runner = ProbeRunner(pool, inv, cfg.probes, plan_for=plans.__getitem__, slots=NodeSlots(1))
        pairs = connectivity_pairs(inv)
        for name in {p.src for p in pairs}:
            runner.status(name)  # open every session before timing, as the pytest run's fixtures do
        cpu0, start = time.process_time(), time.perf_counter()
        ok = probes = 0
        for pair in pairs:
            for _ in range(settings.attempts):
                ok += runner.connect(pair.src, pair.dst, pair.method, settings.timeout_seconds).ok
                probes += 1
        return time.perf_counter() - start, time.process_time() - cpu0, probes, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", default="v9f")
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=10.0, help="tests.connectivity.timeout_seconds")
    ap.add_argument("--skip-serial", action="store_true", help="leave out the serial baseline")
    args = ap.parse_args()
    from pytest_vpstest import lab

    with tempfile.TemporaryDirectory(prefix="vps-bench-matrix-") as tmp:
        ws = Path(tmp)
        t0 = time.perf_counter()
        lab.up("full", "netns", args.prefix, ws / "lab")
        inventory = ws / "lab" / "inventory.yaml"
        try:
            single, batch = write_config(ws, args, batch=False), write_config(ws, args, batch=True)
            _, _, deployed = pytest_run(single, inventory, "--vps-attempts=1", "-k", "relay")
            print(f"lab up + build + deploy (untimed set-up) {time.perf_counter() - t0:.1f} s: {deployed}")
            rows: list[tuple[str, float, float, str]] = []
            probes = None
            if not args.skip_serial:
                wall, cpu, probes, ok = serial_probes(single, inventory)
                rows.append(("serial probes (the suite's old way)", wall, cpu, f"{ok}/{probes} connected"))
            skip = ("--vps-skip-build", "--vps-skip-deploy")
            # The same pytest run with every test deselected: start-up, config, collection, results.
            idle_wall, idle_cpu, _ = pytest_run(batch, inventory, *skip, "-k", "no_such_test")
            engines = (("engine, single probes (pytest)", single), ("engine, batch (pytest)", batch))
            for name, config in engines:
                wall, cpu, summary = pytest_run(config, inventory, *skip)
                rows.append((name, wall, cpu, summary))
        finally:
            lab.down(args.prefix, ws / "lab")
    load = os.getloadavg()
    print(f"connectivity, full 10-node lab, {args.attempts} attempts, timeout {args.timeout:g} s, "
          f"load {load[0]:.1f}/{load[1]:.1f}")  # fmt: skip
    base = rows[0][1] if not args.skip_serial else None
    count = probes or 552
    print(f"  pytest start-up alone (all deselected): {idle_wall:.2f} s, CPU {idle_cpu:.2f} s")
    for name, wall, cpu, note in rows:
        ratio = f"{base / wall:5.1f}×" if base else "   - "
        per_probe = 1000 * cpu / count
        beyond = (
            "" if name.startswith("serial") else f" ({1000 * (cpu - idle_cpu) / count:.1f} beyond start-up)"
        )
        print(
            f"  {name:34s} {wall:7.2f} s {ratio} CPU {cpu:6.2f} s = {per_probe:5.1f} ms/probe{beyond} {note}"
        )
    if base:
        best = min(w for _, w, _, _ in rows[1:])
        print(f"  target: engine >= 8× faster than serial (<= 18 s): {'OK' if base / best >= 8 else 'BELOW'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
