"""Wall time of ``lab up`` and ``lab down`` (netns flavour), beside a baseline from the same run.

Targets (issue 3): up < 10 s and down < 3 s for the full 10-node topology on 2 cores.
Baseline: creating and deleting the same number of bare namespaces with one ``ip netns add`` /
``ip netns del`` process each, the floor any namespace-per-node lab pays.

    sudo .venv/bin/python bench/bench_lab.py [--runs 5] [--topology full] [--prefix vbnch]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_vpstest import lab
from pytest_vpstest.lab import netlab
from pytest_vpstest.lab.netns import netns_available
from pytest_vpstest.lab.plan import make_plan
from pytest_vpstest.lab.topology import load_topology

TARGET_UP_S = 10.0
TARGET_DOWN_S = 3.0


def _baseline(prefix: str, count: int) -> tuple[float, float]:
    names = [f"{prefix}-base{i}" for i in range(count)]
    t0 = time.perf_counter()
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    t1 = time.perf_counter()
    for n in names:
        subprocess.run(["ip", "netns", "del", n], check=True)
    return t1 - t0, time.perf_counter() - t1


def _sequential_up(topo: lab.Topology, prefix: str, where: Path) -> float:
    """The same ``lab up`` with one worker (no parallel namespace setup)."""
    saved = netlab.WORKERS
    netlab.WORKERS = 1
    try:
        t0 = time.perf_counter()
        lab.up(topo, "netns", prefix, where)
        return time.perf_counter() - t0
    finally:
        netlab.WORKERS = saved
        lab.down(prefix, where)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--topology", default="full")
    parser.add_argument("--prefix", default="vbnch")
    args = parser.parse_args()
    ok, why = netns_available()
    if not ok:
        print(f"bench_lab: needs root and network namespaces ({why})", file=sys.stderr)
        return 2
    topo = load_topology(args.topology)
    namespaces = len(make_plan(topo, args.prefix, 200).namespaces)
    ups, downs, base_add, base_del, seq_ups = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="vpstest-bench-lab-") as tmp:
        where = Path(tmp)
        try:
            for _ in range(max(1, min(args.runs, 20))):
                t0 = time.perf_counter()
                lab.up(topo, "netns", args.prefix, where)
                t1 = time.perf_counter()
                lab.down(args.prefix, where)
                t2 = time.perf_counter()
                ups.append(t1 - t0)
                downs.append(t2 - t1)
                add, delete = _baseline(args.prefix, namespaces)
                base_add.append(add)
                base_del.append(delete)
                seq_ups.append(_sequential_up(topo, args.prefix, where))
        finally:
            lab.down(args.prefix, where)
    med = statistics.median
    print(
        f"lab {args.topology}: {len(topo.nodes)} nodes, {namespaces} namespaces, {len(ups)} runs (median, s)"
    )
    print(f"{'':26}{'lab':>8}{'baseline':>10}{'ratio':>8}{'target':>8}")
    rows = [
        ("up (vs bare netns add)", med(ups), med(base_add), TARGET_UP_S),
        ("up (vs sequential up)", med(ups), med(seq_ups), TARGET_UP_S),
        ("down (vs bare netns del)", med(downs), med(base_del), TARGET_DOWN_S),
    ]
    for name, value, base, target in rows:
        print(f"{name:26}{value:8.2f}{base:10.2f}{value / base:8.2f}{target:8.1f}")
    print(
        f"bare = {namespaces} x 'ip netns add' / 'ip netns del' (empty namespaces); "
        "sequential = lab up with 1 worker"
    )
    print(f"up   min/max {min(ups):.2f}/{max(ups):.2f} s; down min/max {min(downs):.2f}/{max(downs):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
