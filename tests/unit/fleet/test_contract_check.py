"""``vpstest contract check``: each action of the contract judged once per node against its schema.

The transport runs each filled template locally through ``sh -c`` (a real process behind the
transport seam), against a small shell node whose answers a test can break one at a time.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_vpstest.config import Inventory, Node, ProbeTemplates, ProjectConfig
from pytest_vpstest.fleet.contract import action_spec
from pytest_vpstest.fleet.contract_check import check_contract, contract_passed, judge, render_table
from pytest_vpstest.fleet.node import plan_node
from pytest_vpstest.fleet.probes import ProbeResult, ProbeRunner
from pytest_vpstest.fleet.remote import CommandResult

NODE_SH = r"""
action=$1; shift
case "$action" in
status) echo '{"ok": true, "node": "a", "addresses": ["198.18.0.10:9000"], "peer_id": "id-a"}' ;;
connect) echo '{"ok": true, "method": "direct", "path": "direct", "rtt_ms": 0.4, "error": null}' ;;
publish) echo '{"ok": true, "message_id": "m-1"}' ;;
received) [ "$1" = m-1 ] && echo '{"ok": true, "received": true, "latency_ms": 3, "duplicates": 0}' ;;
throughput) echo '{"ok": true, "bytes": 1000000, "seconds": 1, "mbps": 8}' ;;
crdt) echo "starting" >&2; cat "$(dirname "$0")/crdt.json" ;;
ok) echo '{"ok": true}' ;;
esac
"""

INV = Inventory(nodes=(Node("a", "127.0.0.1", p2p_address="198.18.0.10"), Node("b", "127.0.0.1")))


class LocalTransport:
    def run(self, name: str, command: str, timeout: float) -> CommandResult:
        start = time.monotonic()
        try:
            p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return CommandResult(name, command, None, "", "", time.monotonic() - start, True)
        return CommandResult(name, command, p.returncode, p.stdout, p.stderr, time.monotonic() - start)


def make_runner(tmp_path: Path, **templates: str | None) -> ProbeRunner:
    script = tmp_path / "node.sh"
    script.write_text(NODE_SH)
    if not (tmp_path / "crdt.json").exists():
        (tmp_path / "crdt.json").write_text('{"ok": true, "value": 0, "digest": "d0"}\n')
    s = f"sh {script}"
    base = ProbeTemplates(
        status=f"{s} status",
        connect=f"{s} connect {{peer}}",
        gossip_publish=f"{s} publish {{topic}}",
        gossip_received=f"{s} received {{message_id}}",
        throughput=f"{s} throughput {{peer}} {{seconds}}",
        crdt=f"{s} crdt {{amount}}",
    )
    config = ProjectConfig(path=None, project="p", workspace=tmp_path)
    plans = {n.name: plan_node(n, config) for n in INV.nodes}
    return ProbeRunner(LocalTransport(), INV, replace(base, **templates), plan_for=plans.__getitem__)


def rows_by_action(runner: ProbeRunner) -> dict[str, object]:
    return {r.action: r for r in check_contract(runner, ["a"], lambda n: "b", timeout=5)}


def test_a_conforming_node_passes_and_optional_actions_are_skipped(tmp_path: Path) -> None:
    rows = check_contract(make_runner(tmp_path), ["a"], lambda n: "b", timeout=5)
    status = {r.action: r.status for r in rows}
    assert status == {
        "status": "ok",
        "connect": "ok",
        "gossip_publish": "ok",
        "gossip_received": "ok",
        "throughput": "ok",
        "crdt": "ok",
        "subscribe": "skipped",
        "reset": "skipped",
    }
    assert contract_passed(rows)
    # the publisher's message id reaches gossip_received (the node answers nothing for another id)
    assert all(r.seconds is not None for r in rows if r.status == "ok")
    table = render_table(rows)
    assert table.splitlines()[0].split() == [
        "action",
        "required",
        "node",
        "status",
        "time",
        "how",
        "to",
        "fix",
    ]
    assert "subscribe" in table and "optional: tests that need it skip" in table


def test_an_answer_breaking_the_schema_is_invalid_with_the_first_problem(tmp_path: Path) -> None:
    (tmp_path / "crdt.json").write_text('{"ok": true, "value": -1, "digest": "d0"}\n')
    rows = check_contract(make_runner(tmp_path), ["a"], lambda n: "b", timeout=5)
    crdt = next(r for r in rows if r.action == "crdt")
    assert crdt.status == "invalid" and "answer.value: -1 is below the minimum 0" in crdt.fix
    assert not contract_passed(rows)


def test_no_json_is_invalid_and_shows_stderr(tmp_path: Path) -> None:
    (tmp_path / "crdt.json").write_text("")
    rows = check_contract(make_runner(tmp_path), ["a"], lambda n: "b", 5)
    crdt = next(r for r in rows if r.action == "crdt")
    assert crdt.status == "invalid" and "no output" in crdt.fix and "stderr: starting" in crdt.fix


def test_a_missing_required_template_says_what_to_add(tmp_path: Path) -> None:
    row = judge(action_spec("status"), "a", None)
    assert row.status == "missing" and "add probes.status" in row.fix and "docs/contract.md#status" in row.fix


def test_ok_false_is_failed_and_a_hang_is_invalid_near_its_limit(tmp_path: Path) -> None:
    failed = ProbeResult(
        "connect",
        "a",
        "c",
        0,
        "",
        "dial: refused\n",
        0.2,
        data={"ok": False, "method": "direct", "path": None, "rtt_ms": None, "error": "refused"},
    )
    row = judge(action_spec("connect"), "a", failed)
    assert row.status == "failed" and "refused" in row.fix and "stderr: dial: refused" in row.fix
    runner = make_runner(tmp_path, status="sleep 30")
    runner.grace = 0.5
    start = time.monotonic()
    rows = check_contract(runner, ["a"], lambda n: "b", timeout=1)
    status = next(r for r in rows if r.action == "status")
    assert status.status == "invalid" and "timed out" in status.fix
    assert time.monotonic() - start < 20


@pytest.mark.parametrize("action", ["subscribe", "reset"])
def test_an_offered_optional_action_is_checked(tmp_path: Path, action: str) -> None:
    runner = make_runner(tmp_path, **{action: f"sh {tmp_path / 'node.sh'} ok"})
    rows = check_contract(runner, ["a"], lambda n: "b", 5)
    assert next(r for r in rows if r.action == action).status == "ok"


def test_an_answer_later_than_its_timeout_is_invalid_with_the_fix() -> None:
    spec = action_spec("status")
    late = ProbeResult("status", "a", "x status", 0, '{"ok": true}', "", 4.2,
                       data={"ok": True, "node": "a", "addresses": []}, timeout=3.0)
    row = judge(spec, "a", late)
    assert row.status == "invalid"
    assert "answered after 4.2s, past its {timeout} of 3s" in row.fix
    assert judge(spec, "a", replace(late, duration=2.9)).status == "ok"
