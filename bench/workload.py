"""The scripted workload shared by the Warden and stock runs.

One tool, `fetch(i)`, returns `secrets.token_hex(obs_bytes // 2)`: incompressible
observations of `obs_bytes` characters. The scripted model calls it once per turn with
different arguments (`{"i": n}`), so Warden's call-loop detector never fires, then gives
a final answer. Extra final-answer turns follow for the resume benchmark.
"""

from __future__ import annotations

import secrets
from typing import Any

from langchain.agents import create_agent
from langchain_core.tools import BaseTool, StructuredTool

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.scripted import ScriptedChatModel
from tools.registry import ToolSpec

MODEL_NAME = "gpt-4o-mini"  # priced, so Warden's cost budget is exercised
TURN_USAGE = {"input_tokens": 100, "output_tokens": 20}


def make_tool(obs_bytes: int) -> BaseTool:
    """Return the observation tool (async, so concurrent runs do not need threads)."""

    async def fetch(i: int) -> str:
        """Fetch record number i."""
        return secrets.token_hex(obs_bytes // 2)

    return StructuredTool.from_function(
        coroutine=fetch, name="fetch", description="Fetch record i."
    )


def make_model(tool_calls: int, *, extra_turns: int = 0, delay: float = 0.0) -> ScriptedChatModel:
    """`tool_calls` turns that call `fetch({"i": n})`, a final answer, then `extra_turns`."""
    turns: list[dict[str, Any]] = [
        {
            "content": "",
            "tool_calls": [{"name": "fetch", "args": {"i": n}}],
            "usage": TURN_USAGE,
            "delay_seconds": delay,
        }
        for n in range(tool_calls)
    ]
    turns.append({"content": "done", "usage": TURN_USAGE, "delay_seconds": delay})
    turns += [
        {"content": f"continued {k}", "usage": TURN_USAGE, "delay_seconds": delay}
        for k in range(extra_turns)
    ]
    return ScriptedChatModel.from_turns(turns, model=MODEL_NAME)


def warden_context(tool_calls: int, extra_turns: int = 0) -> Context:
    """Budgets wide enough for the workload; every control stays on."""
    steps = tool_calls + extra_turns + 2
    return Context(
        max_steps=min(steps, 1000),
        max_tool_calls=tool_calls + 1,
        max_tokens=10**9,
        max_cost=1000.0,
        max_seconds=3600.0,
        # Random observations never repeat; raised anyway so the window never trips
        # (the window must hold every threshold).
        loop_observation_repeats=20,
        loop_window=20,
    )


def warden_app(model: ScriptedChatModel, tool: BaseTool, checkpointer: Any) -> Any:
    """Warden: the full graph (budgets, loops, approval policy) with `checkpointer`."""
    builder = build_graph(model=model, tools=[ToolSpec(tool=tool, tier="read")])
    return compile_graph(builder, checkpointer)


def stock_app(model: ScriptedChatModel, tool: BaseTool, checkpointer: Any) -> Any:
    """Stock LangChain v1 agent loop."""
    return create_agent(model=model, tools=[tool], checkpointer=checkpointer)


class Runner:
    """Runs one flavour (warden or stock) of the workload on a thread."""

    def __init__(
        self, flavour: str, app: Any, ctx: Context | None, tool_calls: int, durable: bool = True
    ) -> None:
        self.flavour = flavour
        # durability="sync" with no checkpointer crashes LangGraph 1.2 (AsyncPregelLoop has
        # no _put_checkpoint_fut), so it is only passed when there is a checkpointer.
        self.kwargs: dict[str, Any] = {"durability": "sync"} if durable else {}
        self.app = app
        self.ctx = ctx
        self.tool_calls = tool_calls

    def config(self, thread_id: str) -> dict[str, Any]:
        if self.flavour == "warden":
            assert self.ctx is not None
            limit = self.ctx.recursion_limit()
        else:
            limit = 4 * self.tool_calls + 100
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": limit}

    async def start(self, thread_id: str, task: str = "fetch the records") -> Any:
        if self.flavour == "warden":
            payload: Any = {"task": task}
            return await self.app.ainvoke(
                payload, self.config(thread_id), context=self.ctx, **self.kwargs
            )
        payload = {"messages": [{"role": "user", "content": task}]}
        return await self.app.ainvoke(payload, self.config(thread_id), **self.kwargs)

    def check(self, result: Any, expected_calls: int) -> None:
        """Refuse to report numbers from a run that did not do the work."""
        if self.flavour == "warden":
            usage = result.get("usage") or {}
            if (
                result.get("halt_reason") != "completed"
                or usage.get("tool_calls") != expected_calls
            ):
                raise RuntimeError(
                    f"warden run did not complete: halt_reason={result.get('halt_reason')!r} "
                    f"detail={result.get('halt_detail')!r} tool_calls={usage.get('tool_calls')}"
                )
        else:
            msgs = result.get("messages") or []
            calls = sum(1 for m in msgs if getattr(m, "type", "") == "tool")
            if calls < expected_calls:
                raise RuntimeError(f"stock run made {calls} tool calls, expected {expected_calls}")
