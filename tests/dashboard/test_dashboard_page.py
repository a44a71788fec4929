"""The dashboard page in a real browser over a state directory written through the real store.

Each test asserts what an operator sees: compartment colours and tooltips, live updates without
a reload, the node popup, the matrix, the history charts, the log panel, escaping, no CDN, and
that actions need the token.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import TOKEN
from tests.dashboard.fleetfiles import FakeProject

XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'


def deployed_fleet(state_dir: Path, **kw: Any) -> FakeProject:
    fp = FakeProject(state_dir, "alpha", ["n1", "n2", "n3", "n4"], **kw)
    fp.move("SETUP")
    fp.set_nodes(status="online", last_check="2026-01-01T00:00:00Z")
    fp.move("BUILD")
    fp.move("DEPLOY")
    fp.set_nodes(deployed=True)
    return fp


def colour(page: Any, node: str) -> str:
    return str(page.locator(f'tr[data-node="{node}"] .comp.tests').get_attribute("data-colour"))


def post(url: str, token: str | None = None, body: bytes = b"{}") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method="POST")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_compartments_have_the_five_colours_and_a_tooltip(state_dir: Path, dashboard: Any, page: Any) -> None:
    fp = deployed_fleet(state_dir, node_tests={"n4": "disabled"})
    fp.move("TEST")
    fp.record_test("r1", {"n1": (8, 0, ""), "n2": (7, 1, "FAILED test_direct[n2->n1]")})
    fp.move("WAIT_1HR")
    fp.set_node("n1", health="Live")
    fp.set_node("n3", status="offline", deployed=False)
    server = dashboard()
    page.goto(server.url)
    expect = _expect()
    expect(page.locator('tr[data-node="n1"] .comp.tests')).to_have_attribute("data-colour", "green")
    assert colour(page, "n2") == "red"
    assert colour(page, "n3") == "yellow"  # never tested
    assert colour(page, "n4") == "gray"  # disabled in the config
    assert page.locator('tr[data-node="n1"] .comp.health').inner_text() == "Live"
    assert page.locator('tr[data-node="n3"] .comp.reach').inner_text() == "offline"
    page.locator('tr[data-node="n1"] .comp.tests').hover()
    expect(page.locator("#tooltip")).to_be_visible()
    assert page.locator("#tooltip").inner_text() == "Last test: just now (8/8 passed)"
    page.locator('tr[data-node="n2"] .comp.tests').hover()
    assert page.locator("#tooltip").inner_text() == "Last test: just now (7/8 passed)"


def test_page_follows_the_loop_without_a_reload(state_dir: Path, dashboard: Any, page: Any) -> None:
    fp = deployed_fleet(state_dir)
    server = dashboard()
    page.goto(server.url)
    expect = _expect()
    page.evaluate("window.__sameDocument = true")
    card = page.locator('section[data-project="alpha"]')
    expect(card).to_have_attribute("data-state", "DEPLOY")
    assert colour(page, "n1") == "yellow"
    fp.move("TEST")
    expect(card).to_have_attribute("data-state", "TEST")
    expect(page.locator('tr[data-node="n1"] .comp.tests')).to_have_attribute("data-colour", "blue")
    fp.record_test("r1", {"n1": (3, 0, ""), "n2": (2, 1, "boom")})
    fp.move("FIX", "tests failed")
    expect(page.locator('tr[data-node="n1"] .comp.tests')).to_have_attribute("data-colour", "green")
    expect(page.locator('tr[data-node="n2"] .comp.tests')).to_have_attribute("data-colour", "red")
    assert page.evaluate("window.__sameDocument") is True  # updated in place, never reloaded
    page.locator(".section-timeline summary").click()
    expect(page.locator(".timeline li").first).to_contain_text("TEST → FIX — tests failed")


def test_popup_shows_failed_pairs_and_output(state_dir: Path, dashboard: Any, page: Any) -> None:
    fp = deployed_fleet(state_dir)
    fp.move("TEST")
    pairs = [
        {"suite": "connectivity", "from": "n2", "to": "n1", "method": "direct", "attempts": 10, "success": 3},
        {"suite": "connectivity", "from": "n1", "to": "n3", "method": "relay", "attempts": 10, "success": 10},
    ]
    fp.record_test(
        "r1", {"n1": (1, 0, ""), "n2": (0, 1, "test_direct[n2->n1] FAILED: 3/10 connected")}, pairs
    )
    fp.move("FIX")
    server = dashboard()
    page.goto(server.url)
    page.locator('tr[data-node="n2"]').click()
    expect = _expect()
    expect(page.locator("#node-dialog")).to_be_visible()
    expect(page.locator("#node-title")).to_have_text("alpha / n2")
    rows = page.locator(".failed-pairs tr")
    expect(rows).to_have_count(2)  # header + the one failed pair (the relay pair passed)
    assert "3/10" in rows.nth(1).inner_text()
    assert "test_direct[n2->n1] FAILED: 3/10 connected" in page.locator(".failed-output").inner_text()
    expect(page.locator("#btn-run-tests")).to_be_enabled()
    expect(page.locator("#btn-rollback")).to_be_enabled()


def test_script_in_test_names_and_node_output_is_shown_as_text(
    state_dir: Path, dashboard: Any, page: Any
) -> None:
    fp = deployed_fleet(state_dir)
    fp.move("TEST", f"tests failed: {XSS}")
    fp.record_test(
        "r1",
        {"n1": (0, 1, f"FAILED test_{XSS}"), "n2": (1, 0, "")},
        [{"suite": XSS, "from": "n1", "to": "n2", "method": "direct", "attempts": 2, "success": 0}],
    )
    fp.set_node("n1", error=f"disk: {XSS}", health=XSS)
    (fp.dir / "runner.log").write_text(f"line with {XSS}\n")
    (fp.dir / "proof-1.md").write_text(
        f"# Proof\n\nfailed test: {XSS}\n\n[link](javascript:window.__pwned=1)\n"
    )
    server = dashboard()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server.url)
    expect = _expect()
    expect(page.locator('tr[data-node="n1"] .comp.health')).to_have_text(XSS)
    page.locator(".section-timeline summary").click()
    expect(page.locator(".timeline")).to_contain_text(XSS)
    page.locator(".section-log summary").click()
    expect(page.locator(".runner-log")).to_contain_text(XSS)
    page.locator('tr[data-node="n1"]').click()
    expect(page.locator(".failed-output")).to_have_text(f"FAILED test_{XSS}")
    expect(page.locator(".failed-pairs")).to_contain_text(XSS)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main script, main img, #node-dialog img").count() == 0
    page.goto(server.url + "projects/alpha/proof/proof-1.md")
    expect(page.locator("body")).to_contain_text(XSS)
    assert page.locator("body script, body img").count() == 0
    assert page.locator("a[href^='javascript']").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []


def test_every_asset_comes_from_the_dashboard(state_dir: Path, dashboard: Any, page: Any) -> None:
    fp = deployed_fleet(state_dir)
    fp.move("TEST")
    fp.record_test("r1", {"n1": (1, 0, "")}, metrics={"connectivity": {"direct": {"rate": 99.0}}})
    server = dashboard()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    response = page.goto(server.url)
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.locator(".section-history summary").click()
    _expect()(page.locator("svg.chart-svg").first).to_be_visible()
    assert requested and all(u.startswith(server.url) for u in requested), requested


def test_matrix_heat_map_marks_cells_against_nat_theory(state_dir: Path, dashboard: Any, page: Any) -> None:
    # n1 none, n2 full-cone, n3 port-restricted, n4 symmetric (FakeProject's NAT order)
    fp = deployed_fleet(state_dir)
    fp.move("TEST")
    pairs = [
        {"suite": "connectivity", "from": "n1", "to": "n2", "method": "direct", "attempts": 10, "success": 0},
        {"suite": "connectivity", "from": "n1", "to": "n3", "method": "direct", "attempts": 10, "success": 0},
        {
            "suite": "connectivity",
            "from": "n4",
            "to": "n3",
            "method": "holepunch",
            "attempts": 20,
            "success": 20,
        },
        {"suite": "connectivity", "from": "n2", "to": "n1", "method": "relay", "attempts": 10, "success": 10},
    ]
    fp.record_test("r1", {"n1": (1, 0, "")}, pairs)
    fp.move("FIX")
    server = dashboard()
    page.goto(server.url)
    page.locator(".section-matrix summary").click()
    direct = page.locator('table.matrix[data-method="direct"]')
    expect = _expect()
    expect(direct).to_be_visible()
    assert "full-cone" in direct.locator("th").all_inner_texts()[1]
    cell = direct.locator('td[data-from="n1"][data-to="n2"]')
    assert cell.inner_text() == "0% [0–27.8] n=10"
    assert "mismatch" in str(cell.get_attribute("class"))  # full-cone listener: direct should connect
    assert "mismatch" not in str(direct.locator('td[data-from="n1"][data-to="n3"]').get_attribute("class"))
    punch = page.locator('table.matrix[data-method="holepunch"] td[data-from="n4"][data-to="n3"]')
    assert "mismatch" in str(punch.get_attribute("class"))  # symmetric ↔ port-restricted cannot punch
    relay = page.locator('table.matrix[data-method="relay"] td[data-from="n2"][data-to="n1"]')
    assert "mismatch" not in str(relay.get_attribute("class"))
    relay.hover()
    expect(page.locator("#tooltip")).to_contain_text("NAT theory expects success")


def test_history_charts_link_each_point_to_its_run(state_dir: Path, dashboard: Any, page: Any) -> None:
    fp = deployed_fleet(state_dir)
    fp.move("TEST")
    base = time.time() - 100
    for i in range(5):
        fp.record_test(
            f"run-{i}",
            {"n1": (1, 0, "")},
            started=base + 10 * i,
            metrics={
                "connectivity": {"direct": {"rate": 80.0 + i}, "relay": {"rate": 100.0}},
                "throughput": {"all": {"avg_mbps": 50.0 + i, "iperf3_avg_mbps": 100.0}},
                "gossip": {"all": {"delivery_rate": 99.0}, "latency_ms": {"p50": 12.0, "p95": 40.0}},
            },
        )
    server = dashboard()
    page.goto(server.url)
    page.locator(".section-history summary").click()
    expect = _expect()
    charts = page.locator(".chart")
    expect(charts).to_have_count(4)
    expect(charts.nth(0).locator("a.point")).to_have_count(10)  # 5 runs × (direct, relay)
    expect(charts.nth(1).locator("a.point")).to_have_count(5)
    expect(charts.nth(3).locator("a.point")).to_have_count(10)  # p50 and p95
    charts.nth(1).locator("a.point").nth(4).click()
    expect(page.locator("body")).to_contain_text('"id": "run-4"')
    expect(page.locator("body")).to_contain_text('"avg_mbps": 54.0')


def test_log_panel_streams_new_lines(state_dir: Path, dashboard: Any, page: Any) -> None:
    fp = deployed_fleet(state_dir)
    log = fp.dir / "runner.log"
    log.write_text("first line\n")
    server = dashboard()
    page.goto(server.url)
    page.locator(".section-log summary").click()
    expect = _expect()
    expect(page.locator(".runner-log")).to_have_text("first line\n")
    with log.open("a") as fh:
        fh.write("  pytest: test_direct[n1->n2] PASSED\n")
    expect(page.locator(".runner-log")).to_contain_text("test_direct[n1->n2] PASSED")


def test_actions_are_refused_without_the_token(state_dir: Path, dashboard: Any, page: Any) -> None:
    fp = deployed_fleet(state_dir, node_tests={"n4": "disabled"})
    fp.move("WAIT_1HR")
    server = dashboard()
    for action in ("run-tests", "rollback"):
        url = f"{server.url}api/projects/alpha/nodes/n1/{action}"
        assert post(url)[0] == 401
        assert post(url, "wrong-token-0123456789")[0] == 401
    # Through the page: the confirmation asks for the token; a wrong one is refused.
    page.goto(server.url)
    page.locator('tr[data-node="n1"]').click()
    page.locator("#btn-rollback").click()
    expect = _expect()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text("previous build restored")
    page.locator("#confirm-cancel").click()
    expect(page.locator("#node-message")).to_have_text("Cancelled.")
    page.locator("#btn-rollback").click()
    page.locator("#confirm-token").fill("not-the-token-at-all")
    page.locator("#confirm-ok").click()
    expect(page.locator("#node-message")).to_contain_text("Refused: rollback needs the dashboard token")
    assert not (fp.dir / "dashboard" / "rollbacks.jsonl").exists()
    # A disabled node's tests are refused even with the token.
    status, body = post(f"{server.url}api/projects/alpha/nodes/n4/run-tests", TOKEN)
    assert status == 409 and "disabled" in body["error"]


def test_run_tests_streams_output_and_colours_the_result(state_dir: Path, dashboard: Any, page: Any) -> None:
    """Run tests from the popup: blue while pytest runs, its output streams, then the result (no fleet
    answers here, so never green), which a restarted dashboard shows again."""
    fp = deployed_fleet(state_dir, test_timeout=45)
    fp.move("WAIT_1HR")
    server = dashboard()
    page.goto(server.url)
    page.locator('tr[data-node="n1"]').click()
    page.locator("#btn-run-tests").click()
    page.locator("#confirm-token").fill(TOKEN)
    page.locator("#confirm-ok").click()
    expect = _expect()
    expect(page.locator("#node-message")).to_have_text("Tests started.")
    expect(page.locator('tr[data-node="n1"] .comp.tests')).to_have_attribute("data-colour", "blue")
    expect(page.locator("#node-output")).to_contain_text("test_connectivity.py::", timeout=60_000)
    tests = page.locator('tr[data-node="n1"] .comp.tests')
    expect(tests).to_have_attribute("data-tip", re.compile(r"^Last test: "), timeout=90_000)
    # Nothing answers here, so nothing may pass: the node ends red (failed) or yellow (every test
    # skipped as unhealthy), whichever the harness decides — never green.
    colour = tests.get_attribute("data-colour")
    assert colour in ("red", "yellow"), colour
    if colour == "yellow":
        expect(tests).to_have_attribute("data-tip", re.compile("all skipped"))
    # The record is in files: a restarted dashboard shows the same.
    server.stop()
    again = dashboard()
    page.goto(again.url)
    expect(page.locator('tr[data-node="n1"] .comp.tests')).to_have_attribute("data-colour", colour)


def test_runner_posts_need_the_token(state_dir: Path, dashboard: Any, page: Any) -> None:
    from pytest_vpstest.loop.notify import DeliveryError, OutboxEvent, WebhookChannel

    deployed_fleet(state_dir)
    server = dashboard()
    event = OutboxEvent(1, "e1", "alpha", "transition", "alpha: DEPLOY -> TEST", "now", {})
    with pytest.raises(DeliveryError, match="HTTP 401"):
        WebhookChannel(server.url + "api/events").deliver(event)
    with pytest.raises(DeliveryError, match="HTTP 401"):
        WebhookChannel(server.url + "api/events", token=lambda: "wrong-token-0123456789").deliver(event)
    WebhookChannel(server.url + "api/events", token=lambda: TOKEN).deliver(event)


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def test_run_tests_of_n1_runs_n1s_pairs_only_not_n10s(state_dir: Path, dashboard: Any, page: Any) -> None:
    """Run tests selects the node exactly: ``-k n1`` would also run n10's pairs; pairs with a node
    whose tests are disabled skip, as in the loop."""
    # Nothing answers here: the run waits out the hole punches' timeouts (about a minute) before its
    # summary of skip reasons; the timeout leaves room for that on a loaded machine.
    fp = FakeProject(state_dir, "alpha", ["n1", "n2", "n10", "n11"], node_tests={"n11": "disabled"},
                     test_timeout=240)
    fp.move("SETUP")
    fp.set_nodes(status="online", last_check="2026-01-01T00:00:00Z")
    fp.move("DEPLOY")
    fp.set_nodes(deployed=True)
    fp.move("WAIT_1HR")
    server = dashboard()
    page.goto(server.url)
    page.locator('tr[data-node="n1"]').click()
    page.locator("#btn-run-tests").click()
    page.locator("#confirm-token").fill(TOKEN)
    page.locator("#confirm-ok").click()
    expect = _expect()
    tests = page.locator('tr[data-node="n1"] .comp.tests')
    expect(tests).to_have_attribute("data-tip", re.compile(r"^Last test: "), timeout=270_000)
    output = page.locator("#node-output").inner_text()
    ids = set(re.findall(r"::(test_\w+\[[^\s]*\]\])", output))
    assert ids, output[-2000:]
    ends = {i: set(re.findall(r"\[(\w+)(?:->(\w+))?\[", i)[0]) - {""} for i in ids}
    assert all("n1" in nodes for nodes in ends.values()), sorted(i for i, n in ends.items() if "n1" not in n)
    assert "test_connect[n1->n10[relay]]" in ids and "test_connect[n10->n1[relay]]" in ids
    assert re.search(r"SKIPPED \[\d+\] .*: tests disabled for node n11", output), output[-3000:]


def test_while_the_loop_tests_only_auto_nodes_are_blue(state_dir: Path, dashboard: Any, page: Any) -> None:
    """The loop's TEST leaves manual and disabled nodes out: they are not shown as running."""
    fp = deployed_fleet(state_dir, node_tests={"n3": "manual", "n4": "disabled"})
    fp.move("TEST")
    server = dashboard()
    page.goto(server.url)
    expect = _expect()
    expect(page.locator('tr[data-node="n1"] .comp.tests')).to_have_attribute("data-colour", "blue")
    assert colour(page, "n3") == "yellow"
    assert colour(page, "n4") == "gray"
    page.locator('tr[data-node="n3"] .comp.tests').hover()
    expect(page.locator("#tooltip")).to_contain_text("tests run manually for this node (Run tests)")
