"""The criteria expression language of the ``custom`` mode: tokenizer, parser and evaluator.

An expression such as ``connectivity.nat_traversed.rate >= 85 and throughput.avg_mbps > 10`` is
parsed into a small tree (:func:`parse`) and evaluated over a run's flat metrics (:func:`evaluate`);
nothing is ever passed to ``eval``. Every mistake is one :class:`~pytest_vpstest.errors.CriteriaError`
line naming the column. ``criteria.custom`` turns each top-level ``and`` operand into a check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_vpstest.errors import CriteriaError

__all__ = [
    "Arith",
    "BoolLit",
    "BoolOp",
    "Compare",
    "Name",
    "Neg",
    "Node",
    "Not",
    "Num",
    "Token",
    "as_bool",
    "check_expression",
    "compare",
    "evaluate",
    "parse",
    "render",
    "tokenize",
]


def compare(measured: float, op: str, target: float) -> bool:
    """``measured <op> target`` for one of the six comparison operators."""
    return {
        ">=": measured >= target,
        ">": measured > target,
        "<=": measured <= target,
        "<": measured < target,
        "==": measured == target,
        "!=": measured != target,
    }[op]


# The grammar:
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
        return self.compare()

    def compare(self) -> Node:
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


def as_bool(value: float | bool, node: Node, src: str | None = None) -> bool:
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
        return not as_bool(_eval(node.operand, metrics, src), node.operand, src)
    if isinstance(node, BoolOp):
        left = as_bool(_eval(node.left, metrics, src), node.left, src)
        right = as_bool(_eval(node.right, metrics, src), node.right, src)
        return (left and right) if node.op == "and" else (left or right)
    left_v = _num(_eval(node.left, metrics, src), node.left, src)
    right_v = _num(_eval(node.right, metrics, src), node.right, src)
    if isinstance(node, Compare):
        return compare(left_v, node.op, right_v)
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
        as_bool(evaluate(tree, metrics, expression), tree, expression)
