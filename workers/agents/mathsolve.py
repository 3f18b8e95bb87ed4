"""The sympy work of the `math` agent, run as `python -m workers.agents.mathsolve` under CPU and memory limits.

sympy's solve and integrate can run for minutes on small inputs, so the agent never calls them in the worker:
it starts this module with a JSON request on stdin, and reads `{"result": ...}` or `{"error": ...}` on stdout.
Every expression is built by the whitelist parser in `mathparse`; nothing here evaluates text.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any, Mapping

OPERATIONS = ("evaluate", "solve", "simplify", "factor", "expand", "differentiate", "integrate", "limit")
MAX_ORDER = 10


def limit_self(cpu_s: int, memory_bytes: int) -> None:
    """Cap this process's CPU time (SIGXCPU, then SIGKILL a second later) and address space."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _approx(value: Any) -> str:
    """` ≈ 0.3333333333333333` for a real number that is not an integer, else nothing."""
    if value.is_number and value.is_real and value.is_finite and not value.is_Integer:
        try:
            return f" ≈ {float(value)!r}"
        except (OverflowError, TypeError):
            return f" ≈ {value.evalf(15)}"
    return ""


def _variable(expr: Any, name: str | None) -> Any:
    """The symbol to work in: the one named, else x if present, else the only (or first) free symbol."""
    import sympy

    if name:
        from workers.agents.mathparse import parse

        symbol = parse(name)
        if not isinstance(symbol, sympy.Symbol):
            raise ValueError(f"The variable must be a name such as x, not {name!r}.")
        return symbol
    symbols = sorted(expr.free_symbols, key=str)
    if not symbols:
        return sympy.Symbol("x")
    return next((s for s in symbols if s.name == "x"), symbols[0])


def _bound(text: Any) -> Any:
    from workers.agents.mathparse import parse

    return parse(str(text))


def compute(request: Mapping[str, Any]) -> str:
    """Carry out one request: `operation` on `expression` (with `variable`, `lower`/`upper`, `point`, `order`)."""
    import sympy

    from workers.agents.mathparse import parse

    operation = str(request.get("operation") or "evaluate")
    if operation not in OPERATIONS:
        raise ValueError(f"Unknown operation {operation!r}; use one of {', '.join(OPERATIONS)}.")
    text = str(request.get("expression", "")).strip()
    expr = parse(text)
    is_equation = isinstance(expr, sympy.Equality)
    if is_equation and operation != "solve":
        operation = "solve"  # an equation is there to be solved
    var = _variable(expr, request.get("variable"))
    if operation == "solve":
        equation = expr if is_equation else sympy.Eq(expr, 0)
        solutions = sympy.solve(equation, var, dict=False)
        if not solutions:
            return f"{text}: no solution for {var}"
        shown = " or ".join(f"{var} = {s}{_approx(s)}" for s in solutions)
        return f"{text}: {shown}"
    if operation == "differentiate":
        order = int(request.get("order") or 1)
        if not 1 <= order <= MAX_ORDER:
            raise ValueError(f"The order must be between 1 and {MAX_ORDER}.")
        result = sympy.diff(expr, var, order)
        mark = "" if order == 1 else f"^{order}"
        return f"d{mark}/d{var}{mark} [{text}] = {result}"
    if operation == "integrate":
        lower, upper = request.get("lower"), request.get("upper")
        if lower not in (None, "") and upper not in (None, ""):
            low, high = _bound(lower), _bound(upper)
            result = sympy.integrate(expr, (var, low, high))
            return f"integral of {text} d{var} from {low} to {high} = {result}{_approx(result)}"
        result = sympy.integrate(expr, var)
        return f"integral of {text} d{var} = {result} + C"
    if operation == "limit":
        point = _bound(request.get("point") if request.get("point") not in (None, "") else "0")
        result = sympy.limit(expr, var, point)
        return f"limit of {text} as {var} -> {point} = {result}{_approx(result)}"
    if operation in ("factor", "expand"):
        result = getattr(sympy, operation)(expr)
        return f"{operation} {text} = {result}"
    result = sympy.simplify(expr)
    return f"{text} = {result}{_approx(result)}"


def main() -> None:
    """Read one request from stdin, write one JSON answer to stdout."""
    request = json.loads(sys.stdin.read())
    limit_self(int(request.get("cpu_s", 10)), int(request.get("memory_bytes", 1 << 30)))
    try:
        answer = {"result": compute(request)}
    except MemoryError:
        answer = {"error": "The computation needed more memory than it is allowed; try a smaller problem."}
    except (ValueError, TypeError, ArithmeticError, NotImplementedError) as ex:
        answer = {"error": str(ex) or type(ex).__name__}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
