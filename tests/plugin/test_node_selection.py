"""Which nodes a run tests, against the fake fleet: ``--vps-only-nodes`` selects exactly the named
nodes' tests (``-k n1`` would take n10's too), unknown names are one usage error naming them; and
``--vps-skip-nodes`` (what the loop hands over: nodes not Live, tests disabled or manual for a node)
skips every test touching those nodes with the given reason and keeps them out of the fleet-wide
tests and of every rate."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.plugin.conftest import FakeFleet

MakeFleet = Callable[..., FakeFleet]

# n1 and n10: a substring match on n1 also selects n10.
N1_N10 = """\
schema_version: 1
connect_timeout: 5
nodes:
  - {name: reg, host: 127.0.0.1, role: registry, service_manager: process}
  - {name: p1, host: 127.0.0.1, role: test, service_manager: process, p2p_address: 198.18.0.11}
  - {name: p2, host: 127.0.0.1, role: test, service_manager: process, p2p_address: 198.18.0.12}
  - {name: n1, host: 127.0.0.1, role: test, service_manager: process, p2p_address: 198.18.0.13}
  - {name: n10, host: 127.0.0.1, role: test, service_manager: process, p2p_address: 198.18.0.14}
"""


def _fleet(fake_fleet: MakeFleet) -> FakeFleet:
    fleet = fake_fleet()
    (fleet.dir / "inventory.yaml").write_text(N1_N10)
    return fleet


def _collected(result: pytest.RunResult) -> list[str]:
    return [line.split("::", 1)[1] for line in result.stdout.lines if "::" in line and "[" in line]


def _endpoints(test_id: str) -> set[str]:
    """The nodes a suite test id names: ``test_connect[n1->p2[relay]]``, ``test_broadcast[n1[publish]]``."""
    m = re.search(r"\[(\w+)->(\w+)\[", test_id)
    if m:
        return {m.group(1), m.group(2)}
    m = re.search(r"\[(\w+)\[publish\]\]", test_id)
    return {m.group(1)} if m else set()


def test_only_nodes_selects_the_named_nodes_exactly_where_k_takes_n10_too(fake_fleet: MakeFleet) -> None:
    fleet = _fleet(fake_fleet)
    by_k = _collected(fleet.run("--collect-only", "-q", "-k", "n1"))
    assert any(_endpoints(t) == {"n10", "p1"} for t in by_k), "-k n1 no longer matches n10: test is moot"

    exact = _collected(fleet.run("--collect-only", "-q", "--vps-only-nodes", "n1"))
    assert exact, "nothing selected"
    assert all("n1" in _endpoints(t) for t in exact), [t for t in exact if "n1" not in _endpoints(t)]
    # Every pair of the suites with n1 at one end is there: 3 peers x 2 directions x 3 methods ...
    assert len([t for t in exact if t.startswith("test_connect[")]) == 18
    # ... and n1's broadcast, but not the fleet-wide CRDT test.
    assert "test_broadcast[n1[publish]]" in exact
    assert not any(t.startswith("test_crdt") for t in exact)


def test_only_nodes_runs_only_their_pairs_and_records_only_them(fake_fleet: MakeFleet) -> None:
    fleet = _fleet(fake_fleet)
    result = fleet.run("--vps-focus=connectivity", "--vps-only-nodes", "n10,p2")
    # 12 ordered pairs x 3 methods, less p1 <-> n1, the only pair without n10 or p2. (The fake agent
    # dials directly only into p* nodes, so direct dials into n1 and n10 fail: not the point here.)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 30, outcomes
    assert outcomes.get("deselected") == 6 + 8, outcomes  # (and the other suites' 8 tests: the focus)
    results = fleet.results()
    assert results["pairs"], "no pair recorded"
    assert all({p["from"], p["to"]} & {"n10", "p2"} for p in results["pairs"])
    assert "--vps-only-nodes=n10,p2" in results["reproduce"]


def test_unknown_node_names_are_one_usage_error_naming_them(fake_fleet: MakeFleet) -> None:
    fleet = _fleet(fake_fleet)
    result = fleet.run("--collect-only", "--vps-only-nodes", "n1,n3,bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [x for x in result.stderr.lines if "--vps-only-nodes" in x]
    assert len(lines) == 1, result.stderr.str()
    assert "unknown node(s) n3, bogus" in lines[0] and "inventory.yaml" in lines[0]


def test_skip_nodes_skips_their_tests_with_the_reason_and_keeps_them_out_of_the_rates(
    fake_fleet: MakeFleet,
) -> None:
    fleet = fake_fleet()  # peers p1, p2, n1, n2; gossip publishers p1 and n1
    skip = fleet.dir / "skip-nodes.json"
    skip.write_text(
        json.dumps({"n1": "tests run manually for node n1", "reg": "tests disabled for node reg"})
    )
    result = fleet.run("--vps-focus=gossip", "--vps-skip-nodes", str(skip), "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED ?1? *: tests run manually for node n1"])
    results = fleet.results()
    assert results["skipped_nodes"] == json.loads(skip.read_text())
    assert results["unhealthy"] == {}  # the config's choice is no node fault
    gossip = results["test_results"]["suites"]["gossip"]
    # p1's message went to p2 and n2 only; the CRDT ran on p1, p2, n2.
    assert (gossip["expected"], gossip["delivered"]) == (2, 2)
    assert gossip["crdt"]["nodes"] == 3
    assert results["passed"] is True


def test_a_bad_skip_file_is_one_usage_error(fake_fleet: MakeFleet) -> None:
    fleet = fake_fleet()
    skip = fleet.dir / "skip-nodes.json"
    skip.write_text('["n1"]')
    result = fleet.run("--collect-only", "--vps-skip-nodes", str(skip))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vps-skip-nodes *skip-nodes.json: must be a JSON object {node: reason}*"])
