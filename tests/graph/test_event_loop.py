"""What a run does off the event loop: only its prompt assembly, once per model call.

Every hop to a worker thread costs a thread wake-up and a GIL hand-off; on the 2-core
bench machine, 44 hops per 10-call run were about a third of the graph's CPU time
(issue #6). LangGraph runs a sync router or runnable in a worker thread, so Warden's
routers and the halt node's trace span are async; prompt assembly is the one deliberate
hop (CPU work over the whole history, and the tokenizer's first load), made once per
`plan` step. The tools here are async, so any other hop is Warden's own.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.tools import StructuredTool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.registry import ToolSpec


def innermost(func: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """Name the function a hop runs, through to_thread's and LangChain's partials."""
    while isinstance(func, functools.partial):
        func, args = func.func, (*func.args, *args)
    if getattr(func, "__qualname__", "") == "Context.run" and args:
        return innermost(args[0], args[1:])
    return str(getattr(func, "__qualname__", repr(func)))


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record, by function name, every call this test's event loop sends to a thread."""
    seen: list[str] = []
    real = asyncio.BaseEventLoop.run_in_executor

    def recording(self: asyncio.BaseEventLoop, executor: Any, func: Any, *args: Any) -> Any:
        seen.append(innermost(func, args))
        return real(self, executor, func, *args)

    monkeypatch.setattr(asyncio.BaseEventLoop, "run_in_executor", recording)
    return seen


def tools() -> list[ToolSpec]:
    async def fetch(i: int) -> str:
        """Fetch record i."""
        return f"record {i}"

    async def wire(amount: int) -> str:
        """Wire money (irreversible: asks for approval)."""
        return f"wired {amount}"

    return [
        ToolSpec(tool=StructuredTool.from_function(coroutine=fetch, name="fetch", description="Fetch."), tier="read"),
        ToolSpec(tool=StructuredTool.from_function(coroutine=wire, name="wire", description="Wire."), tier="irreversible"),
    ]


async def test_a_run_leaves_the_event_loop_only_to_assemble_each_prompt(hops: list[str]) -> None:
    # plan -> act -> observe twice, plan -> approve (pause), resume: act -> observe, plan -> halt.
    model = ScriptedChatModel.from_turns(
        [
            turn("", call("fetch", i=0)),
            turn("", call("fetch", i=1)),
            turn("", call("wire", amount=5)),
            turn("done"),
        ]
    )
    app = compile_graph(build_graph(model=model, tools=tools()), InMemorySaver())
    cfg: Any = {"configurable": {"thread_id": f"hops-{uuid.uuid4().hex[:8]}"}}
    paused = await app.ainvoke({"task": "fetch two records, then wire 5"}, cfg, context=Context())
    assert paused.get("__interrupt__"), paused
    result = await app.ainvoke(
        Command(resume={"decisions": [{"type": "approve"}], "reviewer": "alice"}), cfg, context=Context()
    )
    assert result["halt_reason"] == "completed", result.get("halt_detail")
    assert result["usage"]["model_calls"] == 4
    # Every router (after plan, approve and observe) and the halt node ran on the loop.
    assert hops == ["build_prompt.<locals>.build_and_assemble"] * 4
