"""Routing: every budget and loop rule, as pure functions of state and configuration.

Each router returns the next node; `diagnose` tells `halt` why the run stops, using
the same rules, so a halt reason is never computed two different ways.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

from langchain_core.messages import AIMessage, AnyMessage, ToolCall, ToolMessage

from graph.context import Context
from graph.loops import call_fingerprint, detect_proposed_loop
from graph.policy import CallDecision, Tier
from graph.state import HaltReason, InDoubtRecord, State, Usage, empty_usage


class Verdict(NamedTuple):
    """A reason to halt and its explanation."""

    reason: HaltReason
    detail: str


def pending_tool_calls(messages: Sequence[AnyMessage]) -> list[ToolCall]:
    """Return the latest model turn's tool calls that have no result yet."""
    answered: set[str] = set()
    for message in reversed(messages):
        if isinstance(message, ToolMessage):
            answered.add(message.tool_call_id)
        elif isinstance(message, AIMessage):
            return [c for c in message.tool_calls if c["id"] not in answered]
        else:
            return []
    return []


def before_model(usage: Usage, ctx: Context) -> Verdict | None:
    """Check the budgets that must hold before the next model call.

    Tokens and cost are projected: the next prompt is at least as large as the last
    one, so a call that would cross the limit is not started.
    """
    if usage["model_calls"] >= ctx.max_steps:
        return Verdict("max_steps", f"{usage['model_calls']} of {ctx.max_steps} model calls used")
    used = usage["input_tokens"] + usage["output_tokens"]
    if used + usage.get("last_input_tokens", 0) > ctx.max_tokens or used >= ctx.max_tokens:
        return Verdict(
            "max_tokens",
            f"{used} of {ctx.max_tokens} tokens used; the next call needs about "
            f"{usage.get('last_input_tokens', 0)} more",
        )
    calls = usage["model_calls"]
    projected = usage["cost_usd"] / calls if calls else 0.0
    if usage["cost_usd"] >= ctx.max_cost or usage["cost_usd"] + projected > ctx.max_cost:
        return Verdict(
            "max_cost", f"${usage['cost_usd']:.6f} of ${ctx.max_cost:.6f} spent"
        )
    if usage["active_seconds"] >= ctx.max_seconds:
        return Verdict(
            "max_seconds", f"{usage['active_seconds']:.1f}s of {ctx.max_seconds:.1f}s active time used"
        )
    return None


def call_decision(
    call: ToolCall, ctx: Context, tiers: Mapping[str, Tier], *, tainted: bool = False
) -> CallDecision:
    """Decide one call from its tool, arguments and the run's taint."""
    return ctx.policy.decide_call(call["name"], call["args"], tiers, tainted=tainted)


def before_tools(
    usage: Usage,
    batch: Sequence[ToolCall],
    ctx: Context,
    tiers: Mapping[str, Tier],
    *,
    tainted: bool = False,
) -> Verdict | None:
    """Check the budgets that must hold before a tool batch starts (refused calls don't count)."""
    runnable = [
        c for c in batch if call_decision(c, ctx, tiers, tainted=tainted).decision != "deny"
    ]
    if usage["tool_calls"] + len(runnable) > ctx.max_tool_calls:
        return Verdict(
            "max_tool_calls",
            f"{usage['tool_calls']} of {ctx.max_tool_calls} tool calls used; "
            f"the next batch has {len(runnable)}",
        )
    by_name = usage["tool_calls_by_name"]
    for name, limit in ctx.max_tool_calls_per_tool.items():
        wanted = sum(1 for c in runnable if c["name"] == name)
        if wanted and by_name.get(name, 0) + wanted > limit:
            return Verdict(
                "max_tool_calls",
                f"{by_name.get(name, 0)} of {limit} calls to {name} used; the next batch has {wanted}",
            )
    used = usage["input_tokens"] + usage["output_tokens"]
    if used >= ctx.max_tokens:
        return Verdict("max_tokens", f"{used} of {ctx.max_tokens} tokens used")
    if usage["cost_usd"] >= ctx.max_cost:
        return Verdict("max_cost", f"${usage['cost_usd']:.6f} of ${ctx.max_cost:.6f} spent")
    if usage["active_seconds"] >= ctx.max_seconds:
        return Verdict(
            "max_seconds", f"{usage['active_seconds']:.1f}s of {ctx.max_seconds:.1f}s active time used"
        )
    return None


def proposed_loop(state: State, batch: Sequence[ToolCall], ctx: Context) -> str | None:
    """Describe a loop that the proposed batch would complete, or return None."""
    return detect_proposed_loop(
        state["loop"]["calls"],
        [call_fingerprint(c["name"], c["args"]) for c in batch],
        repeat_threshold=ctx.loop_repeat_threshold,
        cycle_repeats=ctx.loop_cycle_repeats,
    )


def undecided_doubts(state: State) -> dict[str, InDoubtRecord]:
    """Return the in-doubt calls (by id) that no human has decided on for that attempt."""
    decided = {
        (r["tool_call_id"], r["in_doubt_attempt"])
        for r in state.get("approvals") or ()
        if "in_doubt_attempt" in r
    }
    return {
        d["tool_call_id"]: d
        for d in state.get("in_doubt") or ()
        if (d["tool_call_id"], d["attempt"]) not in decided
    }


def needs_approval(
    batch: Sequence[ToolCall], ctx: Context, tiers: Mapping[str, Tier], state: State
) -> list[ToolCall]:
    """Return the calls of the batch that need a human now.

    Those the policy sends to a human and nobody decided yet, and those in doubt after
    a crash (whatever the policy: running them again blindly could repeat an effect).
    """
    decided = {r["tool_call_id"] for r in state.get("approvals") or ()}
    doubts = undecided_doubts(state)
    tainted = bool(state.get("tainted"))
    return [
        c
        for c in batch
        if c["id"] in doubts
        or (
            c["id"] not in decided
            and call_decision(c, ctx, tiers, tainted=tainted).decision == "ask"
        )
    ]


def _usage(state: State) -> Usage:
    return state.get("usage") or empty_usage()


def route_after_plan(
    state: State, ctx: Context, tiers: Mapping[str, Tier]
) -> Literal["act", "approve", "halt"]:
    """Route a model turn: halt on a stop, final answer, loop or budget; else approve or act."""
    if state.get("stop"):
        return "halt"
    batch = pending_tool_calls(state["messages"])
    if not batch:
        return "halt"
    loop = proposed_loop(state, batch, ctx)
    if loop and state["loop"]["strikes"] >= 1:
        return "halt"
    if before_tools(_usage(state), batch, ctx, tiers, tainted=bool(state.get("tainted"))):
        return "halt"
    if loop:
        return "act"  # act refuses the looping batch with one corrective message
    return "approve" if needs_approval(batch, ctx, tiers, state) else "act"


def route_after_approve(state: State, ctx: Context) -> Literal["act", "plan", "halt"]:
    """Route after human decisions: run what was approved, or go back to the model."""
    if state.get("stop"):
        return "halt"
    if pending_tool_calls(state["messages"]):
        return "act"
    return "halt" if before_model(_usage(state), ctx) else "plan"


def route_after_observe(state: State, ctx: Context) -> Literal["plan", "approve", "halt"]:
    """Route after tool results: halt on a stop, a repeated loop or a budget; else plan.

    A call that `act` left in doubt has no result yet: a human decides on it first.
    """
    if state.get("stop"):
        return "halt"
    if state["loop"]["strikes"] > 1:
        return "halt"
    doubts = undecided_doubts(state)
    if any(c["id"] in doubts for c in pending_tool_calls(state["messages"])):
        return "approve"
    return "halt" if before_model(_usage(state), ctx) else "plan"


def diagnose(state: State, ctx: Context, tiers: Mapping[str, Tier]) -> Verdict:
    """Tell why a run reached `halt`, applying the rules the routers applied."""
    stop = state.get("stop")
    if stop:
        return Verdict(stop["reason"], stop["detail"])
    messages = state["messages"]
    usage = _usage(state)
    batch = pending_tool_calls(messages)
    if batch:
        loop = proposed_loop(state, batch, ctx)
        if loop and state["loop"]["strikes"] >= 1:
            return Verdict("loop", f"loop continued after a warning: {loop}")
        verdict = before_tools(usage, batch, ctx, tiers, tainted=bool(state.get("tainted")))
        if verdict:
            return verdict
    elif messages and isinstance(messages[-1], AIMessage):
        return Verdict("completed", "the model gave a final answer")
    if state["loop"]["strikes"] > 1:
        return Verdict("loop", f"loop continued after a warning: {state['loop']['last']}")
    verdict = before_model(usage, ctx)
    if verdict:
        return verdict
    return Verdict("error", "the run reached halt with no reason; this is a bug in Warden")


def soft_warnings(usage: Usage, ctx: Context, recorded: Sequence[str]) -> list[str]:
    """Return new warnings for budgets that passed the soft threshold in this run."""
    levels = {
        "max_steps": (usage["model_calls"], ctx.max_steps),
        "max_tool_calls": (usage["tool_calls"], ctx.max_tool_calls),
        "max_tokens": (usage["input_tokens"] + usage["output_tokens"], ctx.max_tokens),
        "max_cost": (usage["cost_usd"], ctx.max_cost),
        "max_seconds": (usage["active_seconds"], ctx.max_seconds),
    }
    new: list[str] = []
    for name, (used, limit) in levels.items():
        if limit and used >= ctx.soft_threshold * limit:
            if not any(w.startswith(f"{name}:") for w in recorded):
                new.append(f"{name}: {used:g} of {limit:g} used ({used / limit:.0%})")
    return new
