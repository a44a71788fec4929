"""Success criteria: verdicts over a run's metrics, and the confidence interval of a rate.

Four modes: ``all-pass``, ``threshold`` (per-category targets from config),
``improvement`` (not worse than the previous run of the same project and focus) and ``custom``
(a small expression language parsed here: no ``eval``). Everything is pure: metrics in, a
:class:`Verdict` out, each check with its target, what was measured and the gap.

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
from pytest_vpstest.suite import SUITES

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


def _compare(measured: float, op: str, target: float) -> bool:
    return {
        ">=": measured >= target,
        ">": measured > target,
        "<=": measured <= target,
        "<": measured < target,
        "==": measured == target,
        "!=": measured != target,
    }[op]


def _check(metrics: Mapping[str, float], metric: str, op: str, target: float, note: str = "") -> Check:
    measured = metrics.get(metric)
    if measured is None:
        return Check(metric, op, target, None, False, note or "not measured")
    return Check(metric, op, target, measured, _compare(measured, op, target), note)


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
    Suites with no configured target use :data:`DEFAULT_TARGETS` (direct 99, nat_traversed 85, relay 100).
    """
    checks = [_tests_check(metrics)]
    notes: list[str] = []
    for suite in suites_run:
        suite_targets = targets.get(suite) or DEFAULT_TARGETS.get(suite)
        if not suite_targets:
            notes.append(f"no thresholds configured for {suite} (tests.{suite}.success_criteria)")
            continue
        for key, target in suite_targets.items():
            metric = _target_metric(suite, key, metrics)
            op = "<=" if _LOWER_IS_BETTER.search(metric) else ">="
            checks.append(_check(metrics, metric, op, float(target)))
    return Verdict(all(c.passed for c in checks), "threshold", tuple(checks), tuple(notes))


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
    overall = _as_bool(evaluate(tree, metrics, expression), tree, expression)
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
# The expression language
#
#   expr    := or
#   or      := and ("or" and)*
#   and     := not ("and" not)*
#   not     := "not" not | compare
#   compare := sum (CMP sum)?              CMP: < <= > >= == !=   (no chaining)
#   sum     := product (("+" | "-") product)*
#   product := unary (("*" | "/") unary)*
#   unary   := "-" unary | atom
#   atom    := NUMBER | NAME | "true" | "false" | "(" expr ")"
#   NAME    := segment ("." segment)*      segment: [A-Za-z_][A-Za-z0-9_]*


@dataclass(frozen=True)
class Num:
    value: float
    col: int


@dataclass(frozen=True)
class Name:
    name: str
    col: int


@dataclass(frozen=True)
class BoolLit:
    value: bool
    col: int


@dataclass(frozen=True)
class Neg:
    operand: Node
    col: int


@dataclass(frozen=True)
class Not:
    operand: Node
    col: int


@dataclass(frozen=True)
class Arith:
    op: str
    left: Node
    right: Node
    col: int


@dataclass(frozen=True)
class Compare:
    op: str
    left: Node
    right: Node
    col: int


@dataclass(frozen=True)
class BoolOp:
    op: str
    left: Node
    right: Node
    col: int


Node = Num | Name | BoolLit | Neg | Not | Arith | Compare | BoolOp


@dataclass(frozen=True)
class Token:
    kind: str  # NUM NAME OP KW LPAREN RPAREN END
    text: str
    col: int  # 1-based


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op><=|>=|==|!=|<|>|\+|-|\*|/)
  | (?P<lparen>\()
  | (?P<rparen>\))
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "true", "false"}


def _error(expression: str, col: int, message: str) -> CriteriaError:
    return CriteriaError(f"criteria expression, column {col}: {message}: {expression!r}")


def tokenize(expression: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expression):
        m = _TOKEN_RE.match(expression, pos)
        if m is None:
            raise _error(expression, pos + 1, f"unexpected character {expression[pos]!r}")
        kind = m.lastgroup
        text = m.group()
        col = pos + 1
        pos = m.end()
        if kind == "ws":
            continue
        if kind == "name" and text in _KEYWORDS:
            tokens.append(Token("KW", text, col))
        elif kind == "name" and any(seg in _KEYWORDS for seg in text.split(".")):
            raise _error(expression, col, f"keyword used inside a metric name {text!r}")
        else:
            kinds = {"num": "NUM", "name": "NAME", "op": "OP", "lparen": "LPAREN", "rparen": "RPAREN"}
            tokens.append(Token(kinds[kind or ""], text, col))
    tokens.append(Token("END", "", len(expression) + 1))
    return tokens


class _Parser:
    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = tokenize(expression)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def _take(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def _is(self, kind: str, *texts: str) -> bool:
        return self.tok.kind == kind and (not texts or self.tok.text in texts)

    def parse(self) -> Node:
        if self._is("END"):
            raise _error(self.expression, 1, "empty expression")
        node = self._or()
        if not self._is("END"):
            raise _error(self.expression, self.tok.col, f"unexpected {self.tok.text!r}")
        return node

    def _or(self) -> Node:
        node = self._and()
        while self._is("KW", "or"):
            t = self._take()
            node = BoolOp("or", node, self._and(), t.col)
        return node

    def _and(self) -> Node:
        node = self._not()
        while self._is("KW", "and"):
            t = self._take()
            node = BoolOp("and", node, self._not(), t.col)
        return node

    def _not(self) -> Node:
        if self._is("KW", "not"):
            t = self._take()
            return Not(self._not(), t.col)
        return self._compare()

    def _compare(self) -> Node:
        node = self._sum()
        if self._is("OP", "<", "<=", ">", ">=", "==", "!="):
            t = self._take()
            node = Compare(t.text, node, self._sum(), t.col)
            if self._is("OP", "<", "<=", ">", ">=", "==", "!="):
                raise _error(self.expression, self.tok.col, "chained comparison; join with 'and'")
        return node

    def _sum(self) -> Node:
        node = self._product()
        while self._is("OP", "+", "-"):
            t = self._take()
            node = Arith(t.text, node, self._product(), t.col)
        return node

    def _product(self) -> Node:
        node = self._unary()
        while self._is("OP", "*", "/"):
            t = self._take()
            node = Arith(t.text, node, self._unary(), t.col)
        return node

    def _unary(self) -> Node:
        if self._is("OP", "-"):
            t = self._take()
            return Neg(self._unary(), t.col)
        return self._atom()

    def _atom(self) -> Node:
        t = self.tok
        if t.kind == "NUM":
            self._take()
            value = float(t.text)
            if not math.isfinite(value):
                raise _error(self.expression, t.col, f"number out of range {t.text!r}")
            return Num(value, t.col)
        if t.kind == "NAME":
            self._take()
            return Name(t.text, t.col)
        if t.kind == "KW" and t.text in ("true", "false"):
            self._take()
            return BoolLit(t.text == "true", t.col)
        if t.kind == "LPAREN":
            self._take()
            node = self._or()
            if not self._is("RPAREN"):
                raise _error(self.expression, self.tok.col, "expected ')'")
            self._take()
            return node
        what = "end of expression" if t.kind == "END" else repr(t.text)
        raise _error(self.expression, t.col, f"expected a number, a metric or '(' but found {what}")


def parse(expression: str) -> Node:
    """Parse a criteria expression; a malformed one raises a one-line :class:`CriteriaError`."""
    return _Parser(expression).parse()


def evaluate(node: Node, metrics: Mapping[str, float], expression: str | None = None) -> float | bool:
    """Value of a parsed expression over ``metrics``. Unknown metrics, type mismatches and
    division by zero raise :class:`CriteriaError` naming the column."""
    return _eval(node, metrics, expression if expression is not None else render(node))


def _start(node: Node) -> int:
    """Column where the text of ``node`` starts (its leftmost operand)."""
    if isinstance(node, Arith | Compare | BoolOp):
        return _start(node.left)
    return node.col


def _num(value: float | bool, node: Node, src: str) -> float:
    if isinstance(value, bool):
        raise _error(src, _start(node), "expected a number, got a condition")
    return value


def _as_bool(value: float | bool, node: Node, src: str | None = None) -> bool:
    if not isinstance(value, bool):
        raise _error(src or render(node), _start(node), "expected a condition (a comparison), got a number")
    return value


def _eval(node: Node, metrics: Mapping[str, float], src: str) -> float | bool:
    if isinstance(node, Num):
        return node.value
    if isinstance(node, BoolLit):
        return node.value
    if isinstance(node, Name):
        if node.name not in metrics:
            known = ", ".join(sorted(metrics)[:12])
            raise _error(src, node.col, f"unknown metric {node.name!r} (known: {known})")
        return float(metrics[node.name])
    if isinstance(node, Neg):
        return -_num(_eval(node.operand, metrics, src), node.operand, src)
    if isinstance(node, Not):
        return not _as_bool(_eval(node.operand, metrics, src), node.operand, src)
    if isinstance(node, BoolOp):
        left = _as_bool(_eval(node.left, metrics, src), node.left, src)
        right = _as_bool(_eval(node.right, metrics, src), node.right, src)
        return (left and right) if node.op == "and" else (left or right)
    left_v = _num(_eval(node.left, metrics, src), node.left, src)
    right_v = _num(_eval(node.right, metrics, src), node.right, src)
    if isinstance(node, Compare):
        return _compare(left_v, node.op, right_v)
    if node.op == "+":
        result = left_v + right_v
    elif node.op == "-":
        result = left_v - right_v
    elif node.op == "*":
        result = left_v * right_v
    else:
        if right_v == 0:
            raise _error(src, node.col, "division by zero")
        result = left_v / right_v
    if not math.isfinite(result):
        raise _error(src, node.col, "result out of range")
    return result


def render(node: Node) -> str:
    """Source text of a parsed expression (fully parenthesised where needed)."""
    if isinstance(node, Num):
        return repr(node.value)
    if isinstance(node, Name):
        return node.name
    if isinstance(node, BoolLit):
        return "true" if node.value else "false"
    if isinstance(node, Neg):
        return f"-({render(node.operand)})"
    if isinstance(node, Not):
        return f"not ({render(node.operand)})"
    return f"({render(node.left)} {node.op} {render(node.right)})"


def check_expression(expression: str, metrics: Mapping[str, float] | None = None) -> None:
    """Validate an expression up front (syntax; names too when ``metrics`` is given)."""
    tree = parse(expression)
    if metrics is not None:
        _as_bool(evaluate(tree, metrics, expression), tree, expression)


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
