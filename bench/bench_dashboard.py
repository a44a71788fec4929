"""The dashboard under a large fleet: page load, transition → page latency, idle CPU.

A state directory is written through the real store and history: PROJECTS projects of NODES nodes
each, RUNS history runs per project (metrics for every run, per-node rows for the last 30, which is
all the page reads), one results.json with a full connectivity matrix per project. A real dashboard
(subprocess, ``vpstest dashboard``) serves it; a real headless Chromium loads the page.

Measured, each beside a baseline from the same run:

- page load: ``goto`` until every project card and node row is rendered; baseline: fetching the
  overview JSON alone (the server's share). Then the history charts of one project (RUNS runs; the
  page draws the last 200) opened;
- transition → page: a transition committed through the store until the page's card shows the new
  state, median and max of N; baseline: the poll interval (0.2 s) the server looks for changes at;
- idle CPU: the dashboard process's CPU seconds over IDLE seconds with the page connected and
  nothing changing; baseline: the same process with no page connected;
- host rows: the per-node rows of the 30 newest runs of every project (what the page's first read
  asks the history for), through ``History.host_runs``; baseline: the ``id LIKE '<run>:%'`` query
  it used before, on the same file (best of 3 rounds each, alternating).

    .venv/bin/python bench/bench_dashboard.py [--projects 10] [--nodes 100] [--runs 10000] [--idle 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_vpstest.records.history import History, HostRun, RunRecord  # noqa: E402
from pytest_vpstest.records.store import StateStore  # noqa: E402
from tests.dashboard.fleetfiles import FakeProject, iso  # noqa: E402
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402


def build(state_dir: Path, projects: int, nodes: int, runs: int) -> list[FakeProject]:
    out = []
    t0 = time.time() - runs * 60
    for p in range(projects):
        names = [f"node-{i:03d}" for i in range(nodes)]
        fp = FakeProject(state_dir, f"project-{p:02d}", names, lease_ttl=7200)
        fp.move("SETUP")
        fp.set_nodes(status="online", last_check=iso(), deployed=True, health="Live")
        fp.move("BUILD")
        fp.move("DEPLOY")
        fp.move("TEST")
        with History(state_dir / "history.sqlite") as h:
            for r in range(runs - 1):
                start = t0 + 60 * r
                hosts = (
                    [HostRun(n, iso(start), iso(start + 30), 0, 5, 0, "") for n in names]
                    if r >= runs - 30
                    else []
                )
                h.record_run(
                    RunRecord(
                        id=f"{fp.project}-r{r}",
                        project=fp.project,
                        started_at=iso(start),
                        finished_at=iso(start + 30),
                        passed=True,
                        verdict={"passed": True},
                    ),
                    hosts,
                    {
                        "connectivity": {"direct": {"rate": 95.0 + r % 5}, "relay": {"rate": 100.0}},
                        "throughput": {"all": {"avg_mbps": 60.0, "iperf3_avg_mbps": 100.0}},
                        "gossip": {"all": {"delivery_rate": 99.5}, "latency_ms": {"p50": 10.0, "p95": 30.0}},
                    },
                )
        pairs = [
            {"suite": "connectivity", "from": a, "to": b, "method": "direct", "attempts": 3, "success": 3}
            for a in names[:20]
            for b in names[:20]
            if a != b
        ]
        fp.record_test(
            f"{fp.project}-r{runs - 1}", {n: (5, 0, "") for n in names}, pairs, started=t0 + 60 * runs
        )
        fp.move("WAIT_1HR")
        out.append(fp)
    return out


def reopen(state_dir: Path) -> list[FakeProject]:
    """Projects of a kept state directory, to commit further transitions to."""
    out = []
    for d in sorted(p for p in state_dir.iterdir() if p.is_dir() and p.name.startswith("project-")):
        store = StateStore(state_dir, d.name, lease_ttl=7200)
        fp = FakeProject.__new__(FakeProject)
        fp.state_dir, fp.project, fp.dir, fp.store = state_dir, d.name, d, store
        fp.doc = store.load() or {}
        fp.state = str(fp.doc.get("state"))
        fp.lease = store.acquire()
        out.append(fp)
    return out


OLD_HOST_RUNS = "SELECT * FROM test_runs WHERE id LIKE ? ESCAPE '\\' ORDER BY host_id"


def host_rows(state_dir: Path, rounds: int = 3) -> tuple[float, float, int]:
    """Seconds to read the host rows of every project's 30 newest runs: (now, the old LIKE query), rows."""
    with History(state_dir / "history.sqlite") as h:
        conn = h._conn()
        projects = [str(r[0]) for r in conn.execute("SELECT DISTINCT project FROM runs ORDER BY project")]
        run_ids = [r.id for p in projects for r in h.runs(p, limit=30)]
        best_new = best_old = float("inf")
        rows = 0
        for _ in range(rounds):
            t = time.monotonic()
            rows = sum(len(h.host_runs(r)) for r in run_ids)
            best_new = min(best_new, time.monotonic() - t)
            t = time.monotonic()
            old = 0
            for r in run_ids:
                like = r.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
                old += len(conn.execute(OLD_HOST_RUNS, (like,)).fetchall())
            best_old = min(best_old, time.monotonic() - t)
            assert old == rows, (old, rows)
    return best_new, best_old, rows


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--projects", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--runs", type=int, default=10_000, help="history runs per project")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    ap.add_argument("--transitions", type=int, default=10)
    ap.add_argument("--state-dir", type=Path, help="keep the generated state here and reuse it next time")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        state_dir = args.state_dir or Path(tmp) / "state"
        reuse = (state_dir / "history.sqlite").exists()
        state_dir.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        fps = reopen(state_dir) if reuse else build(state_dir, args.projects, args.nodes, args.runs)
        size = (state_dir / "history.sqlite").stat().st_size / 1e6
        print(
            f"fleet: {args.projects} projects x {args.nodes} nodes, {args.runs} history runs per project "
            f"(history {size:.0f} MB), written in {time.monotonic() - t:.0f} s"
        )
        new, old, rows = host_rows(state_dir)
        print(
            f"host rows of the 30 newest runs of each project ({rows} rows): {new:.3f} s "
            f"(baseline: the old LIKE query {old:.3f} s, {old / max(new, 1e-9):.0f}x)"
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest_vpstest.cli",
                "dashboard",
                "--state-dir",
                str(state_dir),
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "VPSTEST_DASHBOARD_TOKEN": "bench-token-0123456789"},
        )
        try:
            url = ""
            assert proc.stdout is not None
            for line in proc.stdout:
                m = re.search(r"dashboard: (http://\S+/)$", line.strip())
                if m:
                    url = m.group(1)
                    break
            # idle, no page: baseline
            time.sleep(1)
            c0 = cpu_seconds(proc.pid)
            time.sleep(args.idle)
            idle_none = (cpu_seconds(proc.pid) - c0) / args.idle
            t = time.monotonic()
            json.load(urllib.request.urlopen(url + "api/overview"))
            cold_json = time.monotonic() - t
            t = time.monotonic()
            json.load(urllib.request.urlopen(url + "api/overview"))
            warm_json = time.monotonic() - t
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                # Playwright evaluates wait predicates as strings; the dashboard's CSP forbids eval.
                page = browser.new_context(bypass_csp=True).new_page()
                page.set_default_timeout(120_000)
                rows = args.projects * args.nodes
                t = time.monotonic()
                page.goto(url)
                page.wait_for_function(f"document.querySelectorAll('tr[data-node]').length >= {rows}")
                load = time.monotonic() - t
                t = time.monotonic()
                page.locator(".section-history summary").first.click()
                page.locator(".chart a.point").first.wait_for()
                history = time.monotonic() - t
                page.locator(".section-history summary").first.click()
                points = page.locator(".chart a.point").count()
                print(
                    f"page load: {load:.2f} s to {args.projects} cards / {rows} node rows "
                    f"(baseline: overview JSON {cold_json:.2f} s cold, {warm_json:.2f} s cached); "
                    f"history charts of one project {history:.2f} s ({points} points)"
                )
                # idle with the page connected
                time.sleep(2)
                c0 = cpu_seconds(proc.pid)
                time.sleep(args.idle)
                idle_page = (cpu_seconds(proc.pid) - c0) / args.idle
                lat = []
                fp = fps[0]
                for i in range(args.transitions):
                    target = "TEST" if fp.state != "TEST" else "WAIT_1HR"
                    sel = f'section[data-project="{fp.project}"][data-state="{target}"]'
                    t = time.monotonic()
                    fp.move(target, f"bench {i}")
                    page.wait_for_selector(sel)
                    lat.append(time.monotonic() - t)
                    time.sleep(0.3)
                print(
                    f"transition -> page: median {statistics.median(lat):.2f} s, max {max(lat):.2f} s "
                    f"over {len(lat)} (baseline: the 0.20 s change poll)"
                )
                print(
                    f"idle CPU: {100 * idle_page:.2f} % of a core with the page connected "
                    f"(baseline: {100 * idle_none:.2f} % with no page)"
                )
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
