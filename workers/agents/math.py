"""The `math` agent: exact answers from sympy, through one `sympy` tool run in a time- and memory-limited process.

The tool takes structured arguments from a model (operation, expression, variable, bounds) or a request in words
("integrate x^2 from 0 to 1"), which it reads itself: the offline model passes the user's text as it is.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from events.catalog import AGENT_TYPES
from workers.agents.agent import AgentContext, Tool, tool_loop
from workers.agents.mathparse import MAX_CHARS, MathSyntaxError, is_name, tokenize
from workers.agents.mathsolve import OPERATIONS

CPU_S = 10
WALL_S = 20.0
MEMORY_BYTES = 1 << 30
HERE = Path(__file__).resolve().parent
# The child loads the two modules it needs by path: `-m workers.agents.mathsolve` would import the Celery app and
# every agent first. `-I`: no environment variables, no user site, no current directory on sys.path.
_BOOT = """import importlib.util, sys
for name, path in zip(sys.argv[1::2], sys.argv[2::2]):
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
module.main()
"""
_MODULES = (
    "workers.agents.mathparse",
    str(HERE / "mathparse.py"),
    "workers.agents.mathsolve",
    str(HERE / "mathsolve.py"),
)

SYSTEM = (
    "You are a careful mathematician. Use the sympy tool for every calculation, solve, simplification, derivative, "
    "integral or limit, and give its exact result (with the decimal approximation when it has one). Write "
    "expressions with + - * / ^, parentheses and functions such as sin, cos, exp, log, sqrt."
)
_OPERATION_WORDS = [
    ("solve", r"\b(?:solve|roots?|zeros?)\b"),
    ("differentiate", r"\b(?:differentiate|derivative|d/d[a-z])"),
    ("integrate", r"\b(?:integrate|integral|antiderivative)\b"),
    ("limit", r"\b(?:limit|lim)\b"),
    ("factor", r"\bfactori[sz]e\b|\bfactor\b"),
    ("expand", r"\bexpand\b"),
    ("simplify", r"\bsimplify\b"),
]
_ORDERS = {"second": 2, "third": 3, "fourth": 4}
_BOUNDS = re.compile(r"\b(?:from|between)\s+(\S+)\s+(?:to|and)\s+([^\s?,;]+)", re.I)
_POINT = re.compile(r"\bas\s+([A-Za-z]\w*)\s*(?:->|→|approaches|goes to|tends to)\s*([^\s?,;]+)", re.I)
_VARIABLE = re.compile(r"\b(?:with respect to|wrt|for)\s+([A-Za-z]\w*)|\bd/d([A-Za-z])\b|\bd([A-Za-z])\b", re.I)
_PIECES = re.compile(r"\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|[A-Za-z][A-Za-z_0-9]*|\*\*|[-+*/^(),=!]|\s+|.")


def _operation(text: str) -> str:
    """The operation a request in words asks for: the earliest keyword, else evaluate."""
    found = [(m.start(), op) for op, pattern in _OPERATION_WORDS if (m := re.search(pattern, text, re.I))]
    return min(found)[1] if found else "evaluate"


def find_expression(text: str) -> str:
    """The longest run of maths in `text` (numbers, known names, operators), preferring runs with an operator."""
    runs: list[str] = []
    current = ""
    for piece in _PIECES.findall(text):
        mathy = piece.isspace() or piece[0].isdigit() or (piece[0] == "." and len(piece) > 1)
        mathy = mathy or piece in ("**", *"-+*/^(),=!") or (piece[0].isalpha() and is_name(piece))
        if mathy:
            current += piece
        else:
            runs.append(current)
            current = ""
    runs.append(current)
    cleaned = [r.strip().strip(",=+*/^").strip() for r in runs]
    # A lone letter in a sentence is a word ("I", "a"), not a problem; a number, operator or name such as pi is.
    cleaned = [r for r in cleaned if re.search(r"[\d(=+*/^!-]|[A-Za-z]{2}", r)]
    if not cleaned:
        raise MathSyntaxError(
            "No mathematical expression found; write it with numbers, variables such as x, + - * / ^ and "
            "functions such as sin(x), e.g. 'solve x^2 - 4 = 0'."
        )
    return max(cleaned, key=lambda r: (bool(re.search(r"[-+*/^=!(]", r)), len(r)))


def read_request(args: Mapping[str, Any]) -> dict[str, Any]:
    """The tool's arguments made complete: an expression in words is read for its operation, variable and bounds."""
    text = str(args.get("expression", "")).strip()
    if len(text) > 4 * MAX_CHARS:
        raise MathSyntaxError(f"The request is longer than {4 * MAX_CHARS} characters; shorten it.")
    request: dict[str, Any] = {k: v for k, v in args.items() if v not in (None, "")}
    request.setdefault("operation", _operation(text))
    try:
        tokenize(text)
        request["expression"] = text  # already pure maths
        return request
    except MathSyntaxError:
        pass
    if bounds := _BOUNDS.search(text):
        request.setdefault("lower", bounds.group(1))
        request.setdefault("upper", bounds.group(2))
        text = text[: bounds.start()] + " " + text[bounds.end() :]
    if point := _POINT.search(text):
        request.setdefault("variable", point.group(1))
        request.setdefault("point", point.group(2))
        text = text[: point.start()] + " " + text[point.end() :]
    for match in _VARIABLE.finditer(text):
        name = next(g for g in match.groups() if g)
        if is_name(name) and len(name) <= 3:
            request.setdefault("variable", name)
            text = text[: match.start()] + " " * (match.end() - match.start()) + text[match.end() :]
    if order := re.search(r"\b(second|third|fourth)\b", text, re.I):
        request.setdefault("order", _ORDERS[order.group(1).lower()])
    request["expression"] = find_expression(re.sub(r"\b(?:d/d[A-Za-z])\b", " ", text))
    return request


def run_sympy(request: Mapping[str, Any], *, cpu_s: int = CPU_S, wall_s: float = WALL_S) -> str:
    """Run one request in `workers.agents.mathsolve`, a child process limited in CPU time, memory and wall time."""
    payload = json.dumps({**request, "cpu_s": cpu_s, "memory_bytes": MEMORY_BYTES})
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _BOOT, *_MODULES],
            input=payload,
            capture_output=True,
            text=True,
            timeout=wall_s,
            env={},  # nothing of the worker's environment
        )
    except subprocess.TimeoutExpired as ex:
        raise ValueError(f"The computation took longer than {wall_s:g} s and was stopped; try a simpler form.") from ex
    if done.returncode != 0 or not done.stdout:
        if done.returncode in (-24, -9):  # SIGXCPU, or SIGKILL at the hard limit
            raise ValueError(f"The computation used more than {cpu_s} s of CPU time and was stopped.")
        raise ValueError(f"The computation failed (exit status {done.returncode}): {done.stderr.strip()[-300:]}")
    answer = json.loads(done.stdout)
    if "error" in answer:
        raise ValueError(answer["error"])
    return str(answer["result"])


def sympy_tool(args: Mapping[str, Any]) -> str:
    """The `sympy` tool: read the request, then compute it in the limited child process."""
    return run_sympy(read_request(args))


SYMPY = Tool(
    name="sympy",
    description=(
        "Exact mathematics with sympy: evaluate, solve (equations with '='), simplify, factor, expand, "
        "differentiate, integrate (definite with lower and upper) and limit. 'expression' may also be the whole "
        "request in words, e.g. 'integrate x^2 from 0 to 1'."
    ),
    parameters={
        "type": "object",
        "properties": {
            "expression": {"type": "string", "description": "e.g. 'x^2 - 4 = 0', 'sin(x)*x^2', '2^100/3'"},
            "operation": {"type": "string", "enum": list(OPERATIONS)},
            "variable": {"type": "string", "description": "the variable to solve for or work in, e.g. 'x'"},
            "lower": {"type": "string", "description": "lower bound of a definite integral"},
            "upper": {"type": "string", "description": "upper bound of a definite integral"},
            "point": {"type": "string", "description": "where a limit is taken, e.g. '0' or 'oo'"},
            "order": {"type": "integer", "description": "order of the derivative (default 1)"},
        },
        "required": ["expression"],
    },
    run=sympy_tool,
)


class MathAgent:
    """Exact mathematics: the model states the problem to sympy and reports its exact answer."""

    spec = AGENT_TYPES["math"]
    name = spec.name

    def run(self, ctx: AgentContext) -> str:
        """Answer `ctx.query`."""
        return tool_loop(ctx, SYSTEM, [SYMPY], self.spec)
