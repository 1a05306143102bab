"""`calculator`: safe arithmetic without `eval`.

The expression is parsed with `ast.parse(mode="eval")` and walked by a small
interpreter that knows only numbers, `+ - * / // % **`, unary signs, parentheses, the
constants `pi`, `e`, `tau` and a handful of math functions. Anything else (names,
attributes, subscripts, lambdas, strings, comprehensions, keyword arguments) is refused.
Sizes are bounded: the input length, exponents, and every intermediate result
(`|x| <= 1e300`), and a power is checked BEFORE it is computed, so `9**9**9` is refused
in microseconds instead of eating the CPU.
"""

from __future__ import annotations

import ast
import inspect
import math
import operator
from collections.abc import Callable

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from tools.errors import ToolError, ToolRefused
from tools.registry import ToolSpec

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e300
MAX_ARGS = 20

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > 100:
        raise ToolError("round: ndigits must be an integer between -100 and 100")
    return round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    # name: (function, min args, max args)
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (lambda *xs: min(xs), 1, MAX_ARGS),
    "max": (lambda *xs: max(xs), 1, MAX_ARGS),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
}


class CalculatorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expression: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description="Arithmetic expression, e.g. `(3 + 4) * sqrt(2) / 7`.",
    )


def _bounded(value: Number) -> Number:
    if isinstance(value, float) and math.isnan(value):
        raise ToolError("the result is not a number")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolRefused(f"a result exceeds the limit of {MAX_MAGNITUDE:g} in magnitude")
    return value


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolRefused(f"exponents larger than {MAX_EXPONENT} in magnitude are refused")
    # Estimate the size first: a big integer power is computed exactly, and slowly.
    if base not in (0, 1, -1) and exponent > 0:
        magnitude = exponent * math.log10(abs(base))
        if magnitude > math.log10(MAX_MAGNITUDE):
            raise ToolRefused(f"the result would exceed {MAX_MAGNITUDE:g} in magnitude")
    if base == 0 and exponent < 0:
        raise ToolError("zero cannot be raised to a negative power")
    result = base**exponent
    if isinstance(result, complex):
        raise ToolError("a negative number raised to a fractional power is not a real number")
    return result


class _Evaluator:
    def eval(self, node: ast.AST) -> Number:
        match node:
            case ast.Expression(body=body):
                return self.eval(body)
            case ast.Constant(value=value):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ToolRefused(f"only numbers are allowed, not {type(value).__name__}")
                return _bounded(value)
            case ast.BinOp(left=left, op=ast.Pow(), right=right):
                return _bounded(_power(self.eval(left), self.eval(right)))
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
                a, b = self.eval(left), self.eval(right)
                try:
                    return _bounded(_BINARY[type(op)](a, b))
                except ZeroDivisionError:
                    raise ToolError("division by zero") from None
            case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
                return _UNARY[type(op)](self.eval(operand))
            case ast.Name(id=name) if name in _CONSTANTS:
                return _CONSTANTS[name]
            case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
                func, low, high = _FUNCTIONS[name]
                if not low <= len(args) <= high:
                    raise ToolRefused(f"{name}() takes {low}..{high} arguments, got {len(args)}")
                if any(isinstance(a, ast.Starred) for a in args):
                    raise ToolRefused("* arguments are not allowed")
                values = [self.eval(a) for a in args]
                try:
                    return _bounded(func(*values))
                except (ValueError, OverflowError) as exc:
                    raise ToolError(f"{name}(): {exc}") from None
            case ast.Call(func=ast.Name(id=name)) if name in _FUNCTIONS:
                raise ToolRefused(f"{name}() takes positional arguments only")
            case ast.Call(func=ast.Name(id=name)) | ast.Name(id=name):
                raise ToolRefused(
                    f"unknown name {name!r}; allowed functions: {', '.join(_FUNCTIONS)}, "
                    f"constants: {', '.join(_CONSTANTS)}"
                )
        raise ToolRefused(
            f"{type(node).__name__} is not allowed; use numbers, + - * / // % **, "
            "parentheses and the listed functions"
        )


def calculate(expression: str) -> Number:
    """Evaluate an arithmetic expression safely."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolRefused(f"expressions are limited to {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise ToolError(
            f"not a valid expression: {exc.msg if isinstance(exc, SyntaxError) else exc}"
        ) from None
    except (MemoryError, RecursionError):
        raise ToolRefused("the expression is nested too deeply") from None
    try:
        return _Evaluator().eval(tree)
    except RecursionError:
        raise ToolRefused("the expression is nested too deeply") from None
    except OverflowError:
        raise ToolRefused(f"a result exceeds the limit of {MAX_MAGNITUDE:g} in magnitude") from None


def format_number(value: Number) -> str:
    """Render a result: integers exactly, floats with up to 15 significant digits."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.15g}"
    return str(value)


def calculator_tool() -> ToolSpec:
    """Return the `calculator` tool (tier read, idempotent)."""

    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression and return the number.

        Supports + - * / // % **, parentheses, pi, e, tau and sqrt, abs, round, min, max,
        floor, ceil, exp, log, log10, log2, sin, cos, tan.
        """
        return format_number(calculate(expression))

    return ToolSpec(
        tool=StructuredTool.from_function(
            calculator, args_schema=CalculatorArgs, description=inspect.getdoc(calculator)
        ),
        tier="read",
        scopes=frozenset(),
        timeout=5.0,
        idempotent=True,
    )
