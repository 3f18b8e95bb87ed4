"""The `code` agent: writes Python and runs it in the sandbox (workers/sandbox.py) through one `run_python` tool.

With a model, the model writes the program. Offline, the model passes the user's text as it is, and the tool runs
the Python in it: a fenced block, the whole text if it is a program, inline code, or one expression in a sentence
("what is sum(range(10))?"), whose value is printed as the interactive interpreter would.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from events.catalog import AGENT_TYPES
from workers import sandbox
from workers.agents.agent import AgentContext, Tool, tool_loop

LIMITS = sandbox.Limits(output_bytes=8_000)
MAX_WORDS = 80  # of a sentence searched for an expression: at most 3,240 spans to try
SYSTEM = (
    "You are a Python programmer. To answer, write a complete Python 3 program (standard library only, no network, "
    "no input) that prints its results, and run it with run_python. Report the output; if it fails, fix the "
    "program and run it again. Say what the program does, then give the result."
)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)
_INLINE = re.compile(r"`([^`\n]+)`")
_WORD = re.compile(r"\S+")
_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class Found:
    """The Python found in a request: the program to run, and what it is in words."""

    code: str
    what: str


def _parse(text: str, mode: str) -> ast.AST | None:
    try:
        return ast.parse(text, mode=mode)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def _free_names(tree: ast.AST) -> set[str]:
    """Names an expression reads but does not bind itself (comprehension targets, lambda arguments, :=)."""
    nodes = list(ast.walk(tree))
    bound = {n.id for n in nodes if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {n.arg for n in nodes if isinstance(n, ast.arg)}
    return {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound


def _prints(tree: ast.Expression) -> bool:
    """Whether an expression is a call of print (its value, None, is not worth showing)."""
    body = tree.body
    return isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id == "print"


def _expression(text: str) -> Found | None:
    """`text` as one expression worth running: not a lone name or constant, every name a builtin, one it binds
    or a standard module (imported for it). Plain words fail this: `what is 2**100` reads the undefined `what`."""
    tree = _parse(text, "eval")
    if not isinstance(tree, ast.Expression) or isinstance(tree.body, (ast.Name, ast.Constant)):
        return None
    free = _free_names(tree) - _BUILTINS
    modules = free & sys.stdlib_module_names
    if free - modules:
        return None
    imports = "".join(f"import {m}\n" for m in sorted(modules))
    if _prints(tree):
        return Found(f"{imports}{text}\n", f"`{text}`")
    show = "if _value is not None:\n    print(repr(_value))\n"
    return Found(f"{imports}_value = (\n{text}\n)\n{show}", f"`{text}`")


def _program(text: str) -> Found | None:
    """`text` as a program: several statements, or one that is an expression worth running."""
    tree = _parse(text, "exec")
    if not isinstance(tree, ast.Module) or not tree.body:
        return None
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
        return _expression(text.strip())
    lines = text.strip().count("\n") + 1
    return Found(text, f"a program of {lines} line{'s' * (lines != 1)}")


def find_code(text: str) -> Found | None:
    """The Python in a request: a fenced block, the whole text if it is a program, inline code, or the longest
    expression in the text ("what does [x for x in range(5) if x % 2] give?")."""
    if fence := _FENCE.search(text):
        return _program(fence.group(1)) or Found(fence.group(1), "the fenced block")
    if found := _program(text):
        return found
    for inline in _INLINE.finditer(text):
        if found := _program(inline.group(1)):
            return found
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)][:MAX_WORDS]
    spans = sorted(
        ((start, end) for i, (start, _) in enumerate(words) for _, end in words[i:]),
        key=lambda span: span[0] - span[1],
    )
    for start, end in spans:
        if found := _expression(text[start:end].strip().rstrip("?.!,;:")):
            return found
    return None


def _syntax_error(text: str) -> str:
    """Why `text` as a whole is not a program, in words (a model's code with a typo learns where it is)."""
    try:
        ast.parse(text)
    except SyntaxError as ex:
        return f"as a whole, the text is not valid Python: {ex.msg}, line {ex.lineno}"
    except (ValueError, MemoryError, RecursionError) as ex:
        return f"as a whole, the text is not valid Python: {ex}"
    return "the text is valid Python but does nothing worth running"


def run_code(args: Mapping[str, Any]) -> str:
    """The `run_python` tool: find the program in `code`, run it in the sandbox and report how it went."""
    text = str(args.get("code", ""))
    found = find_code(text)
    if found is None:
        return (
            f"No Python found to run ({_syntax_error(text)}): put the program in a ```python fenced block, or ask "
            "about one expression, e.g. 'what is sum(range(10))?'."
        )
    result = sandbox.run_python(found.code, LIMITS)
    return f"Ran {found.what}: {result.report()}"


RUN_PYTHON = Tool(
    name="run_python",
    description=(
        "Run a Python 3 program (standard library only) in a sandbox with no network, a scratch directory and "
        f"limits ({LIMITS.cpu_s} s CPU, {LIMITS.wall_s:g} s wall clock, {LIMITS.memory_bytes >> 20} MiB memory); "
        "returns the exit status, stdout and stderr. Print what you need to see."
    ),
    parameters={
        "type": "object",
        "properties": {"code": {"type": "string", "description": "the whole program"}},
        "required": ["code"],
    },
    run=run_code,
)


class CodeAgent:
    """Programs as answers: the model writes Python, the sandbox runs it, the model reports the result."""

    spec = AGENT_TYPES["code"]
    name = spec.name

    def run(self, ctx: AgentContext) -> str:
        """Answer `ctx.query`."""
        return tool_loop(ctx, SYSTEM, [RUN_PYTHON], self.spec)
