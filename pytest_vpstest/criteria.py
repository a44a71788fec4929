"""Success criteria: verdicts over a run's metrics, and the confidence interval of a rate.

Four modes: ``all-pass``, ``threshold`` (per-category targets from config),
``improvement`` (not worse than the previous run of the same project and focus) and ``custom``
(a small expression language, :mod:`pytest_vpstest.expressions`: no ``eval``). Everything is
pure: metrics in, a :class:`Verdict` out, each check with its target, what was measured and the gap.

Metric names are dotted paths into the results (``connectivity.relay.rate``,
``throughput.avg_mbps``, ``nat_traversal.full_cone_symmetric.rate``, ``tests.failed``); any
character that is not a letter, digit or ``_`` in a key becomes ``_``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from pytest_vpstest.errors import CriteriaError
from pytest_vpstest.expressions import BoolOp, Compare, Node, as_bool, compare, evaluate, parse, render
from pytest_vpstest.nat_theory import expected_failure, group_target, groups, split_group
from pytest_vpstest.suite import NAT_TRAVERSAL, SUITES

__all__ = [
    "DEFAULT_TARGETS",
    "Check",
    "CriteriaSpec",
    "Op",
    "Verdict",
    "all_pass",
    "custom",
    "flatten_metrics",
    "improvement",
    "judge",
    "metric_key",
    "nat_default_checks",
    "rate",
    "threshold",
    "wilson_interval",
]

Op = Literal[">=", ">", "<=", "<", "==", "!="]

# --------------------------------------------------------------------------------------------
# Rates


def wilson_interval(success: int, attempts: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of ``success/attempts`` (95% by default), in percent.

    No attempts → ``(0.0, 100.0)``: nothing is known.
    """
    if attempts <= 0:
        return (0.0, 100.0)
    if not 0 <= success <= attempts:
        raise ValueError(f"success {success} outside 0..{attempts}")
    p = success / attempts
    z2 = z * z
    denom = 1 + z2 / attempts
    centre = (p + z2 / (2 * attempts)) / denom
    half = z * math.sqrt(p * (1 - p) / attempts + z2 / (4 * attempts * attempts)) / denom
    return (round(max(0.0, centre - half) * 100, 2), round(min(1.0, centre + half) * 100, 2))


def rate(success: int, attempts: int) -> float:
    """Success rate in percent, one decimal (71 of 72 is 98.6); 0.0 without attempts."""
    return round(100.0 * success / attempts, 1) if attempts else 0.0


# --------------------------------------------------------------------------------------------
# Metrics


def metric_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


def flatten_metrics(tree: Mapping[str, object], prefix: str = "") -> dict[str, float]:
    """Numbers (and booleans, as 0/1) of a nested mapping under dotted, normalised names."""
    out: dict[str, float] = {}
    for k, v in tree.items():
        name = f"{prefix}.{metric_key(k)}" if prefix else metric_key(k)
        if isinstance(v, bool):
            out[name] = 1.0 if v else 0.0
        elif isinstance(v, int | float):
            out[name] = float(v)
        elif isinstance(v, Mapping):
            out.update(flatten_metrics(v, name))
    return out


# --------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Check:
    """One criterion: ``measured <op> target``."""

    metric: str
    op: str
    target: float | None
    measured: float | None
    passed: bool
    note: str = ""

    @property
    def gap(self) -> float | None:
        """How far measured is from target (measured − target); None when either is unknown."""
        if self.target is None or self.measured is None:
            return None
        return round(self.measured - self.target, 3)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Check:
        """A check as :meth:`Verdict.to_json` wrote it (``gap`` is derived, so not read)."""
        return cls(
            metric=str(data.get("metric", "")),
            op=str(data.get("op", ">=")),
            target=_opt_float(data.get("target"), "target"),
            measured=_opt_float(data.get("measured"), "measured"),
            passed=bool(data.get("passed", False)),
            note=str(data.get("note") or ""),
        )

    def describe(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        measured = "n/a" if self.measured is None else _fmt(self.measured)
        target = "" if self.target is None else f" (target {self.op} {_fmt(self.target)}"
        gap = self.gap
        if target:
            target += f", gap {gap:+g})" if gap is not None else ")"
        note = f" — {self.note}" if self.note else ""
        return f"{mark} {self.metric}: {measured}{target}{note}"


def _fmt(x: float) -> str:
    return f"{x:g}"


def _opt_float(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"verdict check: {name} must be a number or null, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    criteria: str
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = ()
    expression: str | None = None

    @property
    def failures(self) -> list[dict[str, object]]:
        return [
            {"metric": c.metric, "op": c.op, "target": c.target, "measured": c.measured, "gap": c.gap}
            for c in self.checks
            if not c.passed
        ]

    def to_json(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "criteria": self.criteria,
            "expression": self.expression,
            "checks": [asdict(c) | {"gap": c.gap} for c in self.checks],
            "failures": self.failures,
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Verdict:
        """The verdict :meth:`to_json` wrote (results.json ``verdict``); ``failures`` and each
        check's ``gap`` are derived, so they are not read. Missing keys take their defaults."""
        checks = data.get("checks") or ()
        notes = data.get("notes") or ()
        if not isinstance(checks, list | tuple) or not all(isinstance(c, Mapping) for c in checks):
            raise ValueError(f"verdict: 'checks' must be a list of objects, got {checks!r}")
        if not isinstance(notes, list | tuple):
            raise ValueError(f"verdict: 'notes' must be a list, got {notes!r}")
        expression = data.get("expression")
        return cls(
            passed=bool(data.get("passed", False)),
            criteria=str(data.get("criteria", "")),
            checks=tuple(Check.from_json(c) for c in checks),
            notes=tuple(str(n) for n in notes),
            expression=None if expression is None else str(expression),
        )

    def summary_lines(self) -> list[str]:
        head = f"vpstest verdict ({self.criteria}): {'PASSED' if self.passed else 'FAILED'}"
        return [head, *("  " + c.describe() for c in self.checks), *("  note: " + n for n in self.notes)]


def _check(metrics: Mapping[str, float], metric: str, op: str, target: float, note: str = "") -> Check:
    measured = metrics.get(metric)
    if measured is None:
        return Check(metric, op, target, None, False, note or "not measured")
    return Check(metric, op, target, measured, compare(measured, op, target), note)


def _tests_check(metrics: Mapping[str, float]) -> Check:
    return _check(metrics, "tests.failed", "<=", 0.0, "hard errors in tests")


# Metrics where smaller is better; a configured threshold is a ceiling for them.
_LOWER_IS_BETTER = re.compile(r"(latency|_ms$|duplicates|failed)")

# Per suite name, the thresholds used when the config sets none (from the suite registry).
DEFAULT_TARGETS: dict[str, dict[str, float]] = {
    s.name: dict(s.default_targets) for s in SUITES if s.default_targets
}
_CATEGORY_KEYS = frozenset(c for s in SUITES for c in s.categories)


def _target_metric(suite: str, key: str, metrics: Mapping[str, float]) -> str:
    base = ".".join(metric_key(part) for part in (suite, *key.split(".")))
    is_category = key in _CATEGORY_KEYS or "~" in key
    return f"{base}.rate" if is_category or f"{base}.rate" in metrics else base


def all_pass(metrics: Mapping[str, float]) -> Verdict:
    """Every test passed and every success rate measured is 100%."""
    checks = [_tests_check(metrics)]
    for name in sorted(metrics):
        if name.endswith(".rate") and not name.startswith("tests."):
            checks.append(_check(metrics, name, ">=", 100.0))
    for name in sorted(metrics):
        if name.endswith(".converged"):
            checks.append(_check(metrics, name, "==", 1.0, "CRDT convergence"))
    return Verdict(all(c.passed for c in checks), "all-pass", tuple(checks))


def threshold(
    metrics: Mapping[str, float],
    targets: Mapping[str, Mapping[str, float]],
    suites_run: tuple[str, ...],
) -> Verdict:
    """Per-suite targets (config ``tests.<suite>.success_criteria``) for the suites that ran.

    A key names a category (its ``rate`` is compared) or a metric of the suite. Rates and
    throughput are floors (``>=``); latencies, duplicates and failures are ceilings (``<=``).
    Suites with no configured target use :data:`DEFAULT_TARGETS` (connectivity: direct 99,
    nat_traversed 85, relay 100; gossip: delivery 95; throughput: 1 Mbit/s on average);
    nat_traversal uses :func:`nat_default_checks`.
    """
    checks = [_tests_check(metrics)]
    notes: list[str] = []
    for suite in suites_run:
        suite_targets = targets.get(suite) or DEFAULT_TARGETS.get(suite)
        if suite == NAT_TRAVERSAL.name and not targets.get(suite):
            nat_checks, nat_notes = nat_default_checks(metrics)
            checks += nat_checks
            notes += nat_notes
            continue
        if not suite_targets:
            notes.append(f"no thresholds configured for {suite} (tests.{suite}.success_criteria)")
            continue
        for key, target in suite_targets.items():
            metric = _target_metric(suite, key, metrics)
            op = "<=" if _LOWER_IS_BETTER.search(metric) else ">="
            checks.append(_check(metrics, metric, op, float(target)))
    return Verdict(all(c.passed for c in checks), "threshold", tuple(checks), tuple(notes))


# A NAT group's metric prefix ("nat_traversal.full_cone_symmetric") → the group ("full-cone~symmetric").
_NAT_GROUP_OF_METRIC: dict[str, str] = {f"{NAT_TRAVERSAL.name}.{metric_key(g)}": g for g in groups()}


def nat_default_checks(metrics: Mapping[str, float]) -> tuple[list[Check], list[str]]:
    """nat_traversal's default thresholds: each measured NAT pairing against the expected rate of
    its harder side (:mod:`pytest_vpstest.nat_theory`). Pairings theory expects to fail are noted,
    not judged; a run that measured no pairing at all fails (it cannot pass with nothing shown)."""
    checks: list[Check] = []
    notes: list[str] = []
    measured = sorted(
        (prefix, group)
        for prefix, group in _NAT_GROUP_OF_METRIC.items()
        if f"{prefix}.rate" in metrics
    )
    for prefix, group in measured:
        target = group_target(group)
        if target is None:
            reason = expected_failure(*split_group(group)) or "unknown NAT type"
            measured_rate = metrics[prefix + ".rate"]
            notes.append(
                f"{group}: {measured_rate:g}% measured, not judged (expected by NAT theory: {reason})"
            )
            continue
        checks.append(_check(metrics, f"{prefix}.rate", ">=", target, f"expected rate for {group}"))
    if not measured:
        checks.append(Check(f"{NAT_TRAVERSAL.name}.groups", ">=", 1.0, 0.0, False, "no NAT pairing measured"))
    return checks, notes


def _tracked(name: str) -> bool:
    return name.endswith((".rate", "avg_mbps", ".delivery_rate", ".converged")) or bool(
        re.search(r"latency_ms\.p95$", name)
    )


def improvement(
    metrics: Mapping[str, float],
    previous: Mapping[str, float] | None,
    tolerance: float = 0.0,
) -> Verdict:
    """Not worse than the previous run of the same project and focus on any tracked metric.

    Tracked: success rates, delivery rate, convergence, average throughput (higher is better)
    and p95 latency (lower is better); ``tolerance`` (the soak's ``regression_tolerance``) is
    the slack allowed in the metric's own unit. The first run passes with a note.
    """
    checks = [_tests_check(metrics)]
    if previous is None:
        return Verdict(
            checks[0].passed, "improvement", tuple(checks), ("first run of this project and focus: baseline",)
        )
    notes: list[str] = []
    for name in sorted(metrics):
        if not _tracked(name) or name not in previous:
            continue
        before = previous[name]
        if _LOWER_IS_BETTER.search(name):
            checks.append(_check(metrics, name, "<=", before + tolerance, f"previous {before:g}"))
        else:
            checks.append(_check(metrics, name, ">=", before - tolerance, f"previous {before:g}"))
    better = [
        c.metric
        for c in checks[1:]
        if c.measured is not None
        and (c.measured < previous[c.metric] if c.op == "<=" else c.measured > previous[c.metric])
    ]
    if len(checks) == 1:
        notes.append("no metric in common with the previous run")
    elif better:
        notes.append("improved since the previous run: " + ", ".join(better))
    else:
        notes.append("no tracked metric improved; none regressed beyond the tolerance")
    return Verdict(all(c.passed for c in checks), "improvement", tuple(checks), tuple(notes))


def custom(metrics: Mapping[str, float], expression: str) -> Verdict:
    """Evaluate a criteria expression; each top-level ``and`` operand becomes one check."""
    tree = parse(expression)
    checks: list[Check] = [_tests_check(metrics)]
    for part in _conjuncts(tree):
        checks.append(_node_check(part, metrics, expression))
    overall = as_bool(evaluate(tree, metrics, expression), tree, expression)
    return Verdict(overall and checks[0].passed, "custom", tuple(checks), (), expression)


def _conjuncts(node: Node) -> list[Node]:
    if isinstance(node, BoolOp) and node.op == "and":
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _node_check(node: Node, metrics: Mapping[str, float], expression: str) -> Check:
    value = evaluate(node, metrics, expression)
    if isinstance(node, Compare):
        left, right = evaluate(node.left, metrics, expression), evaluate(node.right, metrics, expression)
        assert isinstance(left, float) and isinstance(right, float)  # checked by evaluate
        return Check(render(node.left), node.op, right, left, bool(value))
    return Check(render(node), "is", 1.0, 1.0 if value else 0.0, bool(value))


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CriteriaSpec:
    """What to judge by: the mode plus whatever that mode needs."""

    mode: str = "threshold"
    expression: str | None = None
    targets: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    tolerance: float = 0.0


def judge(
    spec: CriteriaSpec,
    metrics: Mapping[str, float],
    suites_run: tuple[str, ...],
    previous: Mapping[str, float] | None = None,
) -> Verdict:
    """The verdict of ``spec`` over ``metrics``; a bad spec raises :class:`CriteriaError`."""
    if spec.mode == "all-pass":
        return all_pass(metrics)
    if spec.mode == "threshold":
        return threshold(metrics, spec.targets, suites_run)
    if spec.mode == "improvement":
        return improvement(metrics, previous, spec.tolerance)
    if spec.mode == "custom":
        if not spec.expression:
            raise CriteriaError(
                "criteria 'custom' needs an expression (--vps-criteria-expr or config criteria_expr)"
            )
        return custom(metrics, spec.expression)
    raise CriteriaError(f"unknown criteria {spec.mode!r} (allowed: all-pass, threshold, improvement, custom)")
