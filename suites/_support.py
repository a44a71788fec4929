"""Helpers shared by the suites: attempts, evidence and the shape of a recorded measurement."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from pytest_vpstest.fleet.judging import ConnectVerdict, connected, stderr_tail
from pytest_vpstest.fleet.probes import ProbeResult

__all__ = ["MAX_EVIDENCE", "connected", "describe", "failure_evidence", "rtts", "settle"]

MAX_EVIDENCE = 3
T = TypeVar("T")


def each(names: Sequence[str], ask: Callable[[str], T]) -> dict[str, T]:
    """``ask(name)`` for every name at the same time; answers in the order of ``names``."""
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(names)), thread_name_prefix="vps-suite") as pool:
        return dict(zip(names, pool.map(ask, names), strict=True))


def settle(verdict: ConnectVerdict, item: pytest.Item) -> None:
    """End the test as the verdict says: fail, expected failure, or an unexpected pass (XPASS:
    the xfail mark is added while the test runs, so pytest reports the pass as unexpected)."""
    if verdict.outcome == "fail":
        pytest.fail(verdict.message, pytrace=False)
    if verdict.outcome == "xfail":
        pytest.xfail(verdict.message)
    if verdict.outcome == "xpass":
        item.add_marker(pytest.mark.xfail(reason=verdict.message, strict=False))


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
        tail = stderr_tail(r) if not r.ok else ""
        lines += ["    stderr: " + line for line in tail.splitlines()]
    return "\n".join(lines)
