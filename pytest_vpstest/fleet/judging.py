"""How probe answers become a test's outcome (pure; the suites and the matrix engine both call it).

A connect attempt succeeds when the answer was valid, said ``ok: true`` and — for a hole punch —
reported a path that is not relayed (``direct`` or ``punched``). A pair's test passes only when
every attempt succeeded; where NAT theory expects a hole punch to fail
(:func:`pytest_vpstest.nat_theory.expected_failure`) the test is an expected failure instead, and a
success there an unexpected pass worth a look.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pytest_vpstest.fleet.probes import ProbeResult

__all__ = [
    "PATHS",
    "PUNCHED_PATHS",
    "ConnectVerdict",
    "Outcome",
    "attempt_lines",
    "connected",
    "judge_connect",
    "path_of",
    "stderr_tail",
]

Outcome = Literal["pass", "fail", "xfail", "xpass"]
# The paths a node may report for a connection or a transfer.
PATHS: tuple[str, ...] = ("direct", "punched", "relayed")
# Paths a hole punch may end on: no relay in between.
PUNCHED_PATHS: frozenset[str] = frozenset({"direct", "punched"})


def connected(result: ProbeResult, method: str) -> bool:
    """A successful attempt: a valid ``ok`` answer; a hole punch must not end on a relay."""
    if not result.ok:
        return False
    return method != "holepunch" or result.get("path") in PUNCHED_PATHS


def path_of(result: ProbeResult) -> str:
    """The path the node reported for a successful attempt; ``unreported`` when it gave none or an
    unknown label (never guessed from the method asked for)."""
    path = result.get("path")
    return path if result.ok and isinstance(path, str) and path in PATHS else "unreported"


def stderr_tail(result: ProbeResult, lines: int = 5, width: int = 300) -> str:
    """The last non-empty lines of the probe's stderr, for a failure message ('' when none)."""
    tail = [line.rstrip()[:width] for line in result.stderr.splitlines() if line.strip()][-lines:]
    return "\n".join(tail)


def attempt_lines(results: Sequence[ProbeResult], method: str) -> str:
    """One line per attempt, and each failed attempt's stderr tail indented under it."""
    out = []
    for i, r in enumerate(results, 1):
        state = "ok" if connected(r, method) else (r.reason or f"path {r.get('path')!r}")
        out.append(f"  attempt {i}: {state}; path={r.get('path')!r}; command: {r.command}")
        tail = stderr_tail(r) if not connected(r, method) else ""
        if tail:
            out += ["    stderr: " + line for line in tail.splitlines()]
    return "\n".join(out)


@dataclass(frozen=True)
class ConnectVerdict:
    """A pair's outcome and the message that explains it ('' for a plain pass)."""

    outcome: Outcome
    message: str = ""
    success: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "message": self.message, "success": self.success}


def judge_connect(
    pair_id: str,
    results: Sequence[ProbeResult],
    method: str,
    expected_failure: str | None = None,
    may_fail: str | None = None,
) -> ConnectVerdict:
    """The outcome of a pair's connect attempts (see the module docstring).

    ``expected_failure`` is NAT theory's reason to expect no connection; ``may_fail`` its reason
    not to know (a failed attempt is then an expected failure, a success is a plain pass).
    """
    success = sum(connected(r, method) for r in results)
    detail = attempt_lines(results, method)
    if may_fail is not None and expected_failure is None and success < len(results) and any(
        r.valid for r in results
    ):
        return ConnectVerdict("xfail", f"may fail by NAT theory: {may_fail}", success)
    if expected_failure is not None:
        if success:
            return ConnectVerdict(
                "xpass",
                f"{pair_id}: unexpected pass: connected {success}/{len(results)} although NAT theory "
                f"expects failure ({expected_failure})\n{detail}",
                success,
            )
        return ConnectVerdict("xfail", f"expected by NAT theory: {expected_failure}", success)
    if not any(r.valid for r in results):
        return ConnectVerdict("fail", f"{pair_id}: the probe never gave a valid answer\n{detail}", success)
    relayed = [r for r in results if method == "holepunch" and r.ok and r.get("path") not in PUNCHED_PATHS]
    if relayed:
        return ConnectVerdict(
            "fail",
            f"{pair_id}: hole punch reported path {relayed[0].get('path')!r}, not direct or punched"
            f"\n{detail}",
            success,
        )
    if success < len(results):
        failed = len(results) - success
        message = f"{pair_id}: {failed} of {len(results)} attempts failed\n{detail}"
        return ConnectVerdict("fail", message, success)
    return ConnectVerdict("pass", "", success)
