"""The rule that notices mid-run that a node's agent stopped answering while SSH still works
(``plugin.agent_watch``), and the matrix engine acting on it: the node is reported once, none of
its remaining steps run, the other nodes' cells are untouched."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.fleet.probes import ProbeResult
from pytest_vpstest.plugin.agent_watch import AgentWatch, agent_down
from pytest_vpstest.plugin.engine import Engine
from pytest_vpstest.plugin.schedule import Task
from tests.unit.plugin.test_engine import NODES, FakeSteps, answer, connect_cell


def result(node: str = "n1", *, data: dict[str, object] | None = None, error: str | None = None,
           stdout: str = "", stderr: str = "", exit_code: int | None = 0, transport: bool = False,
           timed_out: bool = False) -> ProbeResult:
    return ProbeResult("connect", node, "probe", exit_code, stdout, stderr, 0.1, timed_out, data, error,
                       transport)


GOOD = {"ok": True, "method": "direct"}
DOWN = {"ok": False, "method": "direct", "error": "agent not running: /run/agent.sock: Connection refused"}
PEER_FAILED = {"ok": False, "method": "direct", "error": "no answer from n2 within 10 s"}


@pytest.mark.parametrize(("probe", "down"), [
    (result(data=DOWN), True),  # the reference agent's own words
    (result(data={**DOWN, "error": "agent closed the batch before answering"}), True),  # died mid-batch
    (result(error="no JSON object in the output", stderr="connect: Connection refused", exit_code=1), True),
    (result(error="no JSON object in the output", stderr="error: no control socket at /run/x", exit_code=1),
     True),
    (result(error="missing key 'node'", stdout='{"ok": false, "error": "agent not running: x"}'), True),
    (result(data=GOOD), False),
    (result(data=PEER_FAILED), False),  # the peer did not answer: nothing said about this node's agent
    (result(error="NodeError: connection refused", transport=True), False),  # SSH: "unreachable" instead
    (result(error="timed out after 15s", timed_out=True), False),
    (result(error="no JSON object in the output", stdout="panic: index out of range", exit_code=2), False),
])
def test_the_agent_down_signature(probe: ProbeResult, down: bool) -> None:
    assert (agent_down(probe) is not None) is down


def test_the_reason_of_an_answer_missing_keys_is_its_own_error() -> None:
    answer = '{"ok": false, "error": "agent not running: no socket"}'
    probe = result(error="missing key 'node'", stdout=answer)
    assert agent_down(probe) == "agent not running: no socket"


def test_a_node_is_down_after_threshold_signatures_in_a_row_and_reported_once() -> None:
    watch = AgentWatch(threshold=3)
    assert watch.observe(result(data=DOWN)) is None
    assert watch.observe(result(data=DOWN)) is None
    reason = watch.observe(result(data=DOWN))
    assert reason is not None and reason.startswith("agent not answering on n1: 3 probes in a row said")
    assert "agent not running" in reason
    assert watch.observe(result(data=DOWN)) is None  # once
    assert watch.down == {"n1": reason}


def test_a_valid_answer_starts_the_count_again_and_other_results_do_not() -> None:
    watch = AgentWatch(threshold=2)
    watch.observe(result(data=DOWN))
    watch.observe(result(data=PEER_FAILED))  # the agent answered: it is up
    assert watch.observe(result(data=DOWN)) is None
    watch.observe(result(error="timed out", timed_out=True))  # says nothing either way
    assert watch.observe(result(data=DOWN)) is not None
    # Another node's count is its own.
    assert watch.observe(result("n2", data=DOWN)) is None


@given(st.lists(st.sampled_from(["down", "good", "peer", "timeout"]), max_size=40), st.integers(1, 4))
def test_down_exactly_when_threshold_signatures_came_without_a_valid_answer_between(
    script: list[str], threshold: int
) -> None:
    kinds = {"down": result(data=DOWN), "good": result(data=GOOD), "peer": result(data=PEER_FAILED),
             "timeout": result(error="timed out", timed_out=True)}
    watch = AgentWatch(threshold=threshold)
    reasons = [watch.observe(kinds[k]) for k in script]
    run, expected_at = 0, None
    for i, k in enumerate(script):
        run = run + 1 if k == "down" else 0 if k in ("good", "peer") else run
        if run >= threshold and expected_at is None:
            expected_at = i
    expected = [] if expected_at is None else [expected_at]
    assert [i for i, r in enumerate(reasons) if r is not None] == expected


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threshold"):
        AgentWatch(threshold=0)


def test_the_engine_stops_running_a_node_whose_agent_died_and_reports_it_once() -> None:
    died = threading.Event()
    count = Counter[str]()
    ran_after: list[tuple[str, int]] = []

    def behaviour(task: Task) -> ProbeResult:
        count["steps"] += 1
        if count["steps"] == 12:
            died.set()
        if died.is_set() and "n3" in task.cell.nodes:
            ran_after.append(task.key)
            if task.cell.nodes[0] == "n3":
                return ProbeResult("connect", "n3", "probe", 0, "", "", 0.0, data=DOWN)
            return answer(task, ok=False)  # a peer's probe into the dead agent: no answer
        return answer(task)

    cells = [connect_cell(a, b) for a in NODES for b in NODES if a != b]
    marked: list[tuple[str, str]] = []
    delivered: dict[str, list[ProbeResult]] = {}
    engine = Engine(cells, FakeSteps(behaviour, delay=0.005), 1, lambda c, r: delivered.__setitem__(c.key, r),
                    watch=AgentWatch(threshold=3), on_unhealthy=lambda n, why: marked.append((n, why)))
    engine.run()
    assert len(delivered) == len(cells)  # every cell completes
    assert [n for n, _ in marked] == ["n3"]
    not_run = [r for rs in delivered.values() for r in rs if r.reason.startswith("not run: node unhealthy")]
    assert not_run and all("agent not answering on n3" in r.reason for r in not_run)
    # Every step that was not run touches n3; nodes other than n3 were never declared down.
    assert all("n3" in k for k, rs in delivered.items() if any(r in not_run for r in rs))
    n3_steps = sum(c.steps for c in cells if "n3" in c.nodes)
    assert len(ran_after) + len(not_run) <= n3_steps and len(not_run) > n3_steps // 2
    assert all(r.ok for k, rs in delivered.items() if "n3" not in k for r in rs)
