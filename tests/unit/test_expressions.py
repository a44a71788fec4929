"""Property tests of the criteria expression language: random well-formed expressions evaluate
exactly like the same computation done by Python on the same numbers; random text either parses
or raises CriteriaError, never any other exception."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.errors import CriteriaError
from pytest_vpstest.expressions import evaluate, parse

NAMES = ["connectivity.direct.rate", "throughput.avg_mbps", "gossip.latency_ms.p95", "x"]
metrics_st = st.fixed_dictionaries(
    {n: st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False) for n in NAMES}
)


@dataclass(frozen=True)
class Expr:
    text: str
    kind: str  # "num" | "bool"
    # Evaluates the reference computation in Python; raises ZeroDivisionError/OverflowError like the language.
    ref: object


class _Fail(Exception):
    pass


def _arith(op: str, a: float, b: float) -> float:
    if op == "/" and b == 0:
        raise _Fail
    result = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[op](a, b)
    if not math.isfinite(result):
        raise _Fail
    return float(result)


def numbers() -> st.SearchStrategy[Expr]:
    leaf = st.one_of(
        st.floats(min_value=0, max_value=1e6, allow_nan=False).map(
            lambda v: Expr(repr(v), "num", lambda m, v=v: v)
        ),
        st.integers(min_value=0, max_value=10**6).map(lambda v: Expr(str(v), "num", lambda m, v=v: float(v))),
        st.sampled_from(NAMES).map(lambda n: Expr(n, "num", lambda m, n=n: m[n])),
    )

    def extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        binary = st.tuples(children, st.sampled_from("+-*/"), children).map(
            lambda t: Expr(
                f"({t[0].text} {t[1]} {t[2].text})",
                "num",
                lambda m, t=t: _arith(t[1], t[0].ref(m), t[2].ref(m)),
            )  # type: ignore[operator]
        )
        neg = children.map(
            lambda c: Expr(
                f"-{c.text}" if c.text.startswith("(") else f"-({c.text})", "num", lambda m, c=c: -c.ref(m)
            )
        )  # type: ignore[operator]
        return st.one_of(binary, neg)

    return st.recursive(leaf, extend, max_leaves=8)


CMP = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def conditions() -> st.SearchStrategy[Expr]:
    num = numbers()
    leaf = st.one_of(
        st.tuples(num, st.sampled_from(list(CMP)), num).map(
            lambda t: Expr(
                f"{t[0].text} {t[1]} {t[2].text}", "bool", lambda m, t=t: CMP[t[1]](t[0].ref(m), t[2].ref(m))
            )  # type: ignore[operator]
        ),
        st.sampled_from(["true", "false"]).map(lambda w: Expr(w, "bool", lambda m, w=w: w == "true")),
    )

    def extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        # Both operands are evaluated (no short-circuit), as the language does, so errors agree.
        def both(op: str, a: Expr, b: Expr) -> Expr:
            def ref(m: dict[str, float]) -> bool:
                x, y = a.ref(m), b.ref(m)  # type: ignore[operator]
                return (x and y) if op == "and" else (x or y)

            return Expr(f"({a.text} {op} {b.text})", "bool", ref)

        combined = st.tuples(children, st.sampled_from(["and", "or"]), children).map(
            lambda t: both(t[1], t[0], t[2])
        )
        negated = children.map(lambda c: Expr(f"not ({c.text})", "bool", lambda m, c=c: not c.ref(m)))  # type: ignore[operator]
        return st.one_of(combined, negated)

    return st.recursive(leaf, extend, max_leaves=6)


@given(conditions(), metrics_st)
def test_well_formed_conditions_match_python(expr: Expr, metrics: dict[str, float]) -> None:
    tree = parse(expr.text)
    try:
        expected = expr.ref(metrics)  # type: ignore[operator]
    except _Fail:
        try:
            evaluate(tree, metrics, expr.text)
        except CriteriaError:
            return
        raise AssertionError("expected a CriteriaError (division by zero or overflow)") from None
    assert evaluate(tree, metrics, expr.text) is expected


@given(numbers(), metrics_st)
def test_arithmetic_matches_python_exactly(expr: Expr, metrics: dict[str, float]) -> None:
    try:
        expected = expr.ref(metrics)  # type: ignore[operator]
    except _Fail:
        return
    assert evaluate(parse(expr.text), metrics, expr.text) == expected


ALPHABET = st.sampled_from([*"abc.xyz_0123456789 ()<>=!+-*/&|@#\"'\t", "and", "or", "not", "true", " "])


@given(st.one_of(st.text(max_size=40), st.lists(ALPHABET, max_size=20).map("".join)), metrics_st)
def test_garbage_raises_only_criteria_error(text: str, metrics: dict[str, float]) -> None:
    try:
        tree = parse(text)
        evaluate(tree, metrics, text)
    except CriteriaError as exc:
        assert "\n" not in str(exc) and "column" in str(exc)
