"""The matrix engine's cost curve: the connectivity suite on generated ``scale:N`` labs (10 / 20 / 30 /
50 nodes by default), run by the engine with the reference agent's batch command, beside the suite's
old way — every probe one after another through one cached session per node — measured in the same
run where it is affordable (``--serial-sizes``, default 10 and 20 nodes) and extrapolated from its
measured cost per probe for the bigger labs (the table says which figures are extrapolated).

For each size: ``lab up`` wall time, the pytest run's wall time and CPU, probes, probes/s, pytest's
own start-up (the same run with every test deselected), and the cells that disagree with NAT theory
(``pytest_vpstest.lab.theory``: a cell that must connect and did not, or must fail and connected;
``depends`` cells are not judged). The load average is printed with every figure: other work may
share the machine. Target (issue 9): 50 nodes, 1 attempt, all methods, within 3 minutes.

Needs root (its own netns labs under ``--prefix``, removed afterwards, also on failure). Writes the
figures as JSON (``--json``) and the cost curve as an SVG (``--svg``, plain SVG, no plotting library):

    .venv/bin/python bench/bench_matrix_scale.py --prefix v9x [--sizes 10,20,30,50] [--serial-sizes 10,20]
        [--attempts 1] [--timeout 3] [--svg docs/img/matrix-cost-curve.svg] [--json out.json]
    .venv/bin/python bench/bench_matrix_scale.py --from-json out.json --svg docs/img/matrix-cost-curve.svg
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_matrix import pytest_run, serial_probes, write_config  # same directory (bench/)


@dataclass
class Size:
    nodes: int
    lab_up_s: float
    tests: int = 0
    probes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    startup_s: float = 0.0
    summary: str = ""
    judged: int = 0
    wrong: int = 0
    depends: int = 0
    wrong_examples: tuple[str, ...] = ()
    load: str = ""
    serial_s: float | None = None
    serial_probes: int | None = None
    serial_cpu_s: float | None = None
    serial_load: str = ""

    @property
    def rate(self) -> float:
        return self.probes / self.wall_s if self.wall_s else 0.0


def load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def judge(results: dict[str, Any], topology: str) -> tuple[int, int, int, int, list[str]]:
    """(tests, judged cells, wrong cells, depends cells, examples) of one run's connectivity pairs."""
    from pytest_vpstest.lab.theory import expected_matrix
    from pytest_vpstest.lab.topology import load_topology

    expected = expected_matrix(load_topology(topology))
    rows = [r for r in results.get("pairs", []) if r.get("suite") == "connectivity"]
    judged = wrong = depends = 0
    examples: list[str] = []
    for r in rows:
        outcome = expected.get((r["from"], r["to"], r["method"]))
        attempts, success = int(r.get("attempts", 0)), int(r.get("success", 0))
        if outcome == "depends" or outcome is None or attempts == 0:
            depends += 1
            continue
        judged += 1
        if (outcome == "connects" and success < attempts) or (outcome == "fails" and success > 0):
            wrong += 1
            if len(examples) < 5:
                cell = f"{r['from']}->{r['to']}[{r['method']}]"
                examples.append(f"{cell} {success}/{attempts}, theory {outcome}")
    return len(rows), judged, wrong, depends, examples


def measure(n: int, args: argparse.Namespace, serial: bool) -> Size:
    from pytest_vpstest import lab

    prefix = args.prefix
    with tempfile.TemporaryDirectory(prefix=f"vps-bench-scale{n}-") as tmp:
        ws = Path(tmp)
        t0 = time.perf_counter()
        lab.up(f"scale:{n}", "netns", prefix, ws / "lab")
        size = Size(n, time.perf_counter() - t0, load=load_text())
        print(f"scale:{n}: lab up {size.lab_up_s:.2f} s (load {size.load})", flush=True)
        inventory = ws / "lab" / "inventory.yaml"
        try:
            single, batch = write_config(ws, args, batch=False), write_config(ws, args, batch=True)
            # Build and deploy once (untimed): the CRDT test touches every node with one probe each.
            t1 = time.perf_counter()
            _, _, deployed = pytest_run(single, inventory, "--vps-focus=gossip", "-k", "crdt")
            print(f"  build + deploy (untimed) {time.perf_counter() - t1:.1f} s: {deployed}", flush=True)
            skip = ("--vps-skip-build", "--vps-skip-deploy")
            size.startup_s, _, _ = pytest_run(batch, inventory, *skip, "-k", "no_such_test")
            out = ws / "results.json"
            before = load_text()
            size.wall_s, size.cpu_s, size.summary = pytest_run(
                batch, inventory, *skip, f"--vps-attempts={args.attempts}", f"--vps-results-json={out}"
            )
            size.load = f"{before} -> {load_text()}"
            results = json.loads(out.read_text()) if out.exists() else {}
            size.tests, size.judged, size.wrong, size.depends, examples = judge(results, f"scale:{n}")
            size.wrong_examples = tuple(examples)
            size.probes = size.tests * args.attempts
            print(
                f"  engine (batch): {size.wall_s:.1f} s, {size.probes} probes, {size.rate:.1f} probes/s, "
                f"CPU {size.cpu_s:.1f} s, start-up alone {size.startup_s:.1f} s, wrong {size.wrong}/"
                f"{size.judged} (load {size.load}) {size.summary}",
                flush=True,
            )
            for example in examples:
                print(f"    wrong: {example}")
            if serial:
                before = load_text()
                size.serial_s, size.serial_cpu_s, size.serial_probes, ok = serial_probes(single, inventory)
                size.serial_load = f"{before} -> {load_text()}"
                print(
                    f"  serial: {size.serial_s:.1f} s, {size.serial_probes} probes ({ok} connected), "
                    f"CPU {size.serial_cpu_s:.1f} s (load {size.serial_load})",
                    flush=True,
                )
        finally:
            lab.down(prefix, ws / "lab")
    return size


def serial_per_probe(sizes: list[Size]) -> float | None:
    """The serial baseline's measured seconds per probe, over every size that has one."""
    measured = [s for s in sizes if s.serial_s and s.serial_probes]
    if not measured:
        return None
    return sum(s.serial_s or 0 for s in measured) / sum(s.serial_probes or 0 for s in measured)


def report(sizes: list[Size], args: argparse.Namespace) -> list[str]:
    per_probe = serial_per_probe(sizes)
    lines = [
        f"connectivity suite, scale:N labs, {args.attempts} attempt(s), timeout {args.timeout:g} s, "
        f"engine with the agent's batch command (node concurrency 8)",
        "| nodes | lab up (s) | tests | probes | engine wall (s) | probes/s | harness CPU (s) "
        "| pytest start-up (s) | wrong vs NAT theory | serial baseline (s) | speed-up | load (1/5 min) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in sizes:
        if s.serial_s:
            base, mark = s.serial_s, ""
        elif per_probe is not None:
            base, mark = per_probe * s.probes, " (extrapolated)"
        else:
            base, mark = None, ""
        speed = f"{base / s.wall_s:.1f}×" if base and s.wall_s else "—"
        base_text = f"{base:.0f}{mark}" if base else "—"
        lines.append(
            f"| {s.nodes} | {s.lab_up_s:.2f} | {s.tests} | {s.probes} | {s.wall_s:.1f} | {s.rate:.1f} | "
            f"{s.cpu_s:.1f} | {s.startup_s:.1f} | {s.wrong} of {s.judged} ({s.depends} not judged) | "
            f"{base_text} | {speed} | {s.load}{'; serial ' + s.serial_load if s.serial_load else ''} |"
        )
    if per_probe is not None:
        lines.append(f"serial cost per probe, measured: {per_probe * 1000:.0f} ms (extrapolations use it)")
    big = next((s for s in sizes if s.nodes == 50), None)
    if big is not None:
        verdict = "OK" if big.wall_s <= 180 else "NOT MET"
        lines.append(f"target 50 nodes <= 180 s: {big.wall_s:.1f} s, {verdict}")
    return lines


def svg(sizes: list[Size], per_probe: float | None) -> str:
    """The cost curve: engine wall time, serial (measured and extrapolated) and lab up, log scale."""
    import math

    w, h, left, right, top, bottom = 640, 380, 70, 170, 30, 50
    xs = [s.nodes for s in sizes]
    series: list[tuple[str, str, list[tuple[int, float]], bool]] = [
        ("engine (batch)", "#1f77b4", [(s.nodes, s.wall_s) for s in sizes], False),
        ("harness CPU (engine)", "#9467bd", [(s.nodes, s.cpu_s) for s in sizes], False),
        ("lab up", "#2ca02c", [(s.nodes, s.lab_up_s) for s in sizes], False),
        ("serial, measured", "#d62728", [(s.nodes, s.serial_s) for s in sizes if s.serial_s], False),
    ]
    if per_probe is not None:
        guess = [(s.nodes, per_probe * s.probes) for s in sizes]
        series.append(("serial, extrapolated", "#d62728", guess, True))
    values = [v for _, _, pts, _ in series for _, v in pts if v > 0]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    x0, x1 = min(xs), max(xs)

    def px(n: float) -> float:
        return left + (n - x0) / max(1, x1 - x0) * (w - left - right)

    def py(v: float) -> float:
        return top + (hi - math.log10(v)) / max(1, hi - lo) * (h - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13">'
        "Connectivity suite on scale:N labs: seconds (log scale)</text>",
    ]
    for e in range(lo, hi + 1):
        y = py(10**e)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{10**e:g}</text>')
    y180 = py(180)
    out.append(
        f'<line x1="{left}" y1="{y180:.1f}" x2="{w - right}" y2="{y180:.1f}" stroke="#999" '
        'stroke-dasharray="2,3"/>'
    )
    out.append(f'<text x="{w - right + 4}" y="{y180 + 4:.1f}" fill="#666">target 3 min</text>')
    for n in xs:
        out.append(f'<text x="{px(n):.1f}" y="{h - bottom + 18}" text-anchor="middle">{n}</text>')
    out.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 12}" text-anchor="middle">nodes</text>')
    out.append(
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>'
    )
    for i, (name, colour, pts, dashed) in enumerate(series):
        if not pts:
            continue
        dash = ' stroke-dasharray="6,4"' if dashed else ""
        path = " ".join(f"{px(n):.1f},{py(v):.1f}" for n, v in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for n, v in pts:
            out.append(f'<circle cx="{px(n):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"/>')
        ly = top + 20 + 18 * i
        out.append(
            f'<line x1="{w - right + 10}" y1="{ly}" x2="{w - right + 34}" y2="{ly}" stroke="{colour}" '
            f'stroke-width="2"{dash}/><text x="{w - right + 40}" y="{ly + 4}">{name}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", default="v9x")
    ap.add_argument("--sizes", default="10,20,30,50")
    ap.add_argument("--serial-sizes", default="10,20", help="sizes that also get the serial baseline")
    ap.add_argument("--attempts", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3.0, help="tests.connectivity.timeout_seconds")
    ap.add_argument("--svg", type=Path, help="write the cost curve here")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--from-json", type=Path, help="measure nothing: report and plot a --json file again")
    args = ap.parse_args()
    serial_sizes = {int(x) for x in args.serial_sizes.split(",") if x}
    if args.from_json:
        loaded = json.loads(args.from_json.read_text())
        sizes = [Size(**(d | {"wrong_examples": tuple(d.get("wrong_examples", ()))})) for d in loaded]
    else:
        sizes = [measure(int(n), args, int(n) in serial_sizes) for n in args.sizes.split(",")]
    lines = report(sizes, args)
    print("\n".join(lines))
    per_probe = serial_per_probe(sizes)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps([asdict(s) for s in sizes], indent=1) + "\n")
    if args.svg:
        args.svg.write_text(svg(sizes, per_probe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
