"""``vpstest contract check``: run every probe template once on chosen nodes and say what works.

Each action is run once per node through a :class:`~pytest_vpstest.fleet.probes.ProbeRunner`,
its answer validated against the action's JSON Schema (:mod:`pytest_vpstest.fleet.contract`) and
timed. :func:`judge` (pure) turns one answer into a row: ``ok``, ``missing`` (a required template
is absent), ``skipped`` (an optional one is), ``invalid`` (no answer, not JSON, breaks the schema,
timed out) or ``failed`` (a valid answer saying ``ok: false``), with a one-line fix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pytest_vpstest.fleet.contract import ACTIONS, ActionSpec, validate
from pytest_vpstest.fleet.judging import stderr_tail
from pytest_vpstest.fleet.probes import ProbeResult, ProbeRunner

__all__ = ["CheckRow", "Status", "check_contract", "contract_passed", "judge", "render_table"]

Status = Literal["ok", "missing", "skipped", "invalid", "failed"]
CHECK_TOPIC = "vpstest-contract-check"
DOC = "docs/contract.md"


@dataclass(frozen=True)
class CheckRow:
    """One action on one node."""

    action: str
    requirement: str
    node: str
    status: Status
    seconds: float | None
    fix: str
    command: str = ""


def judge(spec: ActionSpec, node: str, result: ProbeResult | None) -> CheckRow:
    """The row for one answer (``None``: the config has no template for the action)."""
    if result is None:
        if spec.requirement == "optional":
            return CheckRow(spec.action, spec.requirement, node, "skipped", None,
                            f"optional: tests that need it skip (add probes.{spec.template} to offer it)")
        return CheckRow(spec.action, spec.requirement, node, "missing", None,
                        f"add probes.{spec.template} ({DOC}#{spec.action.replace('_', '-')})")
    seconds = round(result.duration, 2)

    def row(status: Status, fix: str) -> CheckRow:
        return CheckRow(spec.action, spec.requirement, node, status, seconds, fix, result.command)

    if result.timed_out:
        return row("invalid", f"{result.reason}: answer within the {{timeout}} the harness passes")
    if result.data is None:
        tail = stderr_tail(result, lines=1)
        return row("invalid", f"{result.reason}{'; stderr: ' + tail if tail else ''}: print one JSON object")
    if result.late:
        return row("invalid", f"answered after {result.duration:.1f}s, past its {{timeout}} of "
                              f"{result.timeout:g}s: answer by {{timeout}} (ok: false when unfinished)")
    problems = validate(spec.action, dict(result.data))
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return row("invalid", f"{problems[0]}{more}: see the schema of {spec.action}")
    if result.data.get("ok") is not True:
        tail = stderr_tail(result, lines=1)
        return row("failed", f"{result.reason}{'; stderr: ' + tail if tail else ''}")
    return row("ok", "")


def check_contract(
    runner: ProbeRunner,
    nodes: Sequence[str],
    peer_of: Callable[[str], str],
    timeout: float = 10.0,
    focus: str | None = None,
) -> list[CheckRow]:
    """Every action of the contract, once per node, in the order a run uses them.

    With a ``focus`` (other than ``full-suite``), actions only other focuses need are skipped."""
    rows: list[CheckRow] = []
    narrowed = focus not in (None, "full-suite")
    for node in nodes:
        peer = peer_of(node)
        message_id = "vpstest-contract-check"
        for spec in ACTIONS:
            if narrowed and spec.requirement == "focus" and focus not in spec.used_by:
                rows.append(CheckRow(spec.action, spec.requirement, node, "skipped", None,
                                     f"not used by focus {focus}"))
                continue
            if not runner.has(spec.template):
                rows.append(judge(spec, node, None))
                continue
            result = _run(runner, spec.action, node, peer, message_id, timeout)
            if spec.action == "gossip_publish" and result.ok and result.get("message_id"):
                message_id = str(result.get("message_id"))
            rows.append(judge(spec, node, result))
    return rows


def _run(
    runner: ProbeRunner, action: str, node: str, peer: str, message_id: str, timeout: float
) -> ProbeResult:
    if action == "connect":
        return runner.connect(node, peer, "direct", timeout)
    if action == "throughput":
        return runner.throughput(node, peer, 1.0, 1.0 + timeout)
    if action in ("gossip_publish", "subscribe"):
        return runner.run(action, node, timeout=timeout, topic=CHECK_TOPIC)
    if action == "gossip_received":
        return runner.received(node, message_id, timeout)
    if action == "crdt":
        return runner.crdt(node, 0, timeout)  # 0 reads: the check changes nothing
    return runner.run(action, node, timeout=timeout)


def contract_passed(rows: Sequence[CheckRow]) -> bool:
    """No required or focus action is missing, invalid or failed (optional ones may be skipped)."""
    return all(r.status in ("ok", "skipped") for r in rows)


def render_table(rows: Sequence[CheckRow]) -> str:
    """One table: action, requirement, node, status, time, how to fix."""
    head = ("action", "required", "node", "status", "time", "how to fix")
    body = [
        (r.action, r.requirement, r.node, r.status, "-" if r.seconds is None else f"{r.seconds:.2f}s", r.fix)
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in (head, *body)) for i in range(5)]
    lines = []
    for line in (head, *body):
        cells = [str(c).ljust(w) for c, w in zip(line[:5], widths, strict=True)]
        lines.append("  ".join([*cells, line[5]]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 10)
    return "\n".join(lines)
