"""The agent's pure parts: datagram framing, the bootstrap protocol as a function (discovery,
rendezvous to both sides, relay between registered nodes only), registry input validation, gossip
de-duplication and the grow-only counter's merge (replicas converge in any delivery order)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.lab.agent import wire
from pytest_vpstest.lab.agent.bootstrap import BootstrapState
from pytest_vpstest.lab.agent.crdt import GCounter
from pytest_vpstest.lab.agent.gossip import GossipLog
from pytest_vpstest.lab.agent.node import answer_budget
from pytest_vpstest.lab.agent.registry import BadRequest, validate_registration

A, B, C = ("198.18.0.4", 9000), ("198.18.0.10", 31000), ("198.18.0.7", 9000)


def _json(out: tuple[bytes, wire.Addr]) -> tuple[dict[str, object], wire.Addr]:
    data, dest = out
    return json.loads(data), dest


def _hello(state: BootstrapState, name: str, src: wire.Addr, now: float = 0.0) -> dict[str, object]:
    [reply] = state.handle(wire.encode({"t": "hello", "node": name, "id": "h"}), src, now)
    message, dest = _json(reply)
    assert dest == src
    return message


# ---- wire ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.2.3.4:80", ("1.2.3.4", 80)), ("[::1]:9000", ("::1", 9000)), ("host", ("host", 9000))],
)
def test_parse_addr_accepts_host_port_forms(text: str, expected: wire.Addr) -> None:
    assert wire.parse_addr(text, 9000) == expected


@pytest.mark.parametrize("text", ["1.2.3.4", "1.2.3.4:99999", ":80", "[::1", "a:b"])
def test_parse_addr_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        wire.parse_addr(text)


@given(st.from_regex(wire.NAME_RE, fullmatch=True).filter(lambda n: ".." not in n), st.binary(max_size=64))
def test_relay_and_forward_round_trip(name: str, inner: bytes) -> None:
    assert wire.parse_relay(wire.relay(name, inner)) == (name, inner)
    assert wire.parse_forward(wire.forward(name, inner)) == (name, inner)
    assert len(wire.relay(name, inner)) == wire.relay_overhead(name) + len(inner)


def test_data_and_ack_headers_round_trip() -> None:
    packet = wire.data_header(7, 2**40) + b"x" * 100
    assert wire.parse_data(packet) == (7, 2**40, 100)
    assert wire.parse_ack(wire.data_ack(7, 12)) == (7, 12)
    assert wire.parse_ack(packet) is None
    assert wire.decode(b"not json") is None
    assert wire.decode(b'{"no": "type"}') is None


# ---- bootstrap -------------------------------------------------------------------------------


def test_hello_reports_the_observed_source_as_mapped_address() -> None:
    state = BootstrapState()
    assert _hello(state, "a", A) == {"t": "hello_ok", "id": "h", "mapped": "198.18.0.4:9000"}
    assert state.lookup("a", 1.0) == A


def test_hello_with_a_bad_name_is_refused() -> None:
    [reply] = BootstrapState().handle(wire.encode({"t": "hello", "node": "../x"}), A, 0.0)
    assert _json(reply)[0]["t"] == "error"


def test_punch_request_sends_each_side_the_others_observed_address() -> None:
    state = BootstrapState()
    _hello(state, "a", A)
    _hello(state, "b", B)
    request = {"t": "punch_req", "node": "a", "peer": "b", "session": "s1", "timeout": 4, "id": "r1"}
    to_a, to_b = (_json(o) for o in state.handle(wire.encode(request), A, 1.0))
    assert to_a == (
        {
            "t": "punch",
            "session": "s1",
            "timeout": 4,
            "id": "r1",
            "peer": "b",
            "addr": "198.18.0.10:31000",
            "initiator": True,
        },
        A,
    )
    assert to_b == (
        {
            "t": "punch",
            "session": "s1",
            "timeout": 4,
            "peer": "a",
            "addr": "198.18.0.4:9000",
            "initiator": False,
        },
        B,
    )


def test_punch_to_an_unknown_or_expired_peer_is_an_error() -> None:
    state = BootstrapState(ttl=10)
    _hello(state, "a", A, now=0)
    _hello(state, "b", B, now=0)
    request = wire.encode({"t": "punch_req", "node": "a", "peer": "b", "session": "s", "id": "r"})
    [reply] = state.handle(request, A, now=11)
    message, dest = _json(reply)
    assert dest == A and message["t"] == "error" and "b" in str(message["error"])


def test_relay_forwards_between_registered_nodes_naming_the_sender() -> None:
    state = BootstrapState()
    _hello(state, "a", A)
    _hello(state, "b", B)
    [(data, dest)] = state.handle(wire.relay("b", b'{"t":"ping"}'), A, 1.0)
    assert dest == B and wire.parse_forward(data) == ("a", b'{"t":"ping"}')
    assert state.relayed_datagrams == 1


def test_relay_from_an_unregistered_source_or_to_an_unknown_peer_is_refused() -> None:
    state = BootstrapState()
    _hello(state, "a", A)
    [reply] = state.handle(wire.relay("a", b"x"), C, 0.0)
    assert _json(reply) == (
        {"t": "relay_error", "to": "a", "error": "sender not registered here (send hello first)"},
        C,
    )
    [reply] = state.handle(wire.relay("nobody", b"x"), A, 0.0)
    assert _json(reply)[0]["t"] == "relay_error"
    assert state.relayed_datagrams == 0


def test_a_node_moving_to_a_new_mapping_is_followed() -> None:
    state = BootstrapState()
    _hello(state, "a", A)
    _hello(state, "a", C)
    assert state.lookup("a", 0.0) == C
    [reply] = state.handle(wire.relay("a", b"x"), A, 0.0)  # the old address no longer speaks for "a"
    assert _json(reply)[0]["t"] == "relay_error"


# ---- registry validation ---------------------------------------------------------------------


def test_valid_registration_is_normalised() -> None:
    record = validate_registration(
        {"name": "saorsa-4", "addresses": ["198.19.4.2:9000"], "mapped": "198.18.0.4:9000", "nat": "cone"}
    )
    assert record == {
        "name": "saorsa-4",
        "addresses": ["198.19.4.2:9000"],
        "mapped": "198.18.0.4:9000",
        "nat": "cone",
        "mapped_by": {},
    }


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ([], "JSON object"),
        ({"addresses": ["1.2.3.4:1"]}, "name"),
        ({"name": "a b", "addresses": ["1.2.3.4:1"]}, "name"),
        ({"name": "a", "addresses": []}, "addresses"),
        ({"name": "a", "addresses": ["nope"]}, "addresses"),
        ({"name": "a", "addresses": ["1.2.3.4:1"], "mapped": 5}, "mapped"),
        ({"name": "a", "addresses": ["1.2.3.4:1"], "nat": "weird"}, "nat"),
        ({"name": "a", "addresses": ["1.2.3.4:1"], "colour": "red"}, "unknown field"),
    ],
)
def test_bad_registrations_name_the_problem(body: object, complaint: str) -> None:
    with pytest.raises(BadRequest, match=complaint):
        validate_registration(body)


# ---- gossip and CRDT -------------------------------------------------------------------------


def test_gossip_log_counts_duplicates_and_keeps_first_latency() -> None:
    log = GossipLog(capacity=2)
    assert log.observe("m1", "t", "a", sent_at=10.0, now=10.25, hops=1)
    assert not log.observe("m1", "t", "a", sent_at=10.0, now=11.0, hops=2)
    receipt = log.get("m1")
    assert (
        receipt is not None and receipt.duplicates == 1 and receipt.latency_ms == 250.0 and receipt.hops == 1
    )
    log.observe("m2", "t", "a", 0, 0, 1)
    log.observe("m3", "t", "a", 0, 0, 1)
    assert log.get("m1") is None and len(log) == 2


def test_gcounter_ignores_bad_entries_and_never_decreases() -> None:
    counter = GCounter({"a": 5})
    assert not counter.merge({"a": 3, "../x": 9, "b": -1, "c": True, "d": "7"})
    assert counter.counts == {"a": 5}
    with pytest.raises(ValueError):
        counter.increment("a", -1)


_increments = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 50)), max_size=12)


@given(_increments, st.randoms(use_true_random=False))
def test_gcounter_replicas_converge_whatever_the_delivery_order(
    increments: list[tuple[str, int]], rnd: object
) -> None:
    """Each replica increments locally; states then arrive in a random order, some twice."""
    replicas = {n: GCounter() for n in "abc"}
    for node, amount in increments:
        replicas[node].increment(node, amount)
    snapshots = [dict(r.counts) for r in replicas.values()]
    for replica in replicas.values():
        deliveries = snapshots + snapshots[:1]
        rnd.shuffle(deliveries)  # type: ignore[attr-defined]
        for snapshot in deliveries:
            replica.merge(snapshot)
    digests = {r.digest() for r in replicas.values()}
    assert len(digests) == 1
    assert {r.value for r in replicas.values()} == {sum(a for _, a in increments)}


@given(st.floats(min_value=0.1, max_value=3600, allow_nan=False))
def test_a_connect_keeps_part_of_its_timeout_to_answer_in(timeout: float) -> None:
    budget = answer_budget(timeout)
    assert 0.1 <= budget <= timeout
    if budget > 0.1:  # a fifth of it, and at least half a second, left for the way back
        assert budget <= timeout * 0.8 + 1e-9 and budget <= timeout - 0.5 + 1e-9
    assert answer_budget(3) == pytest.approx(2.4) and answer_budget(10) == pytest.approx(8.0)
