"""`halt`: the single exit. Records why the run ended and writes its report."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.runtime import Runtime

from graph.context import Context, run_context
from graph.routing import diagnose, pending_tool_calls
from graph.state import State
from graph.tracing import mark_halt
from nodes.accounting import NodeClock, run_profile
from tools.registry import ToolRegistry


def make_halt_node(
    tools: ToolRegistry,
) -> Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]:
    """Build the `halt` node; it needs the tool tiers to re-apply the routing rules."""
    tiers = tools.tiers()

    async def halt(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        clock = NodeClock()
        ctx = run_context(state, runtime.context)
        verdict = diagnose(state, ctx, tiers)
        # Answer calls that will never run, so the history stays valid for any provider.
        unanswered = [
            ToolMessage(
                content=f"Not executed: the run halted ({verdict.reason}: {verdict.detail}).",
                tool_call_id=call["id"],
                name=call["name"],
                status="error",
                response_metadata={"warden": {"refused": "halted"}},
            )
            for call in pending_tool_calls(state["messages"])
        ]
        final = None
        if verdict.reason == "completed":
            last = state["messages"][-1]
            final = last.text if isinstance(last, AIMessage) else None
        usage, spent = clock.usage(state.get("usage"))
        report = {
            "halt_reason": verdict.reason,
            "halt_detail": verdict.detail,
            "objective": state.get("objective"),
            "final_answer": final,
            "usage": usage,
            "budgets": ctx.budgets(),
            "warnings": list(state.get("budget_warnings") or []),
            "approvals": len(state.get("approvals") or []),
            "profile": run_profile(usage),
        }
        await mark_halt(report)
        return {
            "messages": unanswered,
            "halt_reason": verdict.reason,
            "halt_detail": verdict.detail,
            "final_answer": final,
            "usage": spent,
            "stop": None,
            "report": report,
        }

    return halt
