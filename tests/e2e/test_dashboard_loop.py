"""The dashboard over a real loop on the lab, in a real browser: the demo's loop runs (TEST fails, FIX
commits, soak, COMPLETE) while the page watches; the Tests compartments go yellow → blue → green/red
without a reload, the project reaches COMPLETE on the page; then a restarted dashboard (same files)
rolls a node back behind a confirmation and its Tests compartment turns yellow, and Run tests turns
it blue and then green or red."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.config import DashboardConfig, load_inventory, load_project_config
from tests.lab.conftest import worker_prefix

pytestmark = [pytest.mark.lab, pytest.mark.e2e, pytest.mark.slow]

OBSERVE = """() => {
  window.__seen = {};
  const record = () => document.querySelectorAll('tr[data-node]').forEach((tr) => {
    const c = tr.querySelector('.comp.tests')?.dataset.colour;
    const a = (window.__seen[tr.dataset.node] ||= []);
    if (c && a[a.length - 1] !== c) a.push(c);
  });
  record();
  new MutationObserver(record).observe(document.getElementById('projects'), {childList: true, subtree: true});
}"""


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the netns lab needs root"
    from pytest_vpstest.lab.netns import netns_available

    ok, why = netns_available()
    return None if ok else f"network namespaces unavailable: {why}"


def _screenshots(pg: Any, node: str) -> None:
    """With VPSTEST_DASHBOARD_SCREENSHOTS=DIR, the pictures in docs/ are taken from this real run."""
    out = os.environ.get("VPSTEST_DASHBOARD_SCREENSHOTS")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    pg.set_viewport_size({"width": 1200, "height": 900})
    pg.locator(".section-matrix summary").click()
    pg.locator(".section-matrix").screenshot(path=f"{out}/dashboard-matrix.png")
    pg.locator(".section-matrix summary").click()
    pg.locator(".section-history summary").click()
    pg.locator(".chart a.point").first.wait_for()
    pg.locator(".section-history").screenshot(path=f"{out}/dashboard-history.png")
    pg.locator(".section-history summary").click()
    pg.locator(f'tr[data-node="{node}"]').click()
    pg.locator("#node-dialog").screenshot(path=f"{out}/dashboard-node.png")
    pg.keyboard.press("Escape")
    pg.locator(f'tr[data-node="{node}"] .comp.tests').hover()
    pg.screenshot(path=f"{out}/dashboard-fleet.png", full_page=True)


def _in_order(seq: list[str], *wanted: tuple[str, ...]) -> bool:
    i = 0
    for colour in seq:
        if i < len(wanted) and colour in wanted[i]:
            i += 1
    return i == len(wanted)


def test_dashboard_follows_the_loop_and_rolls_back(tmp_path: Path, page: Any) -> None:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import expect

    from pytest_vpstest import lab
    from pytest_vpstest.dashboard.app import Settings
    from pytest_vpstest.dashboard.server import DashboardServer
    from pytest_vpstest.demo import _stop_services, run_demo

    prefix = worker_prefix("vdb")
    ws = tmp_path / "demo"
    lines: list[str] = []
    printed = threading.Event()

    def out(line: str) -> None:
        lines.append(line)
        if "dashboard at" in line:
            printed.set()

    result: dict[str, int] = {}
    demo = threading.Thread(target=lambda: result.update(rc=run_demo(
        workspace=ws, keep_lab=True, prefix=prefix, out=out, dashboard_port=0)), daemon=True)
    demo.start()
    config = None
    try:
        assert printed.wait(120), "\n".join(lines[-30:])
        line = next(x for x in lines if "dashboard at" in x)
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line).group(1)  # type: ignore[union-attr]
        token = line.rsplit("actions token: ", 1)[1].rstrip(")")
        page.goto(url)
        page.evaluate(OBSERVE)
        card = page.locator('section[data-project="demo-agent"]')
        expect(card).to_have_attribute("data-state", "COMPLETE", timeout=540_000)
        demo.join(60)
        assert result.get("rc") == 0, "\n".join(lines[-40:])
        seen: dict[str, list[str]] = page.evaluate("window.__seen")
        assert seen, "no node rows were ever shown"
        moved = [n for n, seq in seen.items() if _in_order(seq, ("yellow",), ("blue",), ("green", "red"))]
        assert moved, seen  # compartments went yellow → blue → green/red while the loop ran
        assert any("red" in seq for seq in seen.values()), seen  # the planted defect's failing TEST
        node = next(n for n in moved if seen[n][-1] == "green")
        tests = page.locator(f'tr[data-node="{node}"] .comp.tests')
        tests.hover()
        last_test = re.compile(r"Last test: (just now|\d+ s ago|\d+ min ago) \((\d+)/\2 passed\)")
        expect(page.locator("#tooltip")).to_contain_text(last_test)

        # A restarted dashboard reads the same files; the node's tests run by hand only, so the
        # yellow after the rollback stays until Run tests.
        config = load_project_config(ws / "vpstest.yaml")
        manual = dataclasses.replace(config, dashboard=DashboardConfig(node_tests=((node, "manual"),)))
        server = DashboardServer(Settings(state_dir=ws / ".vpstest", token=token,
                                          configs={config.project: manual})).start()
        try:
            page.goto(server.url)
            tests = page.locator(f'tr[data-node="{node}"] .comp.tests')
            expect(tests).to_have_attribute("data-colour", "green")
            _screenshots(page, node)
            page.locator(f'tr[data-node="{node}"]').click()
            page.locator("#btn-rollback").click()
            expect(page.locator("#confirm-dialog")).to_be_visible()
            page.locator("#confirm-token").fill(token)
            page.locator("#confirm-ok").click()
            expect(page.locator("#node-message")).to_have_text("Rollback started.")
            expect(tests).to_have_attribute("data-colour", "yellow", timeout=60_000)
            rolled = (ws / ".vpstest" / "demo-agent" / "dashboard" / "rollbacks.jsonl").read_text()
            assert '"ok":true' in rolled, rolled
            page.locator("#btn-run-tests").click()
            page.locator("#confirm-token").fill(token)
            page.locator("#confirm-ok").click()
            expect(tests).to_have_attribute("data-colour", "blue")
            expect(page.locator("#node-output")).to_contain_text("::test_", timeout=60_000)
            expect(tests).to_have_attribute("data-colour", re.compile("green|red"), timeout=120_000)
        finally:
            server.stop()
            for t in server.app.state.actions.threads:
                t.join(timeout=60)
    finally:
        demo.join(600)
        if config is None:
            config = load_project_config(ws / "vpstest.yaml")
        inv = lab.inventory_path(prefix)
        if inv.exists():
            try:
                _stop_services(config, load_inventory(inv), lines.append)
            finally:
                lab.down(prefix)
