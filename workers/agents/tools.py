"""Tools of the general query agent: safe arithmetic and text statistics."""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from typing import Any, Callable, Mapping

from workers.agents.agent import Tool

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_EXPRESSION = re.compile(r"[-+(]*\d(?:[\d\s.+\-*/%()^]|[eE][-+]?\d)*")
MAX_EXPONENT = 1000
MAX_BITS = 10_000  # about 3,000 digits: big enough for any sum people ask, small enough to stay instant


def _bounded(op: ast.operator, left: int | float, right: int | float) -> int | float:
    """Apply `op`, refusing integer results too large to compute or print quickly."""
    if isinstance(op, ast.Pow) and abs(right) > MAX_EXPONENT:
        raise ValueError(f"Exponents above {MAX_EXPONENT} are not allowed.")
    if isinstance(left, int) and isinstance(right, int):
        if isinstance(op, ast.Pow) and right > 0:
            bits = max(left.bit_length(), 1) * right
        elif isinstance(op, ast.Mult):
            bits = left.bit_length() + right.bit_length()
        else:
            bits = max(left.bit_length(), right.bit_length()) + 1
        if bits > MAX_BITS:
            raise ValueError(f"The result would exceed {MAX_BITS} bits.")
    return _BINARY[type(op)](left, right)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _bounded(node.op, _eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise ValueError("Only numbers, + - * / // % ** ^ and parentheses are allowed.")


def find_expression(text: str) -> str | None:
    """The longest arithmetic expression in `text` that has an operator, if any."""
    found = [m.group().strip() for m in _EXPRESSION.finditer(text)]
    candidates = [f for f in found if re.search(r"\d\s*[-+*/%^]\s*[\d(]", f)]
    return max(candidates, key=len) if candidates else None


def calculate(args: Mapping[str, Any]) -> str:
    """Evaluate the arithmetic expression in `expression` (plain text around it is ignored)."""
    text = str(args.get("expression", ""))
    expression = find_expression(text) if not re.fullmatch(r"[\d\s.eE+\-*/%()^]+", text) else text.strip()
    if not expression:
        return "no arithmetic expression found"
    try:
        value = _eval(ast.parse(expression.replace("^", "**"), mode="eval"))
    except ZeroDivisionError:
        return f"{expression} is undefined (division by zero)"
    except (SyntaxError, ValueError, OverflowError) as ex:
        raise ValueError(f"Cannot evaluate {expression!r}: {ex}") from ex
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{expression} = {value}"


def text_stats(args: Mapping[str, Any]) -> str:
    """Count words and sentences of `text` and name its most frequent longer words."""
    text = str(args.get("text", ""))
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", text)
    sentences = [s for s in re.split(r"[.!?]+", text) if s.strip()]
    common = Counter(w.lower() for w in words if len(w) > 3).most_common(3)
    terms = ", ".join(w for w, _ in common) or "none"
    return f"{len(words)} words, {len(sentences)} sentences, {len(text)} characters; key terms: {terms}"


CALCULATOR = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression exactly, e.g. '(2+3)*4'.",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    run=calculate,
)
TEXT_STATS = Tool(
    name="text_stats",
    description="Count the words and sentences of a text and list its key terms.",
    parameters={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    run=text_stats,
)
