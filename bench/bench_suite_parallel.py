"""The connectivity suite on the lab: ``pytest -n W`` wall time versus the same probes run one
after another through one cached session per node. Target: at least 4× faster on 2 cores, with
per-node concurrency bounded (``--vps-node-concurrency``).

Needs a running lab with the software under test deployed (``vpstest lab up`` and one run of the
suites without ``--vps-skip-deploy``, or pass ``--deploy`` to do that first, untimed):

    .venv/bin/python bench/bench_suite_parallel.py --config vps.yaml [--nodes lab] [--workers 8] [--deploy]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pytest_argv(args: argparse.Namespace, state: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "--pyargs",
        "pytest_vpstest.suites",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--vps-config={args.config}",
        f"--vps-nodes={args.nodes}",
        "--vps-focus=connectivity",
        f"--vps-attempts={args.attempts}",
        f"--vps-state-dir={state}",
        *extra,
    ]


def serial_probes(args: argparse.Namespace) -> tuple[float, int]:
    """Every probe of the suite, one after another, through one cached session per node."""
    from pytest_vpstest.commands.loading import load_config, load_inventory
    from pytest_vpstest.fleet.node import plan_node
    from pytest_vpstest.fleet.probes import NodeSlots, ProbeRunner
    from pytest_vpstest.fleet.remote import SessionPool
    from pytest_vpstest.plugin.pairs import connectivity_pairs

    cfg = load_config(args.config)
    inv = load_inventory(args.nodes, cfg)
    timeout = next((s.timeout_seconds for k, s in cfg.tests if k == "connectivity"), 10.0)
    with SessionPool(inv) as pool:

        plans = {n.name: plan_node(n, cfg) for n in inv.nodes}
        runner = ProbeRunner(pool, inv, cfg.probes, plan_for=plans.__getitem__, slots=NodeSlots(1))
        pairs = connectivity_pairs(inv)
        for p in {p.src for p in pairs}:
            runner.status(p)  # open every session before timing, as the pytest run's fixtures do
        start = time.perf_counter()
        ok = 0
        for pair in pairs:
            for _ in range(args.attempts):
                ok += runner.connect(pair.src, pair.dst, pair.method, timeout).ok
        return time.perf_counter() - start, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--nodes", default="lab")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--attempts", type=int, default=1)
    ap.add_argument("--deploy", action="store_true", help="deploy first with an untimed pytest run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vps-bench-parallel-") as tmp:
        state = Path(tmp)
        if args.deploy:
            subprocess.run(pytest_argv(args, state, "--vps-attempts=1", "-k", "relay"), check=False)
        serial, ok = serial_probes(args)
        start = time.perf_counter()
        proc = subprocess.run(
            pytest_argv(args, state, "--vps-skip-build", "--vps-skip-deploy", "-n", str(args.workers)),
            capture_output=True,
            text=True,
        )
        parallel = time.perf_counter() - start
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else ["(no output)"]
    print(f"connectivity suite, {args.attempts} attempt(s) per pair, nodes {args.nodes}")
    print(f"  serial probes (one cached session per node)  {serial:8.2f} s   ({ok} connected)")
    print(f"  pytest -n {args.workers} (whole session, startup included) {parallel:8.2f} s   {tail[0]}")
    speedup = serial / parallel if parallel else float("inf")
    print(f"  speed-up {speedup:5.2f}×   target >= 4×  {'OK' if speedup >= 4 else 'BELOW TARGET'}")
    return 0 if proc.returncode in (0, 1) else proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
