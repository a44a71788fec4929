"""Plugin overhead with --vps-config absent: 2,000 trivial tests with the plugin installed (and
inert) versus the same run with ``-p no:vpstest``. Target (issue 9): at most 0.5 % slower.

    .venv/bin/python bench/bench_plugin_overhead.py [--tests 2000] [--rounds 7]

Both variants run in fresh interpreters, alternating, and the medians are compared; the load
average is printed before and after (other work on the machine moves wall time more than CPU time).
The runs keep bytecode caches as an installed package has them: ``PYTHONDONTWRITEBYTECODE`` is dropped
from their environment, else each run would compile the plugin's modules from source again.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_project(root: Path, tests: int) -> None:
    per_file = 200
    for f in range(0, tests, per_file):
        body = "\n".join(
            f"def test_{i}():\n    assert {i} == {i}\n" for i in range(f, min(tests, f + per_file))
        )
        (root / f"test_trivial_{f // per_file}.py").write_text(body)
    (root / "pytest.ini").write_text("[pytest]\n")


def run(root: Path, extra: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system of the child) of one pytest run."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, str(root)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"pytest failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vps-bench-overhead-") as tmp:
        root = Path(tmp)
        make_project(root, args.tests)
        run(root, [])  # warm the file cache and .pyc files
        installed: list[tuple[float, float]] = []
        baseline: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            baseline.append(run(root, ["-p", "no:vpstest"]))
            installed.append(run(root, []))
    load_after = os.getloadavg()
    print(
        f"{args.tests} trivial tests, {args.rounds} rounds, medians (CPU time is steadier under load); "
        f"load {load_before[0]:.1f}/{load_before[1]:.1f} -> {load_after[0]:.1f}/{load_after[1]:.1f}"
    )
    print(f"  {'':36} {'wall':>9} {'cpu':>9}")
    for label, runs in (
        ("baseline  (-p no:vpstest)", baseline),
        ("installed (no --vps-config, inert)", installed),
    ):
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"  {label:36} {wall:8.3f}s {cpu:8.3f}s")
    for i, name in ((0, "wall"), (1, "cpu")):
        before = statistics.median(r[i] for r in baseline)
        after = statistics.median(r[i] for r in installed)
        overhead = (after - before) / before * 100
        verdict = "OK" if overhead <= 0.5 else "OVER TARGET"
        print(f"  overhead ({name:4})                   {overhead:+6.2f} %   target <= 0.5 %  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
