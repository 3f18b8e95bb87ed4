"""A whitelist parser from maths text to sympy objects, so untrusted text never reaches `sympify` (which calls eval).

Numbers, a fixed set of functions and constants, short variable names, `+ - * / ^ ** ( ) , = !` and implicit
multiplication (`2x`, `3(x+1)`). The parser builds sympy objects itself and bounds the text's length, the nesting
depth, exponents and factorials, and the size of exact integers, so no input makes it work for long.
"""

from __future__ import annotations

import re
from typing import Any, Callable

MAX_CHARS = 500
MAX_DEPTH = 40
MAX_EXPONENT = 1000
MAX_FACTORIAL = 1000
MAX_BITS = 100_000  # about 30,000 digits

# Name in the text -> name in sympy. Tables of strings, so the worker can vet text without importing sympy.
_SAME = "sin cos tan cot sec csc asin acos atan sinh cosh tanh exp log sqrt cbrt floor ceiling factorial gamma"
_SAME += " binomial gcd lcm re im"
FUNCTIONS: dict[str, str] = {
    **{name: name for name in _SAME.split(" ")},
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "ln": "log",
    "abs": "Abs",
    "ceil": "ceiling",
}
CONSTANTS: dict[str, str] = {"pi": "pi", "e": "E", "E": "E", "I": "I", "oo": "oo", "inf": "oo", "infinity": "oo"}
_GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron rho sigma tau upsilon phi"
GREEK = frozenset([*_GREEK.split(" "), "chi", "psi", "omega"]) - set(FUNCTIONS)
_VARIABLE = re.compile(r"[A-Za-z](?:_?\d{1,2})?")
_TOKEN = re.compile(
    r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([A-Za-z][A-Za-z_0-9]*)|(\*\*|[-+*/^(),=!]))"
)


class MathSyntaxError(ValueError):
    """Raised when maths text uses something outside the whitelist or is malformed."""


def is_name(word: str) -> bool:
    """Whether `word` is a function, constant or variable name the parser accepts."""
    return word in FUNCTIONS or word in CONSTANTS or word in GREEK or bool(_VARIABLE.fullmatch(word))


def tokenize(text: str) -> list[tuple[str, str]]:
    """The tokens of `text` as (kind, text) pairs, kind being "num", "name" or "op"."""
    if len(text) > MAX_CHARS:
        raise MathSyntaxError(f"The expression is longer than {MAX_CHARS} characters; shorten it.")
    tokens, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise MathSyntaxError(f"Unexpected character {text[pos:].lstrip()[:1]!r} in {text!r}.")
        num, name, op = match.groups()
        if name is not None and not is_name(name):
            raise MathSyntaxError(
                f"Unknown name {name!r}: use variables of one letter (x, y, t1), Greek letters, "
                f"constants (pi, e, I, oo) or functions such as {', '.join(sorted(FUNCTIONS)[:8])}."
            )
        tokens.append(("num", num) if num is not None else ("name", name) if name is not None else ("op", op))
        pos = match.end()
    return tokens


def check_power(base: Any, exponent: Any) -> None:
    """Refuse powers whose exact value would be too large to compute quickly."""
    if exponent.is_Number and abs(exponent) > MAX_EXPONENT:
        raise MathSyntaxError(f"Exponents above {MAX_EXPONENT} are not allowed.")
    if (
        base.is_Integer
        and exponent.is_Integer
        and exponent > 0
        and int(abs(base)).bit_length() * int(exponent) > MAX_BITS
    ):
        raise MathSyntaxError(f"The result would exceed {MAX_BITS} bits.")


class _Parser:
    """Recursive descent over the tokens: equation > sum > product > unary > power > postfix > atom."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, op: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (op is not None and token != ("op", op)):
            found = "the end" if token is None else repr(token[1])
            raise MathSyntaxError(f"Expected {op!r} but found {found}." if op else "The expression ended too soon.")
        self.pos += 1
        return token

    def accept(self, *ops: str) -> str | None:
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in ops:
            self.pos += 1
            return token[1]
        return None

    def nested(self, parse: Callable[[], Any]) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise MathSyntaxError(f"The expression is nested more than {MAX_DEPTH} levels deep.")
        try:
            return parse()
        finally:
            self.depth -= 1

    def equation(self) -> Any:
        left = self.sum()
        if self.accept("="):
            import sympy

            return sympy.Eq(left, self.sum(), evaluate=False)
        return left

    def sum(self) -> Any:
        value = self.product()
        while op := self.accept("+", "-"):
            right = self.product()
            value = value + right if op == "+" else value - right
        return value

    def starts_atom(self) -> bool:
        token = self.peek()
        return token is not None and (token[0] in ("num", "name") or token == ("op", "("))

    def product(self) -> Any:
        value = self.unary()
        while True:
            if op := self.accept("*", "/"):
                right = self.unary()
                if op == "/" and right == 0:
                    raise MathSyntaxError("Division by zero.")
                value = value * right if op == "*" else value / right
            elif self.starts_atom():  # implicit multiplication: 2x, 3(x+1), x y
                value = value * self.power()
            else:
                return value

    def unary(self) -> Any:
        if op := self.accept("-", "+"):
            operand = self.nested(self.unary)
            return -operand if op == "-" else operand
        return self.power()

    def power(self) -> Any:
        base = self.postfix()
        if self.accept("^", "**"):
            exponent = self.nested(self.unary)  # right-associative, and -x^2 is -(x^2)
            check_power(base, exponent)
            return base**exponent
        return base

    def postfix(self) -> Any:
        value = self.atom()
        while self.accept("!"):
            value = factorial(value)
        return value

    def atom(self) -> Any:
        import sympy

        kind, text = self.take()
        if kind == "num":
            return sympy.Rational(text)  # exact: 0.1 is 1/10
        if kind == "name":
            if text in FUNCTIONS:
                self.take("(")
                args = [self.nested(self.sum)]
                while self.accept(","):
                    args.append(self.nested(self.sum))
                self.take(")")
                return call(text, args)
            if text in CONSTANTS:
                return getattr(sympy, CONSTANTS[text])
            return sympy.Symbol(text)
        if text == "(":
            value = self.nested(self.sum)
            self.take(")")
            return value
        raise MathSyntaxError(f"Unexpected {text!r}.")


def factorial(value: Any) -> Any:
    """`value!`, refusing factorials too large to compute quickly."""
    if value.is_Number and abs(value) > MAX_FACTORIAL:
        raise MathSyntaxError(f"Factorials above {MAX_FACTORIAL}! are not allowed.")
    import sympy

    return sympy.factorial(value)


def call(name: str, args: list[Any]) -> Any:
    """Apply the whitelisted function `name` to `args`."""
    if name == "factorial" and len(args) == 1:
        return factorial(args[0])
    import sympy

    try:
        return getattr(sympy, FUNCTIONS[name])(*args)
    except TypeError as ex:
        raise MathSyntaxError(f"{name}() was given {len(args)} arguments: {ex}") from ex


def parse(text: str) -> Any:
    """A sympy expression (or `Eq` when the text has one `=`) built from `text` through the whitelist."""
    tokens = tokenize(text)
    if not tokens:
        raise MathSyntaxError("There is no expression to work on.")
    parser = _Parser(tokens)
    value = parser.equation()
    if parser.peek() is not None:
        raise MathSyntaxError(f"Unexpected {parser.peek()[1]!r} after a complete expression.")  # type: ignore[index]
    return value
