"""Tool resilience through the real graph: retries for transient failures, circuit breaker.

The tools here are real async functions that fail on purpose and count how often they
actually ran; the model is the scripted one; state lives in the real Postgres saver.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool

from graph.builder import build_graph, compile_graph
from graph.context import Context
from tests.conftest import call, turn
from tools.errors import ToolError, TransientToolError
from tools.registry import ToolSpec


def spec(name: str, fn: Callable[..., Any], **settings: Any) -> ToolSpec:
    """A read-tier tool around an async function."""
    return ToolSpec(
        tool=StructuredTool.from_function(coroutine=fn, name=name, description=f"{name} tool"),
        tier="read",
        **settings,
    )


async def run(
    saver: Any, tools: list[ToolSpec], script: Path, *, thread: str | None = None, **ctx: Any
) -> dict[str, Any]:
    app = compile_graph(build_graph(tools=tools), saver)
    return await run_on(app, script, thread=thread, **ctx)


async def run_on(
    app: Any, script: Path, *, thread: str | None = None, **ctx: Any
) -> dict[str, Any]:
    config = {"configurable": {"thread_id": thread or str(uuid.uuid4())}}
    return await app.ainvoke(
        {"task": "use the tool"}, config, context=Context(model=f"scripted:{script}", **ctx)
    )


def results(state: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


def warden_meta(message: ToolMessage) -> dict[str, Any]:
    return message.response_metadata["warden"]


async def test_transient_failures_are_retried_until_success(
    saver: Any, write_script: Callable[..., Path]
) -> None:
    ran: list[float] = []

    async def flaky(item: str) -> str:
        ran.append(time.monotonic())
        if len(ran) <= 2:
            raise TransientToolError("upstream reset the connection")
        return f"fetched {item}"

    script = write_script([turn("", call("flaky", item="a")), turn("done")])
    state = await run(saver, [spec("flaky", flaky, retries=2, idempotent=True)], script)

    assert state["halt_reason"] == "completed"
    assert len(ran) == 3  # two transient failures, then success
    # exponential backoff: ~0.2 s then ~0.4 s (+ jitter up to 0.2 s each)
    assert 0.2 <= ran[1] - ran[0] <= 0.6
    assert 0.4 <= ran[2] - ran[1] <= 0.9
    [message] = results(state)
    assert message.status == "success"
    assert message.text == "fetched a"
    assert warden_meta(message)["attempts"] == 3
    assert warden_meta(message)["breaker"] == "closed"
    assert state["usage"]["tool_calls"] == 1  # one call, however many attempts


async def test_transient_failures_stop_after_the_declared_retries(
    saver: Any, write_script: Callable[..., Path]
) -> None:
    ran: list[int] = []

    async def down(item: str) -> str:
        ran.append(1)
        raise TransientToolError("503 from upstream")

    script = write_script([turn("", call("down", item="a")), turn("gave up")])
    state = await run(saver, [spec("down", down, retries=1, idempotent=True)], script)

    assert state["halt_reason"] == "completed"  # the run goes on; the model got the error
    assert len(ran) == 2
    [message] = results(state)
    assert message.status == "error"
    assert message.text == "down failed (after 2 attempts): 503 from upstream"
    meta = dict(warden_meta(message))
    assert meta.pop("duration_ms") >= 0  # failed calls are timed too (the audit trail shows it)
    assert meta == {
        "error": "TransientToolError",
        "attempts": 2,
        "breaker": "closed",
    }


async def test_non_transient_errors_are_never_retried(
    saver: Any, write_script: Callable[..., Path]
) -> None:
    ran: list[int] = []

    async def strict(item: str) -> str:
        ran.append(1)
        raise ToolError(f"no such item: {item!r}")

    script = write_script([turn("", call("strict", item="zz")), turn("ok")])
    state = await run(saver, [spec("strict", strict, retries=5, idempotent=True)], script)

    assert len(ran) == 1
    [message] = results(state)
    assert message.status == "error"
    assert message.text == "strict failed: no such item: 'zz'"
    assert warden_meta(message)["attempts"] == 1
    assert warden_meta(message)["breaker"] == "closed"


async def test_a_timeout_is_retried_for_idempotent_tools_only(
    saver: Any, write_script: Callable[..., Path]
) -> None:
    ran: dict[str, int] = {"lookup": 0, "charge": 0}

    def slow_first(name: str) -> Callable[..., Any]:
        async def tool(item: str) -> str:
            ran[name] += 1
            if ran[name] == 1:
                await asyncio.sleep(5)
            return f"{name} {item}"

        return tool

    tools = [
        spec("lookup", slow_first("lookup"), timeout=0.2, idempotent=True),
        # Not idempotent: a timed-out attempt may already have charged the card.
        spec("charge", slow_first("charge"), timeout=0.2, idempotent=False),
    ]
    script = write_script(
        [turn("", call("lookup", item="a")), turn("", call("charge", item="b")), turn("done")]
    )
    started = time.monotonic()
    state = await run(saver, tools, script)

    assert time.monotonic() - started < 3  # nobody waited for the 5 s sleeps
    assert ran == {"lookup": 2, "charge": 1}
    lookup, charge = results(state)
    assert (lookup.status, lookup.text, warden_meta(lookup)["attempts"]) == (
        "success",
        "lookup a",
        2,
    )
    assert (charge.status, charge.text) == ("error", "charge timed out after 0.2s")
    assert warden_meta(charge)["attempts"] == 1
    assert warden_meta(charge)["error"] == "timeout"


async def test_retries_stop_at_the_run_time_budget(
    saver: Any, write_script: Callable[..., Path]
) -> None:
    ran: list[int] = []

    async def down(item: str) -> str:
        ran.append(1)
        raise TransientToolError("still down")

    script = write_script([turn("", call("down", item="a")), turn("done")])
    started = time.monotonic()
    # Ten retries would back off for minutes; the 1 s budget allows three attempts
    # (waits of ~0.2 s and ~0.4 s; the next, ~0.8 s, would pass it).
    state = await run(
        saver,
        [spec("down", down, retries=10, idempotent=True, breaker_threshold=50)],
        script,
        max_seconds=1.0,
    )
    # Minutes, not seconds, had the budget not stopped the backoff; the attempt count is
    # the exact check (a bound near 1 s would also time compiling and checkpoint writes).
    assert time.monotonic() - started < 5
    assert 2 <= len(ran) <= 3
    [message] = results(state)
    assert message.status == "error"
    assert warden_meta(message)["attempts"] == len(ran)
    assert message.text == f"down failed (after {len(ran)} attempts): still down"


def breaker_tool(ran: list[int], *, heal_after: int | None) -> Callable[..., Any]:
    """A tool that fails transiently until it has run `heal_after` times."""

    async def backend(n: int) -> str:
        ran.append(n)
        if heal_after is None or len(ran) <= heal_after:
            raise TransientToolError(f"backend down (call {n})")
        return f"backend ok (call {n})"

    return backend


async def test_breaker_opens_answers_without_calling_and_closes_after_a_good_trial(
    saver: Any, write_script: Callable[..., Path]
) -> None:
    ran: list[int] = []
    tools = [
        spec(
            "backend",
            breaker_tool(ran, heal_after=3),
            retries=0,
            breaker_threshold=3,
            breaker_cooldown=1.0,
        )
    ]
    script = write_script(
        [
            turn("", call("backend", n=1)),
            turn("", call("backend", n=2)),
            turn("", call("backend", n=3)),  # third failure in a row: the circuit opens
            turn("", call("backend", n=4)),  # open: answered without calling the tool
            # after the cooldown the circuit half-opens: one trial call goes through
            {**turn("", call("backend", n=5)), "delay_seconds": 1.1},
            turn("", call("backend", n=6)),  # closed again: a normal call
            turn("done"),
        ]
    )
    state = await run(saver, tools, script)

    assert state["halt_reason"] == "completed"
    assert ran == [1, 2, 3, 5, 6]  # call 4 never reached the tool
    messages = results(state)
    assert [m.status for m in messages] == ["error"] * 4 + ["success"] * 2
    assert [warden_meta(m)["breaker"] for m in messages] == [
        "closed",
        "closed",
        "open",
        "open",
        "closed",
        "closed",
    ]
    assert [warden_meta(m)["attempts"] for m in messages] == [1, 1, 1, 0, 1, 1]
    refused = messages[3]
    assert refused.text == (
        "backend is temporarily unavailable: it kept failing, so Warden is not calling it "
        "for now. Retry later or use another approach."
    )
    assert warden_meta(refused)["error"] == "unavailable"
    assert messages[4].text == "backend ok (call 5)"
    # The refused call did not count as a tool call.
    assert state["usage"]["tool_calls_by_name"] == {"backend": 5}


async def test_breaker_is_shared_by_runs_and_a_failed_trial_reopens_it(
    saver: Any, write_script: Callable[..., Path]
) -> None:
    ran: list[int] = []
    tools = [
        spec(
            "backend",
            breaker_tool(ran, heal_after=None),
            retries=3,
            idempotent=True,
            breaker_threshold=2,
            breaker_cooldown=1.0,
        )
    ]
    app = compile_graph(build_graph(tools=tools), saver)
    # Run 1: one call, retried: the second failed attempt opens the circuit, which ends
    # the retries (attempts 3 and 4 never run).
    first = await run_on(app, write_script([turn("", call("backend", n=1)), turn("down")]))
    assert ran == [1, 1]
    [message] = results(first)
    assert warden_meta(message)["attempts"] == 2
    assert warden_meta(message)["breaker"] == "open"
    assert message.text == "backend failed (after 2 attempts): backend down (call 1)"

    # Run 2, another thread on the same graph: the circuit is still open, so the tool
    # is not called; after the cooldown one trial runs, fails, and reopens it.
    script = write_script(
        [
            turn("", call("backend", n=2)),
            {**turn("", call("backend", n=3)), "delay_seconds": 1.1},
            turn("", call("backend", n=4)),
            turn("giving up"),
        ],
        name="second.json",
    )
    second = await run_on(app, script)
    assert second["halt_reason"] == "completed"
    assert ran == [1, 1, 3]  # n=2 and n=4 were answered by the open circuit
    messages = results(second)
    assert [warden_meta(m)["attempts"] for m in messages] == [0, 1, 0]
    assert [warden_meta(m)["breaker"] for m in messages] == ["open", "open", "open"]
    assert [warden_meta(m)["error"] for m in messages] == [
        "unavailable",
        "TransientToolError",
        "unavailable",
    ]
    assert second["usage"]["tool_calls_by_name"] == {"backend": 1}
