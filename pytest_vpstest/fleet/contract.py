"""The probe contract as data: one JSON Schema per action, shipped in ``fleet/schemas/``, and a
validator for the subset of JSON Schema (draft 2020-12) those schemas use.

A user's node answers each probe with one JSON object; :func:`validate` says, one line per problem,
where an answer breaks its action's schema. The schemas are plain JSON Schema, so any validator
gives the same verdict; this one is small, has no dependencies and refuses keywords it does not
implement (:func:`check_schema`), so a schema can never be silently half-checked.

Which actions exist, which are required and which placeholders each template may use is
:data:`ACTIONS`; docs/contract.md is the page for users.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

__all__ = [
    "ACTIONS",
    "COMMON_PLACEHOLDERS",
    "ActionSpec",
    "action_spec",
    "check_schema",
    "schema",
    "schema_path",
    "validate",
]

Requirement = Literal["required", "focus", "optional"]

# Filled into every template (the node the command runs on, and where things are).
COMMON_PLACEHOLDERS: tuple[str, ...] = (
    "bin",
    "node",
    "install_path",
    "log_dir",
    "p2p_address",
    "registry",
    "bootstrap",
    "timeout",
    "role",
)


@dataclass(frozen=True)
class ActionSpec:
    """One action of the contract.

    ``requirement``: ``required`` (every run needs it), ``focus`` (the focuses named in ``used_by``
    need it), ``optional`` (tests that need it skip without it). ``template`` is the field of the
    ``probes:`` section; ``placeholders`` are the action's own, besides :data:`COMMON_PLACEHOLDERS`.
    ``enforced`` says whether today's harness already calls it.
    """

    action: str
    template: str
    requirement: Requirement
    placeholders: tuple[str, ...]
    used_by: tuple[str, ...]
    enforced: bool


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("status", "status", "required", (), ("contract check", "deploy readiness"), True),
    ActionSpec(
        "connect",
        "connect",
        "required",
        ("peer", "peer_address", "peer_id", "peer_public_address", "method"),
        ("connectivity", "nat-traversal"),
        True,
    ),
    ActionSpec("gossip_publish", "gossip_publish", "focus", ("topic",), ("gossip",), True),
    ActionSpec("gossip_received", "gossip_received", "focus", ("message_id",), ("gossip",), True),
    ActionSpec(
        "throughput",
        "throughput",
        "focus",
        ("peer", "peer_address", "peer_id", "peer_public_address", "seconds"),
        ("throughput",),
        True,
    ),
    ActionSpec("subscribe", "subscribe", "optional", ("topic",), ("gossip",), True),
    ActionSpec("crdt", "crdt", "optional", ("amount",), ("gossip",), True),
    ActionSpec("reset", "reset", "optional", (), ("contract check",), True),
)

# Keywords the validator implements; annotations are accepted and ignored.
_ASSERTIONS = frozenset(
    {
        "type",
        "enum",
        "const",
        "required",
        "properties",
        "additionalProperties",
        "items",
        "minimum",
        "exclusiveMinimum",
        "minLength",
        "if",
        "then",
        "else",
    }
)
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples", "default"})
_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})


def action_spec(action: str) -> ActionSpec:
    for spec in ACTIONS:
        if spec.action == action:
            return spec
    raise KeyError(f"unknown probe action {action!r} (allowed: {', '.join(s.action for s in ACTIONS)})")


def schema_path(action: str) -> str:
    """Where the action's schema file is, for users who validate with their own tools."""
    action_spec(action)
    return str(resources.files("pytest_vpstest.fleet") / "schemas" / f"{action}.json")


@cache
def _load(action: str) -> str:
    action_spec(action)
    return (resources.files("pytest_vpstest.fleet") / "schemas" / f"{action}.json").read_text(
        encoding="utf-8"
    )


def schema(action: str) -> dict[str, Any]:
    """The JSON Schema of ``action``'s answer (a fresh copy)."""
    loaded: dict[str, Any] = json.loads(_load(action))
    return loaded


def check_schema(node: Any, where: str = "schema") -> None:
    """Raise ValueError when ``node`` uses a keyword or type this validator does not implement."""
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise ValueError(f"{where}: a schema is an object or a boolean")
    for key, value in node.items():
        if key in _ANNOTATIONS:
            continue
        if key not in _ASSERTIONS:
            raise ValueError(f"{where}: keyword {key!r} is not supported")
        if key == "type":
            types = value if isinstance(value, list) else [value]
            bad = [t for t in types if t not in _TYPES]
            if bad:
                raise ValueError(f"{where}: unknown type {bad[0]!r}")
        elif key == "properties":
            for name, sub in value.items():
                check_schema(sub, f"{where}.properties.{name}")
        elif key in ("items", "if", "then", "else", "additionalProperties"):
            check_schema(value, f"{where}.{key}")


def validate(action: str, answer: Any) -> list[str]:
    """Every way ``answer`` breaks the schema of ``action``, one line each ([] when it conforms)."""
    return _errors(schema(action), answer, "answer")


def _errors(s: Any, value: Any, where: str) -> list[str]:
    if s is True:
        return []
    if s is False:
        return [f"{where}: not allowed"]
    if "type" in s and not _has_type(value, s["type"]):
        want = s["type"] if isinstance(s["type"], list) else [s["type"]]
        return [f"{where}: expected {' or '.join(want)}, got {_describe(value)}"]
    out: list[str] = []
    if "const" in s and not _same(value, s["const"]):
        out.append(f"{where}: must be {json.dumps(s['const'])}, got {json.dumps(value)}")
    if "enum" in s and not any(_same(value, e) for e in s["enum"]):
        allowed = ", ".join(json.dumps(e) for e in s["enum"])
        out.append(f"{where}: {json.dumps(value)} is not one of {allowed}")
    if _is_number(value):
        if "minimum" in s and value < s["minimum"]:
            out.append(f"{where}: {value} is below the minimum {s['minimum']}")
        if "exclusiveMinimum" in s and value <= s["exclusiveMinimum"]:
            out.append(f"{where}: {value} must be greater than {s['exclusiveMinimum']}")
    if isinstance(value, str) and "minLength" in s and len(value) < s["minLength"]:
        out.append(f"{where}: shorter than {s['minLength']} characters")
    if isinstance(value, list) and "items" in s:
        for i, item in enumerate(value):
            out += _errors(s["items"], item, f"{where}[{i}]")
    if isinstance(value, Mapping):
        out += _object_errors(s, value, where)
    if "if" in s:
        branch = "then" if not _errors(s["if"], value, where) else "else"
        if branch in s:
            out += _errors(s[branch], value, where)
    return out


def _object_errors(s: Mapping[str, Any], value: Mapping[str, Any], where: str) -> list[str]:
    out = [f"{where}: missing key {k!r}" for k in s.get("required", ()) if k not in value]
    props: Mapping[str, Any] = s.get("properties", {})
    for key, sub in props.items():
        if key in value:
            out += _errors(sub, value[key], f"{where}.{key}")
    extra = s.get("additionalProperties", True)
    for key in value:
        if key not in props:
            out += _errors(extra, value[key], f"{where}.{key}")
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _has_type(value: Any, types: str | list[str]) -> bool:
    for t in types if isinstance(types, list) else [types]:
        if (
            (t == "null" and value is None)
            or (t == "boolean" and isinstance(value, bool))
            or (t == "string" and isinstance(value, str))
            or (t == "array" and isinstance(value, list))
            or (t == "object" and isinstance(value, Mapping))
            or (t == "number" and _is_number(value) and math.isfinite(value))
            or (t == "integer" and _is_number(value) and float(value).is_integer())
        ):
            return True
    return False


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
