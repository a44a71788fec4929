"""Plugin overhead with --vps-config absent: 2,000 trivial tests with the plugin installed (and
inert) versus the same run with ``-p no:vpstest``. Target: at most 2% slower.

    .venv/bin/python bench/bench_plugin_overhead.py [--tests 2000] [--rounds 7]

Both variants run in fresh interpreters, alternating, and the medians are compared.
"""

from __future__ import annotations

import argparse
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


def run(root: Path, extra: list[str]) -> float:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, str(root)]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pytest failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vps-bench-overhead-") as tmp:
        root = Path(tmp)
        make_project(root, args.tests)
        run(root, [])  # warm the file cache and .pyc files
        installed: list[float] = []
        baseline: list[float] = []
        for _ in range(args.rounds):
            baseline.append(run(root, ["-p", "no:vpstest"]))
            installed.append(run(root, []))
    b, p = statistics.median(baseline), statistics.median(installed)
    overhead = (p - b) / b * 100
    print(f"{args.tests} trivial tests, {args.rounds} rounds, median wall time")
    print(f"  baseline  (-p no:vpstest)           {b:7.3f} s   (min {min(baseline):.3f})")
    print(f"  installed (no --vps-config, inert)  {p:7.3f} s   (min {min(installed):.3f})")
    print(
        f"  overhead                            {overhead:+6.2f} %   target <= 2 %  "
        f"{'OK' if overhead <= 2 else 'OVER TARGET'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
