"""`act`: run the pending tool calls. Side effects happen here and nowhere else."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import ToolCall, ToolMessage
from langgraph.runtime import Runtime
from pydantic import ValidationError

from graph.context import Context, run_context, running_under
from graph.hitl import first_error
from graph.loops import args_hash, call_fingerprint, push
from graph.routing import call_decision, pending_tool_calls, proposed_loop
from graph.state import ApprovalRecord, State
from nodes.accounting import NodeClock
from tools.errors import ToolError
from tools.registry import ToolRegistry, ToolSpec


def tool_message(
    call: ToolCall, content: str, *, status: str = "success", **meta: Any
) -> ToolMessage:
    """Build the result message for one call, with Warden's metadata beside it."""
    return ToolMessage(
        content=content,
        tool_call_id=call["id"],
        name=call["name"],
        status=status,  # type: ignore[arg-type]
        response_metadata={"warden": meta},
    )


def render_result(result: Any) -> str:
    """Turn a tool's return value into message text."""
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False, default=str)


def latest_decision(state: State, call_id: str) -> ApprovalRecord | None:
    """Return the latest human decision on a tool call, if any."""
    for record in reversed(state.get("approvals") or []):
        if record["tool_call_id"] == call_id:
            return record
    return None


async def execute(spec: ToolSpec, call: ToolCall, args: dict[str, Any], budget_s: float) -> ToolMessage:
    """Validate and run one call within its timeout; expected failures become error results."""
    started = time.perf_counter()
    model = spec.args_model
    if model is not None:
        try:
            model.model_validate(args)
        except ValidationError as exc:
            return tool_message(
                call,
                f"invalid arguments for {spec.name}: {first_error(exc)}. "
                f"Expected schema: {json.dumps(model.model_json_schema())}",
                status="error",
                error="invalid_arguments",
            )
    timeout = max(min(spec.timeout, budget_s), 0.001)
    try:
        result = await asyncio.wait_for(spec.tool.ainvoke(args), timeout=timeout)
    except TimeoutError:
        return tool_message(
            call, f"{spec.name} timed out after {timeout:g}s", status="error", error="timeout"
        )
    except ToolError as exc:
        return tool_message(
            call, f"{spec.name} failed: {exc}", status="error", error=type(exc).__name__
        )
    return tool_message(
        call,
        render_result(result),
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        tier=spec.tier,
    )


def make_act_node(
    tools: ToolRegistry,
) -> Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]:
    """Build the `act` node over a tool registry."""
    tiers = tools.tiers()

    async def act(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        clock = NodeClock()
        ctx = run_context(state, runtime.context)
        batch = pending_tool_calls(state["messages"])
        loop = proposed_loop(state, batch, ctx)
        if loop:
            # First detection: refuse the whole batch once, with a corrective message.
            note = (
                f"Not executed: loop detected ({loop}). Repeating it will not give new "
                "information. Change your approach or give your final answer."
            )
            window = state["loop"]
            return {
                "messages": [tool_message(c, note, status="error", refused="loop") for c in batch],
                "loop": {
                    **window,
                    "calls": push(
                        window["calls"],
                        [call_fingerprint(c["name"], c["args"]) for c in batch],
                        ctx.loop_window,
                    ),
                    "strikes": window["strikes"] + 1,
                    "last": loop,
                },
                "usage": clock.usage(state["usage"]),
            }
        policy = ctx.policy
        results: list[ToolMessage] = []
        counted: dict[str, int] = {}
        for call in batch:
            decision, why = call_decision(call, ctx, tiers, tainted=bool(state.get("tainted")))
            if decision == "deny":
                allowed = sorted(n for n in tiers if policy.decide(n, tiers) != "deny")
                results.append(
                    tool_message(
                        call,
                        f"refused by policy ({why}): this call to {call['name']!r} is not "
                        f"allowed here. Allowed tools: {', '.join(allowed) or 'none'}.",
                        status="error",
                        refused="policy",
                        reason=why,
                    )
                )
                continue
            args = call["args"]
            note = ""
            if decision == "ask":
                record = latest_decision(state, str(call["id"]))
                if record is None or record["decision"] not in ("approve", "edit"):
                    results.append(
                        tool_message(
                            call, "refused: this call needs human approval and has none",
                            status="error", refused="unapproved",
                        )
                    )
                    continue
                if args_hash(record["args"]) != record["args_hash"]:
                    raise RuntimeError(f"approval record for {call['id']} does not match its hash")
                args = record["args"]
                if record["decision"] == "edit":
                    note = f"[a human reviewer edited the arguments before this call ran: {json.dumps(args)}]\n"
            counted[call["name"]] = counted.get(call["name"], 0) + 1
            remaining = ctx.max_seconds - state["usage"]["active_seconds"] - (
                time.perf_counter() - clock.started
            )
            with running_under(ctx):
                message = await execute(tools[call["name"]], call, args, remaining)
            if note:
                message = message.model_copy(update={"content": note + message.text})
            results.append(message)
        return {
            "messages": results,
            "usage": clock.usage(
                state["usage"], tool_calls=sum(counted.values()), tool_calls_by_name=counted
            ),
        }

    return act
