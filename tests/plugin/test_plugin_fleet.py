"""The plugin end to end against a fake fleet (local commands behind the SessionPool seam, a fake
agent with known answers): the header, the numbers in results.json and in the state file's
test_results, history rows, the proof markdown with its matrix, the exit status following the
criteria, identical numbers under ``-n 2``, build and deploy once per run, failed attempts kept as
evidence, and the lease / runner-token rules for the state file."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from pytest_vpstest.loop.machine import RunState
from tests.plugin.conftest import FakeFleet

MakeFleet = Callable[..., FakeFleet]

EXPECTED_SUITES: dict[str, Any] = {
    "connectivity": {
        "direct": {"attempts": 24, "success": 12, "rate": 50.0},
        "nat_traversed": {"attempts": 24, "success": 20, "rate": 83.3},
        "relay": {"attempts": 24, "success": 24, "rate": 100.0},
    },
    "nat_traversal": {
        "none~port-restricted": {"attempts": 8, "success": 8, "rate": 100.0, "ci95": [67.56, 100.0]},
        "none~symmetric": {"attempts": 8, "success": 8, "rate": 100.0, "ci95": [67.56, 100.0]},
        "port-restricted~symmetric": {
            "attempts": 4,
            "success": 0,
            "rate": 0.0,
            "ci95": [0.0, 48.99],
            "expected_failures": 2,
            "unexpected_passes": 0,
        },
    },
    "gossip": {
        "messages": 2,
        "expected": 6,
        "delivered": 6,
        "delivery_rate": 100.0,
        "duplicates": 0,
        "latency_ms": {"p50": 12.0, "p95": 12.0, "max": 12.0},
        "crdt": {"converged": True, "expected": 10, "nodes": 4, "distinct_digests": 1},
    },
    "throughput": {
        "pairs": 4,
        "avg_mbps": 25.0,
        "min_mbps": 10.0,
        "max_mbps": 40.0,
        "by_path": {
            "direct": {"samples": 6, "avg_mbps": 20.0, "min_mbps": 10.0},
            "relayed": {"samples": 2, "avg_mbps": 40.0, "min_mbps": 40.0},
        },
    },
}
# 36 connectivity (8 expected by NAT theory to fail: 6 direct dials into n1/n2, n1<->n2 punches)
# + 10 NAT (2 expected to fail: n1<->n2) + 2 broadcasts + 1 CRDT + 4 throughput
FULL = {"passed": 43, "xfailed": 10}


def test_full_suite_serial_records_everything(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    result = fleet.run("--vps-attempts=2", "--vps-proof=all-evidence", "-p", "no:randomly")
    result.assert_outcomes(**FULL)
    assert result.ret == 0
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            f"vpstest: config {fleet.config}, inventory {fleet.dir / 'inventory.yaml'} (5 nodes)*",
            "vpstest: reproduce with: pytest --pyargs pytest_vpstest.suites --vps-config=*",
            "*vpstest verdict (threshold): PASSED*",
        ]
    )
    assert "connectivity.direct.rate: 50 (target >= 40, gap +10)" in out

    doc = fleet.results()
    assert doc["schema_version"] == 1 and doc["project"] == "demo" and doc["passed"] is True
    assert doc["test_results"]["suites"] == EXPECTED_SUITES
    assert doc["tests"] == {
        "passed": 43, "failed": 0, "skipped": 0, "xfailed": 10, "xpassed": 0, "infrastructure_failed": 0
    }
    assert {(r["from"], r["to"], r["method"]) for r in doc["pairs"] if r["suite"] == "connectivity"} >= {
        ("n2", "p1", "holepunch"),
        ("p1", "n1", "relay"),
    }

    state = fleet.state()
    assert state["test_results"]["suites"] == EXPECTED_SUITES
    assert state["test_results"]["passed"] is True
    assert state["project"] == "demo"
    # A fresh project's state written by the plugin is the loop's initial document (one author).
    assert (state["state"], state["phase"]) == ("IDLE", "initial")
    assert RunState.from_document(state).last_test_at is not None

    proofs = list((fleet.state_dir / "demo").glob("proof-*.md"))
    assert len(proofs) == 1
    proof = proofs[0].read_text()
    assert proof.startswith("# Test Proof: demo\n## Date: ")
    assert "## Result: PASSED" in proof
    assert "- ✓ connectivity.nat_traversed.rate: 83.3% (target: >= 40%, gap +43.3)" in proof
    assert "| **p1** | — | d✓ h✓ r✓ | d✗ h✓ r✓ | d✗ h✓ r✓ |" in proof
    assert "- NAT: n2 (symmetric)" in proof
    assert "### NAT Traversal by NAT Pairing" in proof
    assert "| none~symmetric | 8 | 8 | 100.0% | ≥ 70% | can be punched |" in proof
    expected_row = "| port-restricted~symmetric | 4 | 0 | 0.0% | — | expected to fail (2 expected failures) |"
    assert expected_row in proof

    run_dir = next((fleet.state_dir / "demo" / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["connectivity.relay.rate"] == 100.0
    assert "vpstest_throughput_avg_mbps{" in (run_dir / "metrics.prom").read_text()
    assert json.loads((run_dir / "evidence" / "connections.json").read_text())["pairs"]
    assert (fleet.state_dir / "demo" / "logs" / "p1.log").read_text() == "log of p1\n"

    history = fleet.state_dir / "history.sqlite"
    with sqlite3.connect(history) as db:
        hosts = {row[0]: row[1:] for row in db.execute("SELECT host_id, passed, failed FROM test_runs")}
        runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    assert runs == 1
    assert hosts["p1"][1] == 0 and hosts["p1"][0] > 0


def test_xdist_gives_the_same_numbers_and_builds_once(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    serial = fleet.run("--vps-attempts=2", f"--vps-results-json={fleet.dir / 'serial.json'}")
    serial.assert_outcomes(**FULL)
    (fleet.dir / "crdt").unlink()
    for name in ("build", "deploy"):
        (fleet.dir / f"{name}.calls").unlink()
    parallel = fleet.run("--vps-attempts=2", "-n", "2", f"--vps-results-json={fleet.dir / 'parallel.json'}")
    parallel.assert_outcomes(**FULL)
    a = json.loads((fleet.dir / "serial.json").read_text())
    b = json.loads((fleet.dir / "parallel.json").read_text())
    assert a["test_results"]["suites"] == b["test_results"]["suites"] == EXPECTED_SUITES
    assert a["pairs"] == b["pairs"]
    assert fleet.calls("build") == 1 and fleet.calls("deploy") == 1


def test_custom_criteria_failure_sets_exit_status_and_says_by_how_much(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    result = fleet.run(
        "--vps-focus=connectivity",
        "--vps-criteria=custom",
        "--vps-criteria-expr=connectivity.direct.rate >= 60 and connectivity.relay.rate == 100",
    )
    result.assert_outcomes(passed=28, xfailed=8)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*vpstest verdict (custom): FAILED*", "*FAIL connectivity.direct.rate: 50 (target >= 60, gap -10)*"]
    )
    doc = fleet.results()
    assert doc["passed"] is False
    assert doc["verdict"]["failures"] == [
        {"metric": "connectivity.direct.rate", "op": ">=", "target": 60.0, "measured": 50.0, "gap": -10.0}
    ]
    assert fleet.state()["test_results"]["passed"] is False


def test_bad_custom_expression_is_a_usage_error(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    result = fleet.run("--vps-criteria=custom", "--vps-criteria-expr=connectivity.direct.rate >= (")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*column 30: expected a number*"])


def test_failed_build_fails_setup_with_parsed_errors(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_BUILD_FAIL", "1")
    result = fleet.run("--vps-focus=throughput", "-n", "2")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*build failed*", "*src/main.rs:3:5: error?E0425?: cannot find value `x`"])
    assert fleet.calls("build") == 1 and fleet.calls("deploy") == 0


def test_nodes_that_failed_deploy_are_skipped(fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_DEPLOY_FAIL", "n2")
    result = fleet.run("--vps-focus=throughput", "-rs")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*not deployed: n2 (start: refused)*"])


def test_fewer_than_half_deployed_fails_the_session(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_DEPLOY_FAIL", "p1,p2,n1")
    result = fleet.run("--vps-focus=throughput")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*deployment failed: p1: start: refused; p2: start: refused*"])


def test_skip_build_and_deploy(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    result = fleet.run("--vps-focus=throughput", "--vps-skip-build", "--vps-skip-deploy")
    result.assert_outcomes(passed=4)
    assert fleet.calls("build") == 0 and fleet.calls("deploy") == 0


def test_garbage_probe_output_is_a_failed_attempt_with_evidence(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_GARBAGE", "1")
    result = fleet.run("--vps-focus=connectivity", "--vps-proof=all-evidence", "-k", "p1- and p2[")
    # p1->p2[direct] never gets a valid answer: a hard error of that pair's test.
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["p1->p2?direct?: the probe never gave a valid answer"])
    report = json.loads(
        next((fleet.state_dir / "demo" / "runs").glob("*/evidence/connections.json")).read_text()
    )
    failure = report["failed_attempts"][0]
    assert failure["stdout"] == "segfault\n" and failure["exit_code"] == 139
    assert failure["command"].endswith("fakeagent.sh connect p1 p2 direct")


def test_state_left_to_the_loop_when_runner_token_set(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("VPSTEST_RUNNER_TOKEN", "7")
    result = fleet.run("--vps-focus=throughput")
    result.assert_outcomes(passed=4)
    assert not (fleet.state_dir / "demo" / "state.json").exists()
    assert fleet.results()["test_results"]["suites"]["throughput"]["avg_mbps"] == 25.0


def test_lease_held_by_a_running_loop_is_a_warning(fake_fleet: MakeFleet) -> None:
    from pytest_vpstest.records.store import StateStore

    fleet = fake_fleet()
    store = StateStore(fleet.state_dir, "demo")
    lease = store.acquire()
    try:
        result = fleet.run("--vps-focus=throughput")
    finally:
        store.release(lease)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*warning: state file not updated: project 'demo' is already being run by pid*"]
    )
    assert result.ret == 0


def test_focus_deselects_other_suites_and_marker_selection(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    result = fleet.run("--vps-focus=gossip", "-m", "soak")
    result.assert_outcomes(passed=3, deselected=50)  # 53 suite tests in all


def test_html_report_and_junit_carry_the_measurements(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    html, junit = fleet.dir / "report.html", fleet.dir / "junit.xml"
    result = fleet.run(
        "--vps-focus=connectivity",
        "--vps-attempts=1",
        f"--html={html}",
        "--self-contained-html",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
    )
    result.assert_outcomes(passed=28, xfailed=8)
    page = html.read_text()
    assert "pytest-vpstest: connectivity matrix" in page
    assert 'class="vpstest-matrix"' in page
    row = page[page.index("<tr><th>p1</th>") :].split("</tr>", 1)[0]
    assert [cell.rsplit(">", 1)[-1] for cell in row.split("</td>")[:-1]] == [
        "—",
        "d✓ h✓ r✓",
        "d✗ h✓ r✓",
        "d✗ h✓ r✓",
    ]
    assert "vpstest measurement" in page
    xml = junit.read_text()
    assert '<property name="vpstest.nodes" value="n1,n2" />' in xml
    assert '<property name="success" value="1/1" />' in xml
    assert "&quot;category&quot;:&quot;relay&quot;" in xml
    assert '<property name="vpstest.connectivity.relay.rate" value="100.0" />' in xml


def test_junit_xunit2_gets_suite_properties_without_warnings(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    junit = fleet.dir / "junit.xml"
    result = fleet.run("--vps-focus=throughput", f"--junitxml={junit}")
    result.assert_outcomes(passed=4)
    assert "record_property is incompatible" not in result.stdout.str()
    assert '<property name="vpstest.throughput.avg_mbps" value="25.0" />' in junit.read_text()


def test_improvement_compares_with_the_previous_run(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    first = fleet.run("--vps-focus=connectivity", "--vps-attempts=1", "--vps-criteria=improvement")
    assert first.ret == 0
    first.stdout.fnmatch_lines(["*note: first run of this project and focus: baseline*"])
    monkeypatch.setenv("FAKE_RELAY_DOWN", "1")
    second = fleet.run("--vps-focus=connectivity", "--vps-attempts=1", "--vps-criteria=improvement")
    assert second.ret == pytest.ExitCode.TESTS_FAILED
    second.stdout.fnmatch_lines(
        ["*FAIL connectivity.relay.rate: 75 (target >= 100, gap -25) — previous 100*"]
    )
    # p1's relay never works: those three pair tests fail as hard errors.
    second.assert_outcomes(passed=25, failed=3, xfailed=8)


def test_nat_suite_skips_on_a_loopback_lab(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet(inventory_extra="lab: loopback\n")
    result = fleet.run("--vps-focus=nat-traversal", "-rs")
    result.assert_outcomes(skipped=10)
    result.stdout.fnmatch_lines(["*needs NAT: the loopback lab has no NAT routers*"])
    assert not list(fleet.state_dir.glob("demo/runs/*/results.json"))


def test_ini_keys_configure_the_plugin(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    fleet.pytester.makeini(
        "[pytest]\nvps_config = vps.yaml\nvps_focus = throughput\nvps_skip_build = true\n"
        "vps_results_json = out/results.json\n"
    )
    result = fleet.pytester.runpytest(
        "-p", "fakefleet_plugin", "--pyargs", "pytest_vpstest.suites", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=4, deselected=49)
    result.stdout.fnmatch_lines([f"vpstest: config {fleet.config}, *", "vpstest: focus throughput, *"])
    assert fleet.calls("build") == 0 and fleet.calls("deploy") == 1
    assert json.loads((fleet.dir / "out" / "results.json").read_text())["focus"] == "throughput"


def test_results_that_cannot_be_written_fail_the_run(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    blocker = fleet.dir / "blocker"
    blocker.write_text("a file where a directory is needed")
    result = fleet.run("--vps-focus=throughput", f"--vps-results-json={blocker / 'results.json'}")
    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["pytest-vpstest: results not recorded: *"])


def test_direct_dials_into_nated_nodes_are_measured_only_when_asked(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    fleet.config.write_text(fleet.config.read_text().replace("direct_to_nat: true", "direct_to_nat: false"))
    result = fleet.run("--vps-focus=connectivity", "--vps-attempts=1")
    # 4 peers: 12 ordered pairs × 3 methods, less the 6 direct dials into n1 and n2; the two
    # n1<->n2 punches are expected by NAT theory to fail.
    result.assert_outcomes(passed=28, xfailed=2, deselected=17)
    direct = fleet.results()["test_results"]["suites"]["connectivity"]["direct"]
    assert direct == {"attempts": 6, "success": 6, "rate": 100.0}


def test_a_connect_answering_ok_false_fails_its_test_with_the_stderr_tail(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_PUNCH_FALSE", "1")
    result = fleet.run("--vps-focus=nat-traversal", "--vps-attempts=2", "-k", "p1- and n1[")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*p1->n1?holepunch? (none~port-restricted): 2 of 2 attempts failed",
            "*attempt 1: probe said ok=false: no connection*",
            "*stderr: punch: no answer from n1 within 5 s (session 42)",
        ]
    )


def test_a_success_where_nat_theory_expects_failure_is_an_unexpected_pass(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_XPASS", "1")
    selected = "n1- and n2[ or n2- and n1["
    result = fleet.run("--vps-focus=nat-traversal", "--vps-attempts=1", "-rX", "-k", selected)
    result.assert_outcomes(xpassed=2)
    result.stdout.fnmatch_lines(["XPASS*unexpected pass: connected 1/1 although NAT theory expects failure*"])
    doc = fleet.results()
    assert doc["tests"]["xpassed"] == 2
    group = doc["test_results"]["suites"]["nat_traversal"]["port-restricted~symmetric"]
    assert group["unexpected_passes"] == 2 and group["expected_failures"] == 0


def test_a_broken_status_template_is_one_clear_error_before_any_probe(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    broken = fleet.config.read_text().replace("fakeagent.sh status {node}", "fakeagent.sh statuz {node}")
    fleet.config.write_text(broken)
    result = fleet.run("--vps-focus=throughput")
    result.assert_outcomes(errors=4)
    out = result.stdout.str()
    assert "status probe failed on every node (4): no output; command: sh " in out
    assert "run `vpstest contract check`" in out
    # the session's status check ran once, not once per test, and no throughput probe ran
    status = json.loads(next((fleet.state_dir / "demo" / "runs").glob("*/status.json")).read_text())
    assert set(status["answers"]) == {"p1", "p2", "n1", "n2"} and status["ok"] is False


def test_a_batch_sut_answers_the_matrix_through_one_command_per_node(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    batch = f'  batch: "python3 {fleet.dir / "fakebatch.py"} {{node}}"\n'
    fleet.config.write_text(fleet.config.read_text().replace("probes:\n", "probes:\n" + batch))
    result = fleet.run("--vps-focus=connectivity", "--vps-attempts=2", "--vps-proof=all-evidence")
    result.assert_outcomes(passed=28, xfailed=8)
    doc = fleet.results()
    assert doc["test_results"]["suites"]["connectivity"] == EXPECTED_SUITES["connectivity"]
    # One batch command per source node answered all 72 probes; no single probe ran.
    assert sorted((fleet.dir / "batch.calls").read_text().split()) == ["n1", "n2", "p1", "p2"]
    evidence = json.loads(
        next((fleet.state_dir / "demo" / "runs").glob("*/evidence/connections.json")).read_text()
    )
    failure = next(f for f in evidence["failed_attempts"] if "p1" in f["command"] and "n1" in f["command"])
    assert failure["command"].startswith(f"python3 {fleet.dir / 'fakebatch.py'} p1 <<< {{")
    assert '"peer": "n1"' in failure["command"] and '"ok": false' in failure["stdout"]
    # A request says what a single probe's placeholders say of the peer.
    peer_keys = ("peer_address", "peer_id", "peer_public_address")
    assert all(f'"{key}": ' in failure["command"] for key in peer_keys)


def test_a_batch_sut_answers_gossip_and_crdt_through_one_command_per_node(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    batch = f'  batch: "python3 {fleet.dir / "fakebatch.py"} {{node}}"\n'
    fleet.config.write_text(fleet.config.read_text().replace("probes:\n", "probes:\n" + batch))
    result = fleet.run("--vps-focus=gossip", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    assert fleet.results()["test_results"]["suites"]["gossip"] == EXPECTED_SUITES["gossip"]
    calls = [line.split() for line in (fleet.dir / "agent.calls").read_text().splitlines()]
    gossip = {"publish", "received", "crdt"}
    assert not [c for c in calls if c[0] == "single" and c[1] in gossip]  # no single gossip probe ran
    through_batch = Counter(c[1] for c in calls if c[0] == "batch")
    # 2 publishes; 3 receivers each, delivered on the first poll; 4 reads, 4 increments, 4 polls
    assert through_batch == {"publish": 2, "received": 6, "crdt": 12}
    assert sorted((fleet.dir / "batch.calls").read_text().split()) == ["n1", "n2", "p1", "p2"]
    result.stdout.fnmatch_lines(["vpstest gossip: 20/20 probes, *, done in * s"])


def test_matrix_progress_is_shown_per_suite(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    result = fleet.run("--vps-focus=connectivity", "--vps-attempts=2")
    result.assert_outcomes(passed=28, xfailed=8)
    result.stdout.fnmatch_lines(["vpstest connectivity: 72/72 probes, *, done in * s"])


def test_a_hanging_probe_times_out_and_holds_up_no_other_pair(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_HANG", "1")
    result = fleet.run("--vps-focus=connectivity", "--vps-attempts=2", "-k", "p1- and p2[")
    # Only p1->p2[direct] hangs; its attempts time out, the pair's other methods pass.
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["p1->p2?direct?: the probe never gave a valid answer", "*attempt 1: timed out after 10s*"]
    )


def test_nodes_handed_over_as_unhealthy_are_skipped_and_left_out_of_the_rates(
    fake_fleet: MakeFleet,
) -> None:
    fleet = fake_fleet()
    unhealthy = fleet.dir / "skip-nodes.json"
    unhealthy.write_text(json.dumps({"n2": "node unhealthy: n2 (provisioning: ssh: connection refused)"}))
    result = fleet.run("--vps-focus=throughput", "--vps-skip-nodes", str(unhealthy), "-rs")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*node unhealthy: n2 (provisioning: ssh: connection refused)*"])
    results = fleet.results()
    assert results["unhealthy"] == {"n2": "provisioning: ssh: connection refused"}
    assert results["passed"] is True and results["tests"]["failed"] == 0
    assert all("n2" not in (p["from"], p["to"]) for p in results["pairs"])
    status = json.loads(next((fleet.state_dir / "demo" / "runs").glob("*/status.json")).read_text())
    assert set(status["answers"]) == {"p1", "p2", "n1"}  # an unhealthy node is not asked


def test_a_node_unreachable_during_the_run_skips_its_pairs_as_unhealthy(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_UNREACHABLE", "p2")
    result = fleet.run("--vps-focus=throughput", "--vps-skip-deploy", "-rs")
    # p2 sends in one pair and receives in another: the first probe from p2 finds it unreachable.
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*node unhealthy: p2 (unreachable during the run*"])
    results = fleet.results()
    assert "p2" in results["unhealthy"]
    assert all(p["from"] != "p2" for p in results["pairs"])
    # Found at the session's status check: unreachable is the node's fault, not the status template's.
    status = json.loads(next((fleet.state_dir / "demo" / "runs").glob("*/status.json")).read_text())
    assert status["ok"] is True and status["answers"]["p2"]["transport_error"] is True


def test_a_run_left_behind_by_a_dead_loop_runner_records_nothing_but_its_interruption(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    fleet = fake_fleet()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is no longer running: the runner that started this pytest died
    monkeypatch.setenv("VPSTEST_RUNNER_PID", str(dead.pid))
    result = fleet.run("--vps-focus=throughput")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    results = fleet.results()
    assert results["passed"] is False and "is gone" in results["interrupted"]
    assert not (fleet.state_dir / "history.sqlite").exists()
    assert not list((fleet.state_dir / "demo").glob("proof-*.md"))
    assert not (fleet.state_dir / "demo" / "state.json").exists()


def test_the_per_node_limit_holds_for_batch_probes_and_other_workers_probes_together(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    batch = f'  batch: "python3 {fleet.dir / "fakebatch.py"} {{node}}"\n'
    fleet.config.write_text(fleet.config.read_text().replace("probes:\n", "probes:\n" + batch))
    monkeypatch.setenv("FAKE_PROBE_DELAY", "0.3")
    # One worker's engine sends every probe of the suites (gossip's too) as batch requests, under
    # the run's lock-file slots that every worker's probes take.
    result = fleet.run("--vps-attempts=2", "--vps-node-concurrency=2", "-n", "2", "-p", "no:randomly")
    result.assert_outcomes(**FULL)
    seen: dict[str, int] = {}
    for line in (fleet.dir / "inflight.log").read_text().splitlines():
        node, count = line.split()
        seen[node] = max(seen.get(node, 0), int(count))
    assert fleet.calls("batch") == 4  # the engine's probes went through the batch command
    assert seen and max(seen.values()) <= 2, seen
    # Under xdist pytest prints one line of results: the engine's progress stays out of it.
    lines = result.stdout.lines
    first = next(i for i, line in enumerate(lines) if RESULT_LINE.match(line))
    match = RESULT_LINE.match(lines[first])
    assert match and len(match["results"]) == 53, lines[first]
    assert not any(line.startswith("vpstest ") for line in lines[:first])


RESULT_LINE = re.compile(r"^(?P<path>\S+\.py )?(?P<results>[.FEsxX]+)\s*\[\s*\d+%\]$")


def test_matrix_progress_at_q_leaves_one_clean_dot_line(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_PROBE_DELAY", "0.05")  # long enough for progress to be due mid-run
    result = fleet.run("--vps-focus=connectivity", "--vps-attempts=2", "-q", "-p", "no:randomly")
    result.assert_outcomes(passed=28, xfailed=8)
    lines = result.stdout.lines
    first = next(i for i, line in enumerate(lines) if line[:1] in ".x")
    match = RESULT_LINE.match(lines[first])
    assert match and len(match["results"]) == 36, lines[first]
    assert not any(line.startswith("vpstest ") for line in lines[:first])
    # The suite's final figures come after the dot line, with the summary.
    assert lines[first + 1].startswith("vpstest connectivity: 72/72 probes, ")


def test_matrix_progress_at_normal_verbosity_goes_between_file_lines(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_PROBE_DELAY", "0.05")
    result = fleet.run("--vps-attempts=2", "-p", "no:randomly")
    result.assert_outcomes(**FULL)
    lines = result.stdout.lines
    start = lines.index("collected 53 items") + 2
    end = next(i for i, line in enumerate(lines) if line.startswith("=") and i > start)
    run = [line for line in lines[start:end] if line]
    # Each test file's results on one whole line; the engine's lines only between them.
    files = [line for line in run if not line.startswith("vpstest ")]
    assert [line.split()[0] for line in files] == [
        "test_connectivity.py", "test_gossip.py", "test_nat_traversal.py", "test_throughput.py"
    ], run
    assert all(RESULT_LINE.match(line) for line in files), run
    assert "vpstest connectivity: 72/72 probes" in "\n".join(run)


def test_nodes_unreachable_at_the_status_check_are_unhealthy_not_a_broken_template(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_UNREACHABLE", "p1,p2,n1,n2")
    result = fleet.run("--vps-focus=throughput", "--vps-skip-deploy", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) == 0 and outcomes.get("failed", 0) == 0, result.stdout.str()
    assert "status probe failed on every node" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*node unhealthy: *(unreachable during the run*"])
    status = json.loads(next((fleet.state_dir / "demo" / "runs").glob("*/status.json")).read_text())
    assert status["ok"] is True and all(a["transport_error"] for a in status["answers"].values())


def _with_reset(fleet: FakeFleet) -> None:
    text = fleet.config.read_text()
    crdt = next(line for line in text.splitlines() if line.strip().startswith("crdt:"))
    reset = crdt.replace("crdt:", "reset:").replace("crdt {node} {amount}", "reset {node}")
    fleet.config.write_text(text.replace(crdt, f"{crdt}\n{reset}"))


def test_resets_before_later_punches_never_overlap_a_probe_on_the_same_node(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    _with_reset(fleet)
    log = fleet.dir / "probes.log"
    monkeypatch.setenv("FAKE_PROBE_LOG", str(log))
    result = fleet.run("--vps-focus=nat-traversal", "--vps-attempts=3")
    result.assert_outcomes(passed=8, xfailed=2)
    entries = [line.split() for line in log.read_text().splitlines()]
    resets = [(node, float(a), float(b)) for kind, node, _, a, b in entries if kind == "reset"]
    probes = [((node, peer), float(a), float(b)) for kind, node, peer, a, b in entries if kind == "connect"]
    # 10 ordered pairs x attempts 2 and 3 x both nodes; the first attempt of a pair has no reset
    assert len(resets) == 10 * 2 * 2 and len(probes) == 10 * 3
    overlapping = [
        (node, pair)
        for node, r0, r1 in resets
        for pair, p0, p1 in probes
        if node in pair and p0 < r1 and r0 < p1
    ]
    assert overlapping == []


def test_a_failed_reset_fails_the_attempt_it_came_before(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    _with_reset(fleet)
    monkeypatch.setenv("FAKE_RESET_FAIL", "n1")
    result = fleet.run("--vps-focus=nat-traversal", "--vps-attempts=2", "-k", "p1- and n1[")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*attempt 2: reset of n1 before attempt 2 failed: probe said ok=false: peer table locked*"]
    )


def test_an_agent_that_dies_during_the_run_skips_its_remaining_pairs_as_unhealthy(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    # p2's agent answers its first two probes, then is not running; SSH to p2 still works.
    monkeypatch.setenv("FAKE_AGENT_DIES", "p2:2")
    result = fleet.run("--vps-focus=connectivity", "--vps-attempts=2", "-rs")
    result.stdout.fnmatch_lines(["*node unhealthy: p2 (agent not answering on p2: 3 probes in a row said*"])
    results = fleet.results()
    assert results["unhealthy"]["p2"].startswith("agent not answering on p2")
    # p2's pairs are out of the rates, also those measured (and reported) before it was found out;
    # no failure is blamed on the software because of p2.
    assert all("p2" not in (p["from"], p["to"]) for p in results["pairs"])
    for failed in results["failed_tests"]:
        assert ("p2" in failed["nodes"]) == (failed["cause"] == "infrastructure"), failed
    assert not any("p2" in f["nodes"] and f["cause"] == "software" for f in results["failed_tests"])
    # The criteria's tests.failed counts software failures only: p2's are infrastructure_failed.
    software = [f for f in results["failed_tests"] if f["cause"] == "software"]
    infrastructure = [f for f in results["failed_tests"] if f["cause"] == "infrastructure"]
    assert results["tests"]["failed"] == len(software)
    assert results["tests"]["infrastructure_failed"] == len(infrastructure)
    assert results["metrics"]["tests.failed"] == len(software)
    # Once the run knows the agent is down it is not asked again: p2 sends in 7 cells × 2 attempts,
    # of which only the first 2 answers, 3 in a row "not running" and those already in flight ran.
    assert fleet.calls("agent-p2") < 14


def test_an_agent_already_down_at_the_status_check_is_unhealthy_not_undeployed(
    fake_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fake_fleet()
    monkeypatch.setenv("FAKE_AGENT_DIES", "p2:0")  # SSH works, p2's agent answers nothing
    result = fleet.run("--vps-focus=connectivity", "--vps-skip-deploy", "-rs")
    said = "status said 'agent not running"
    result.stdout.fnmatch_lines([f"*node unhealthy: p2 (agent not answering on p2: {said}*"])
    assert "not deployed: p2" not in result.stdout.str()
    results = fleet.results()
    assert "p2" in results["unhealthy"] and results["tests"]["failed"] == 0
    assert fleet.calls("agent-p2") == 1  # asked once, at the status check
