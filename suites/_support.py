"""Helpers shared by the suites: attempts, evidence and the shape of a recorded measurement."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pytest_vpstest.fleet.probes import ProbeResult

MAX_EVIDENCE = 3
T = TypeVar("T")


def each(names: Sequence[str], ask: Callable[[str], T]) -> dict[str, T]:
    """``ask(name)`` for every name at the same time; answers in the order of ``names``."""
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(names)), thread_name_prefix="vps-suite") as pool:
        return dict(zip(names, pool.map(ask, names), strict=True))


def connected(result: ProbeResult, method: str) -> bool:
    """A successful attempt: a valid ``ok`` answer; a hole punch must also end on a direct path."""
    if not result.ok:
        return False
    return method != "holepunch" or result.get("path") == "direct"


def failure_evidence(results: Sequence[ProbeResult], method: str) -> list[dict[str, Any]]:
    """The exact command and raw output of the first failed attempts."""
    return [r.evidence() for r in results if not connected(r, method)][:MAX_EVIDENCE]


def rtts(results: Sequence[ProbeResult]) -> list[float]:
    out = []
    for r in results:
        value = r.get("rtt_ms")
        if r.ok and isinstance(value, int | float) and not isinstance(value, bool):
            out.append(round(float(value), 3))
    return out


def describe(results: Sequence[ProbeResult]) -> str:
    """One line per attempt for assertion messages."""
    lines = []
    for i, r in enumerate(results, 1):
        state = "ok" if r.ok else (r.reason or "failed")
        lines.append(f"  attempt {i}: {state}; path={r.get('path')!r}; command: {r.command}")
    return "\n".join(lines)
