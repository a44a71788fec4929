"""Proof rendering: the proof summary's sections, criteria with target vs measured, fix
commits from the state file, and the connectivity matrix (rows from, columns to, d/h/r marks);
Prometheus text format of the metrics."""

from __future__ import annotations

from pathlib import Path

from pytest_vpstest.config import Inventory, Node
from pytest_vpstest.criteria import threshold
from pytest_vpstest.records.proof import (
    ProofInput,
    fix_commits_of,
    format_duration,
    prometheus_text,
    render_matrix,
    render_matrix_html,
    render_proof,
    write_proof,
)

ROWS = [
    {"suite": "connectivity", "from": "a", "to": "b", "method": "direct", "attempts": 3, "success": 3},
    {"suite": "connectivity", "from": "a", "to": "b", "method": "holepunch", "attempts": 3, "success": 0},
    {"suite": "connectivity", "from": "a", "to": "b", "method": "relay", "attempts": 3, "success": 2},
    {"suite": "connectivity", "from": "b", "to": "a", "method": "direct", "attempts": 3, "success": 3},
    {"suite": "throughput", "from": "a", "to": "b", "method": "direct", "mbps": [1.0]},
]
INV = Inventory(nodes=(Node("a", "1"), Node("b", "2", nat="symmetric")))


def test_matrix_rows_from_columns_to() -> None:
    table = render_matrix(ROWS, ["a", "b"])
    lines = table.strip().splitlines()
    assert lines[0] == "| from \\ to | a | b |"
    assert lines[2] == "| **a** | — | d✓ h✗ r2/3 |"
    assert lines[3] == "| **b** | d✓ | — |"
    assert render_matrix([]) == "_no connectivity measurements_\n"


def test_html_matrix_colours_cells_by_outcome() -> None:
    page = render_matrix_html(ROWS, ["a", "b"])
    cells = page.split("<td ")[1:]
    # a->a, a->b (some connected), b->a (all), b->b
    assert "—" in cells[0] and "#eeeeee" in cells[0]
    assert "d✓ h✗ r2/3" in cells[1] and "#fff3c4" in cells[1]
    assert "d✓</td>" in cells[2] and "#c8e6c9" in cells[2]
    failing = [{**ROWS[2], "attempts": 2, "success": 0}]
    assert "#ffcdd2" in render_matrix_html(failing)
    assert "<script>" not in render_matrix_html([{**ROWS[0], "from": "<script>"}])
    assert render_matrix_html([]) == "<p>no connectivity measurements</p>"


def test_proof_has_the_documented_sections(tmp_path: Path) -> None:
    metrics = {
        "connectivity.direct.rate": 100.0,
        "connectivity.nat_traversed.rate": 0.0,
        "connectivity.relay.rate": 66.7,
        "tests.failed": 0.0,
    }
    verdict = threshold(metrics, {}, ("connectivity",))
    state = {"commits": [{"sha": "abc123def4567890", "message": "fix"}, {"sha": "def456"}]}
    p = ProofInput(
        project="demo",
        started_at=0.0,
        finished_at=3723.0,
        verdict=verdict,
        focus="connectivity",
        evidence={"Logs": "/s/demo/logs/"},
        fix_commits=fix_commits_of(state),
        nodes_tested=["a", "b"],
        inventory=INV,
        pairs=ROWS,
        run_id="r1",
        reproduce="pytest --pyargs pytest_vpstest.suites",
    )
    text = render_proof(p)
    assert text.startswith(
        "# Test Proof: demo\n## Date: 1970-01-01 01:02:03 UTC\n## Duration: 1h 2m\n## Result: FAILED"
    )
    assert "### Success Criteria Met\n- ✓ tests.failed: 0 (target: <= 0, gap +0)\n" in text
    assert "- ✓ connectivity.direct.rate: 100% (target: >= 99%, gap +1)" in text
    assert "- ✗ connectivity.relay.rate: 66.7% (target: >= 100%, gap -33.3)" in text
    assert "- Fix commits: abc123def456, def456" in text
    assert "- NAT: b (symmetric)" in text
    assert "| **a** | — | d✓ h✗ r2/3 |" in text
    path = write_proof(tmp_path, p)
    again = write_proof(tmp_path, p)
    assert path.name == "proof-19700101T010203Z.md" and again != path and path.read_text() == text


def test_prometheus_text_format() -> None:
    text = prometheus_text(
        {"connectivity.direct.rate": 98.6, "tests.failed": 0.0}, {"project": 'a"b', "run_id": "r"}
    )
    assert "# TYPE vpstest_connectivity_direct_rate gauge\n" in text
    assert 'vpstest_connectivity_direct_rate{project="a\\"b",run_id="r"} 98.6\n' in text
    assert text.endswith('vpstest_tests_failed{project="a\\"b",run_id="r"} 0.0\n')


def test_format_duration() -> None:
    assert (
        format_duration(5) == "5s" and format_duration(65) == "1m 5s" and format_duration(23400) == "6h 30m"
    )


def test_nat_table_per_pairing_with_expected_rates_and_theory() -> None:
    from pytest_vpstest.records.proof import render_nat_table

    rows = [
        {
            "suite": "nat_traversal",
            "group": "full-cone~symmetric",
            "attempts": 4,
            "success": 2,
            "outcome": "fail",
        },
        {
            "suite": "nat_traversal",
            "group": "symmetric~symmetric",
            "attempts": 2,
            "success": 0,
            "outcome": "xfail",
        },
        {
            "suite": "nat_traversal",
            "group": "symmetric~symmetric",
            "attempts": 2,
            "success": 1,
            "outcome": "xpass",
        },
        {"suite": "nat_traversal", "group": "none~full-cone", "attempts": 2, "success": 2, "outcome": "pass"},
        {"suite": "connectivity", "from": "a", "to": "b", "attempts": 1, "success": 1},
    ]
    table = render_nat_table(rows).splitlines()
    assert table[2:] == [
        "| none~full-cone | 2 | 2 | 100.0% | ≥ 95% | can be punched |",
        "| full-cone~symmetric | 4 | 2 | 50.0% | ≥ 70% | can be punched |",
        "| symmetric~symmetric | 4 | 1 | 25.0% | — "
        "| expected to fail (1 expected failures, 1 unexpected passes) |",
    ]
    assert render_nat_table(rows[-1:]) == ""
