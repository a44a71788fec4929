"""The probe contract: templates are filled with quoted values, and every bad answer (timeout, no
output, invalid JSON, missing keys, a transport exception) is a failed attempt that keeps the exact
command and raw output, never an exception out of the runner. Per-node concurrency is bounded."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_vpstest.config import DeployConfig, Inventory, ModuleConfig, Node, ProbeTemplates, ProjectConfig
from pytest_vpstest.fleet.node import plan_node
from pytest_vpstest.fleet.probes import NodeSlots, ProbeResult, ProbeRunner, parse_output
from pytest_vpstest.fleet.remote import CommandResult

INV = Inventory(
    nodes=(
        Node("a", "10.0.0.1", p2p_address="198.18.0.10"),
        Node("b c", "10.0.0.2", p2p_address="198.18.0.11"),
    )
)
CONFIG = ProjectConfig(
    path=None,
    project="p",
    workspace=Path("."),
    modules=(("agent", ModuleConfig("agent")),),
    deploy=DeployConfig(install_path="/opt/x/"),
)
PLANS = {n.name: plan_node(n, CONFIG) for n in INV.nodes}


@dataclass
class ScriptedTransport:
    """Answers each command with the next scripted outcome; remembers what it ran."""

    outcomes: list[CommandResult | Exception]
    commands: list[tuple[str, str, float]] = field(default_factory=list)

    def run(self, name: str, command: str, timeout: float) -> CommandResult:
        self.commands.append((name, command, timeout))
        out = self.outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out


def answer(
    stdout: str, exit_code: int | None = 0, stderr: str = "", timed_out: bool = False
) -> CommandResult:
    return CommandResult("a", "cmd", exit_code, stdout, stderr, 0.5, timed_out)


def runner(*outcomes: CommandResult | Exception) -> tuple[ProbeRunner, ScriptedTransport]:
    t = ScriptedTransport(list(outcomes))
    return ProbeRunner(t, INV, ProbeTemplates(), plan_for=PLANS.__getitem__), t


def test_connect_fills_template_with_quoted_values_and_parses_answer() -> None:
    r, t = runner(answer('{"ok": true, "method": "relay", "path": "relayed", "rtt_ms": 3.5, "error": null}'))
    result = r.connect("a", "b c", "relay", timeout=7)
    assert result.ok and result.get("path") == "relayed"
    name, command, timeout = t.commands[0]
    assert name == "a"
    assert command == "/opt/x/agent probe connect --peer 'b c' --method relay --timeout 7 --json"
    assert timeout == 7 + r.grace


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (answer("", exit_code=None, timed_out=True), "timed out"),
        (answer(""), "no output"),
        (answer("   \n"), "no output"),
        (answer("not json at all"), "invalid JSON"),
        (answer('{"ok": true, "method": "direct"'), "invalid JSON"),
        (answer('{"ok": true, "method": "direct"}'), "missing keys path, rtt_ms, error"),
        (answer('{"ok": true}\n{"ok": true}'), "expected one JSON object, got 2"),
        (answer("[1, 2]"), "expected a JSON object"),
        (
            answer('{"ok": "yes", "method": "d", "path": "direct", "rtt_ms": 1, "error": null}'),
            "not a boolean",
        ),
        (answer("boom", exit_code=127, stderr="agent: not found"), "exit 127"),
        (OSError("connection reset"), "OSError: connection reset"),
    ],
)
def test_bad_answers_are_failed_attempts_with_evidence(
    outcome: CommandResult | Exception, reason: str
) -> None:
    r, _ = runner(outcome)
    result = r.connect("a", "b c", "direct")
    assert not result.ok
    assert reason in result.reason
    evidence = result.evidence()
    assert evidence["command"].startswith("/opt/x/agent probe connect --peer 'b c'")
    if isinstance(outcome, CommandResult):
        assert evidence["stdout"] == outcome.stdout
        assert evidence["stderr"] == outcome.stderr
        assert evidence["exit_code"] == outcome.exit_code
        assert evidence["timed_out"] == outcome.timed_out


def test_ok_false_is_a_failed_attempt_with_the_probe_error() -> None:
    r, _ = runner(
        answer('{"ok": false, "method": "holepunch", "path": null, "rtt_ms": null, "error": "punch timeout"}')
    )
    result = r.connect("a", "b c", "holepunch")
    assert result.valid and not result.ok
    assert result.reason == "probe said ok=false: punch timeout"


def test_log_lines_around_the_json_object_are_tolerated() -> None:
    assert parse_output("status", 'starting\n{"ok": true, "node": "a", "addresses": []}\nbye\n') == (
        {"ok": True, "node": "a", "addresses": []},
        None,
    )


def test_pretty_printed_json_is_accepted() -> None:
    data, error = parse_output("gossip_publish", '{\n  "ok": true,\n  "message_id": "m1"\n}\n')
    assert error is None and data == {"ok": True, "message_id": "m1"}


def test_unknown_placeholder_in_a_custom_template_is_a_failed_attempt() -> None:
    t = ScriptedTransport([])
    r = ProbeRunner(t, INV, ProbeTemplates(status="{bin} status {nope}"), plan_for=PLANS.__getitem__)
    result = r.status("a")
    assert not result.ok and "nope" in result.reason and t.commands == []


def test_every_action_has_a_wrapper_using_its_template() -> None:
    r, t = runner(
        answer('{"ok": true, "message_id": "m"}'),
        answer('{"ok": true, "received": true, "latency_ms": 2, "duplicates": 0}'),
        answer('{"ok": true, "bytes": 10, "seconds": 1, "mbps": 0.1}'),
        answer('{"ok": true, "value": 3, "digest": "d"}'),
        answer('{"ok": true, "node": "a", "addresses": []}'),
    )
    assert r.publish("a", "t p").ok
    assert r.received("a", "m").ok
    assert r.throughput("a", "b c", 2).ok
    assert r.crdt("a", 5).ok
    assert r.status("a").ok
    commands = [c for _, c, _ in t.commands]
    assert commands[0] == "/opt/x/agent probe publish --topic 't p' --json"
    assert "--seconds 2" in commands[2] and "--peer 'b c'" in commands[2]
    assert commands[3] == "/opt/x/agent probe crdt --increment 5 --json"


def _max_concurrency(slots: NodeSlots, threads: int, nodes: tuple[str, ...]) -> int:
    active = 0
    peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal active, peak
        with slots.hold(*nodes):
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return peak


def test_node_slots_bound_concurrency_per_node_in_process() -> None:
    assert _max_concurrency(NodeSlots(2), 8, ("a",)) == 2


def test_node_slots_bound_concurrency_with_lock_files(tmp_path: Path) -> None:
    # Two independent slot objects sharing a lock directory behave like two xdist workers.
    first, second = NodeSlots(1, tmp_path), NodeSlots(1, tmp_path)
    order: list[str] = []
    with first.hold("a", "b"):
        done = threading.Event()

        def other() -> None:
            with second.hold("b"):
                order.append("second")
            done.set()

        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.1)
        order.append("first-still-holding")
    done.wait(5)
    t.join()
    assert order == ["first-still-holding", "second"]


def test_peer_identity_public_address_and_role_are_filled() -> None:
    inv = Inventory(
        nodes=(
            Node("a", "10.0.0.1", role="test", p2p_address="198.18.0.10"),
            Node("n", "10.0.0.2", role="nat", nat="symmetric", p2p_address="198.19.4.2",
                 public_address="198.18.0.4"),
            Node("q", "10.0.0.3", role="nat", nat="full-cone", p2p_address="198.19.5.2"),
        )
    )
    plans = {n.name: plan_node(n, CONFIG) for n in inv.nodes}
    t = ScriptedTransport([answer('{"ok": true}')] * 3)
    templates = ProbeTemplates(
        connect="x {role} {peer} {peer_id} {peer_public_address} {peer_address}",
        throughput="y {peer_id} {peer_public_address} {seconds}",
    )
    r = ProbeRunner(t, inv, templates, plan_for=plans.__getitem__, identities={"n": "12D3KooW n"})
    r.connect("a", "n", "holepunch")
    r.throughput("n", "a", 1)
    r.connect("a", "q", "holepunch")
    assert [c for _, c, _ in t.commands] == [
        "x test n '12D3KooW n' 198.18.0.4 198.19.4.2",
        "y '' 198.18.0.10 1",  # a public node is reached at its own address; no identity known
        "x test q '' '' 198.19.5.2",  # NATed without a public_address in the inventory: empty
    ]


def test_a_stalled_link_still_times_out_close_to_the_limit() -> None:
    class Stalled:
        """A transport that ignores its timeout (an SSH link that stalls): returns after 30 s."""

        def run(self, name: str, command: str, timeout: float) -> CommandResult:
            time.sleep(30)
            return CommandResult(name, command, 0, '{"ok": true}', "", 30.0)

    r = ProbeRunner(
        Stalled(), INV, ProbeTemplates(), plan_for=PLANS.__getitem__, grace=0.5, watchdog_slack=0.5
    )
    start = time.monotonic()
    res = r.status("a", timeout=1)
    elapsed = time.monotonic() - start
    assert res.timed_out and not res.ok and res.error == "timed out after 1.5s"
    assert elapsed < 10  # limit 1 + grace 0.5 + slack 0.5, not the link's 30 s
    assert "did not return" in res.stderr


def test_timeout_is_one_number_for_every_action_the_answer_budget() -> None:
    """{timeout} is the seconds the command has to answer: the transport waits exactly that plus
    the grace, and the result keeps it."""
    ok = '{"ok": true, "node": "a", "addresses": [], "method": "direct", "path": "direct", "rtt_ms": 1, '
    ok += '"error": null, "message_id": "m", "received": true, "latency_ms": 1, "duplicates": 0, '
    ok += '"bytes": 1, "seconds": 1, "mbps": 1, "value": 0, "digest": "d"}'
    t = ScriptedTransport([answer(ok) for _ in range(9)])
    every = {a: f"x {a} --timeout {{timeout}}" for a in ("status", "connect", "gossip_publish",
             "gossip_received", "throughput", "crdt", "subscribe", "reset")}
    r = ProbeRunner(t, INV, ProbeTemplates(**every), plan_for=PLANS.__getitem__, default_timeout=10, grace=5)
    results = [
        r.status("a", 7),
        r.connect("a", "b c", "direct", 7),
        r.publish("a", "t", 7),
        r.received("a", "m", 7),
        r.throughput("a", "b c", 2, 7),
        r.crdt("a", 0, 7),
        r.subscribe("a", "t", 7),
        r.reset("a", 7),
        r.throughput("a", "b c", 2),  # no timeout given: the seconds to send plus the default
    ]
    assert [res.valid for res in results] == [True] * 9
    budgets = [7.0] * 8 + [12.0]
    for (_, command, waited), res, budget in zip(t.commands, results, budgets, strict=True):
        assert command.endswith(f"--timeout {budget:g}"), command
        assert waited == budget + 5
        assert res.timeout == budget


def test_an_answer_after_its_timeout_is_late() -> None:
    r, _ = runner(CommandResult("a", "cmd", 0, '{"ok": true, "node": "a", "addresses": []}', "", 3.5))
    res = r.status("a", timeout=3)
    assert res.ok and res.late
    assert ProbeResult.from_json(res.to_json()) == res
