"""The probe contract's JSON Schemas: one per action, shipped in the package, checked by a small
validator that refuses keywords it does not implement; every documented example conforms, today's
required keys are a subset of each schema, the reference agent's real failure answers conform, and
each kind of violation is reported in one line naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.fleet import contract
from pytest_vpstest.fleet.probes import REQUIRED_KEYS

ALL = [s.action for s in contract.ACTIONS]


def test_every_action_has_a_schema_file_the_validator_fully_understands() -> None:
    assert ALL == [
        "status",
        "connect",
        "gossip_publish",
        "gossip_received",
        "throughput",
        "subscribe",
        "crdt",
        "reset",
    ]
    for action in ALL:
        path = Path(contract.schema_path(action))
        assert path.is_file() and path.name == f"{action}.json"
        s = contract.schema(action)
        assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert "ok" in s["required"]
        contract.check_schema(s, action)


@pytest.mark.parametrize("action", ALL)
def test_documented_examples_conform(action: str) -> None:
    examples = contract.schema(action)["examples"]
    assert examples
    for example in examples:
        assert contract.validate(action, example) == [], example


@pytest.mark.parametrize("action", sorted(REQUIRED_KEYS))
def test_keys_the_harness_requires_today_are_required_by_the_schema(action: str) -> None:
    assert set(REQUIRED_KEYS[action]) <= set(contract.schema(action)["required"])


@pytest.mark.parametrize(
    ("action", "answer", "problem"),
    [
        ("status", {"ok": True, "node": "n"}, "answer: missing key 'addresses'"),
        ("status", {"ok": "yes", "node": "n", "addresses": []}, "answer.ok: expected boolean, got string"),
        ("status", {"ok": True, "node": None, "addresses": []}, "answer.node: expected string, got null"),
        ("status", {"ok": True, "node": "", "addresses": []}, "answer.node: shorter than 1 characters"),
        (
            "status",
            {"ok": True, "node": "n", "addresses": [7]},
            "answer.addresses[0]: expected string, got integer",
        ),
        (
            "connect",
            {"ok": True, "method": "direct", "path": "tunnel", "rtt_ms": 1, "error": None},
            'answer.path: "tunnel" is not one of "direct", "punched", "relayed", null',
        ),
        (
            "connect",
            {"ok": True, "method": "relay", "path": None, "rtt_ms": 1, "error": None},
            'answer.path: null is not one of "direct", "punched", "relayed"',
        ),
        (
            "connect",
            {"ok": False, "method": "relay", "path": None, "rtt_ms": -1, "error": "x"},
            "answer.rtt_ms: -1 is below the minimum 0",
        ),
        ("gossip_received", {"ok": True, "received": 1, "latency_ms": 2, "duplicates": 0}, "answer.received"),
        (
            "gossip_received",
            {"ok": True, "received": True, "latency_ms": 2, "duplicates": True},
            "answer.duplicates: expected integer, got boolean",
        ),
        (
            "throughput",
            {"ok": True, "bytes": 10, "seconds": 0, "mbps": 0},
            "answer.seconds: 0 must be greater than 0",
        ),
        ("throughput", {"ok": True, "bytes": 1.5, "seconds": 1, "mbps": 0}, "answer.bytes: expected integer"),
        ("crdt", {"ok": True, "value": 3, "digest": None}, "answer.digest: expected string, got null"),
        ("reset", [], "answer: expected object, got array"),
    ],
)
def test_violations_are_one_line_each_naming_the_key(action: str, answer: Any, problem: str) -> None:
    errors = contract.validate(action, answer)
    assert errors, f"{answer} should break the {action} schema"
    assert any(e.startswith(problem) for e in errors), errors
    assert all("\n" not in e for e in errors)


def test_json_number_semantics() -> None:
    ok = {"ok": True, "bytes": 10.0, "seconds": 1, "mbps": 0.08}
    assert contract.validate("throughput", ok) == [], "10.0 is an integer in JSON"
    assert contract.validate("throughput", ok | {"bytes": float("nan")})
    assert contract.validate("status", {"ok": 1, "node": "n", "addresses": []}), "1 is not a boolean"


def test_failed_answers_may_carry_nulls() -> None:
    failed = {"ok": False, "method": "holepunch", "path": None, "rtt_ms": None, "error": "timed out"}
    assert contract.validate("connect", failed) == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"type": "object", "oneOf": []}, "keyword 'oneOf' is not supported"),
        ({"properties": {"a": {"pattern": "x"}}}, "schema.properties.a: keyword 'pattern' is not supported"),
        ({"type": "float"}, "unknown type 'float'"),
        ({"if": 3}, "schema.if: a schema is an object or a boolean"),
    ],
)
def test_unsupported_schema_keywords_are_refused(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        contract.check_schema(bad)


def test_unknown_action() -> None:
    with pytest.raises(KeyError, match="unknown probe action 'ping'"):
        contract.schema_path("ping")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(
    action=st.sampled_from(ALL),
    answer=st.dictionaries(st.sampled_from(["ok", "node", "path", "bytes", "x"]), _JSON),
)
def test_validation_never_raises_and_reports_lines(action: str, answer: dict[str, Any]) -> None:
    errors = contract.validate(action, answer)
    assert all(isinstance(e, str) and e.startswith("answer") and "\n" not in e for e in errors)


AGENT_ACTIONS = {  # contract action -> the reference agent's probe arguments
    "status": ["status"],
    "connect": ["connect", "--peer", "saorsa-2", "--method", "holepunch", "--timeout", "1"],
    "gossip_publish": ["publish", "--topic", "t"],
    "gossip_received": ["received", "--id", "m-1"],
    "throughput": ["throughput", "--peer", "saorsa-2", "--seconds", "1"],
    "crdt": ["crdt", "--increment", "0"],
}


@pytest.mark.parametrize("action", sorted(AGENT_ACTIONS))
def test_reference_agent_failure_answers_conform(action: str, tmp_path: Path) -> None:
    # No agent runs in tmp_path: the probe answers ok=false with every contract key null.
    argv = [sys.executable, "-m", "pytest_vpstest.lab.agent", "probe", *AGENT_ACTIONS[action]]
    proc = subprocess.run(
        [*argv, "--json", "--home", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["ok"] is False and "agent not running" in answer["error"]
    assert contract.validate(action, answer) == []


def test_specs_match_the_config_for_the_actions_the_harness_runs() -> None:
    from dataclasses import fields

    from pytest_vpstest.config import PROBE_PLACEHOLDERS, ProbeTemplates

    templates = {f.name for f in fields(ProbeTemplates)}
    for spec in contract.ACTIONS:
        if spec.enforced:
            assert spec.template in templates, spec
            assert set(contract.COMMON_PLACEHOLDERS) | set(spec.placeholders) <= set(PROBE_PLACEHOLDERS), spec
        else:
            assert spec.requirement == "optional", "an action the harness does not run cannot be required"
    assert contract.action_spec("subscribe").enforced is True
