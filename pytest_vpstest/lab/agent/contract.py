"""The probe contract's shape, shared by the single-probe command and batches: the actions, the
keys each answer always carries, and a contract-shaped failed answer."""

from __future__ import annotations

from typing import Any

__all__ = ["CONTRACT_KEYS", "METHODS", "failure"]

METHODS = ("direct", "holepunch", "relay")

# The keys each action's answer always carries (besides "ok" and, on failure, "error").
CONTRACT_KEYS: dict[str, tuple[str, ...]] = {
    "status": ("node", "addresses", "mapped", "peers"),
    "connect": ("method", "path", "rtt_ms", "error"),
    "publish": ("message_id",),
    "received": ("received", "latency_ms", "duplicates"),
    "throughput": ("bytes", "seconds", "mbps"),
    "crdt": ("value", "digest"),
}


def failure(action: str, error: str, **known: Any) -> dict[str, Any]:
    """A contract-shaped failed answer."""
    answer: dict[str, Any] = {"ok": False}
    answer.update(dict.fromkeys(CONTRACT_KEYS.get(action, ()), None))
    answer.update(known)
    answer["error"] = error
    return answer
