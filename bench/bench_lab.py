"""Wall time of ``lab up`` and ``lab down`` (netns flavour), beside a baseline from the same run.

Targets: up < 10 s and down < 3 s for the full 10-node topology on 2 cores; up < 20 s for a
generated 50-node lab (``scale:50``). Baseline: creating and deleting the same number of bare
namespaces with one ``ip netns add`` / ``ip netns del`` process each, the floor any
namespace-per-node lab pays.

    sudo .venv/bin/python bench/bench_lab.py [--runs 5] [--topology full] [--prefix vbnch]
    sudo .venv/bin/python bench/bench_lab.py --sizes 10,20,30,50 [--runs 1]   # the cost curve
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


def _neighbour_table() -> str:
    """The kernel's shared ARP table: entries now and how often it has been full since boot."""
    out = subprocess.run(["ip", "-s", "ntable", "show", "name", "arp_cache"], capture_output=True, text=True)
    words = out.stdout.split()
    pick = {k: words[words.index(k) + 1] for k in ("entries", "table_fulls") if k in words}
    return f"entries {pick.get('entries', '?')}, table_fulls {pick.get('table_fulls', '?')}"


def _curve(sizes: list[int], runs: int, prefix: str) -> int:
    """lab up / down of scale:N for each N, beside bare namespaces of the same count."""
    print(f"lab up/down of generated topologies, median of {runs} run(s) each (s)")
    print(f"{'nodes':>6}{'netns':>7}{'up':>8}{'bare add':>10}{'down':>8}{'bare del':>10}")
    with tempfile.TemporaryDirectory(prefix="vpstest-bench-lab-") as tmp:
        where = Path(tmp)
        try:
            for size in sizes:
                topo = load_topology(f"scale:{size}")
                namespaces = len(make_plan(topo, prefix, 200).namespaces)
                ups, downs, adds, dels = [], [], [], []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    lab.up(topo, "netns", prefix, where)
                    t1 = time.perf_counter()
                    lab.down(prefix, where)
                    downs.append(time.perf_counter() - t1)
                    ups.append(t1 - t0)
                    add, delete = _baseline(prefix, namespaces)
                    adds.append(add)
                    dels.append(delete)
                med = statistics.median
                print(
                    f"{size:6d}{namespaces:7d}{med(ups):8.2f}{med(adds):10.2f}{med(downs):8.2f}{med(dels):10.2f}"
                )
        finally:
            lab.down(prefix, where)
    print(f"kernel neighbour table after the runs: {_neighbour_table()}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--topology", default="full")
    parser.add_argument("--prefix", default="vbnch")
    parser.add_argument("--sizes", help="comma-separated node counts: lab up/down of scale:N for each")
    args = parser.parse_args()
    ok, why = netns_available()
    if not ok:
        print(f"bench_lab: needs root and network namespaces ({why})", file=sys.stderr)
        return 2
    if args.sizes:
        return _curve([int(n) for n in args.sizes.split(",")], max(1, min(args.runs, 20)), args.prefix)
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
