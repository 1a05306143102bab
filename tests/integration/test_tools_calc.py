"""The calculator: real arithmetic, and no way to reach Python through it."""

from __future__ import annotations

import time

import pytest
from langchain_core.messages import ToolCall

from nodes.act import execute
from tools.calc import calculator_tool
from tools.errors import ToolError, ToolRefused

SPEC = calculator_tool()


async def calc(expression: str) -> str:
    return await SPEC.tool.ainvoke({"expression": expression})


def test_spec_is_read_and_idempotent() -> None:
    assert SPEC.name == "calculator"
    assert SPEC.tier == "read"
    assert SPEC.idempotent is True
    assert "sqrt" in SPEC.tool.description


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("2 ** 10", "1024"),
        ("2 ** -2", "0.25"),
        ("-(3 - 5)", "2"),
        ("sqrt(16) + abs(-2)", "6"),
        ("round(2.5678, 2)", "2.57"),
        ("min(4, 2, 8) + max(1, 9)", "11"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("log(8, 2)", "3"),
        ("round(pi, 5)", "3.14159"),
        ("0.1 + 0.2", "0.3"),
        ("10 ** 300", "1" + "0" * 300),
    ],
)
async def test_arithmetic(expression: str, expected: str) -> None:
    assert await calc(expression) == expected


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('echo pwned')", "Call is not allowed"),
        ("__import__('os')", "unknown name '__import__'"),
        ("(1).__class__.__bases__", "Attribute is not allowed"),
        ("pi.real", "Attribute is not allowed"),
        ("(lambda: 1)()", "Call is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("open('/etc/passwd')", "unknown name 'open'"),
        ("sqrt(x=4)", "positional arguments only"),
        ("[1] * 3", "List is not allowed"),
        ("'a' * 3", "only numbers are allowed, not str"),
        ("True + 1", "only numbers are allowed, not bool"),
        ("1j * 2", "only numbers are allowed, not complex"),
        ("[x for x in (1, 2)]", "ListComp is not allowed"),
        ("1 if 1 else 2", "IfExp is not allowed"),
        ("1 < 2", "Compare is not allowed"),
        ("~1", "UnaryOp is not allowed"),
        ("9**9**9", "exponents larger than 1000"),
        ("2 ** 5000", "exponents larger than 1000"),
        ("10 ** 301", "would exceed 1e+300"),
        ("10 ** 300 * 10", "exceeds the limit of 1e+300"),
        ("1e308", "exceeds the limit"),
        ("1e200 * 1e200", "exceeds the limit"),
        ("9" * 400, "exceeds the limit"),
    ],
)
async def test_refusals(expression: str, reason: str) -> None:
    with pytest.raises(ToolRefused) as err:
        await calc(expression)
    assert reason in str(err.value)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("sqrt(-1)", "sqrt(): math domain error"),
        ("exp(1000)", "exp(): math range error"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "not a valid expression"),
        ("import os", "not a valid expression"),
    ],
)
async def test_math_errors_are_tool_errors(expression: str, reason: str) -> None:
    with pytest.raises(ToolError) as err:
        await calc(expression)
    assert reason in str(err.value)


async def test_hostile_inputs_finish_fast() -> None:
    """Exponent towers and deep nesting are refused before they cost anything."""
    started = time.perf_counter()
    for expression in (
        "9**9**9**9",
        "2**2**2**2**2**2",
        "(" * 120 + "1" + ")" * 120,
        "-" * 480 + "1",
    ):
        try:
            await calc(expression)
        except ToolError:
            pass
    assert time.perf_counter() - started < 1.0
    assert await calc("-" * 480 + "1") == "1"


async def test_through_act_bounds_and_unknown_arguments() -> None:
    call = ToolCall(name="calculator", args={}, id="c1")
    too_long = await execute(SPEC, call, {"expression": "1+" * 300 + "1"}, 10)
    assert too_long.status == "error"
    assert too_long.response_metadata["warden"]["error"] == "invalid_arguments"
    assert "500" in too_long.text
    extra = await execute(SPEC, call, {"expression": "1", "mode": "python"}, 10)
    assert extra.response_metadata["warden"]["error"] == "invalid_arguments"
    refused = await execute(SPEC, call, {"expression": "__import__('os')"}, 10)
    assert refused.status == "error"
    assert refused.text.startswith("calculator failed: unknown name '__import__'")
    ok = await execute(SPEC, call, {"expression": "6 * 7"}, 10)
    assert (ok.status, ok.text) == ("success", "42")
