"""`observe`: fold tool results into loop history and usage, and warn the model once."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.runtime import Runtime

from graph.context import Context, run_context
from graph.injection import flag_record, scan
from graph.loops import call_fingerprint, fingerprint, push, repeated
from graph.routing import pending_tool_calls, soft_warnings, undecided_doubts
from graph.state import LoopState, LoopUpdate, State
from nodes.accounting import NodeClock
from nodes.plan import WARDEN_NAME
from tools.memory import memory_write_flags


def latest_batch(state: State) -> tuple[AIMessage | None, list[ToolMessage]]:
    """Return the latest model turn and the tool results that followed it."""
    results: list[ToolMessage] = []
    for message in reversed(state["messages"]):
        if isinstance(message, ToolMessage):
            results.append(message)
        elif isinstance(message, AIMessage):
            return message, results[::-1]
        else:
            break
    return None, results[::-1]


def screen_results(results: list[ToolMessage], nonce: str | None, ctx: Context) -> list[dict[str, Any]]:
    """Run the injection detector over tool results; return one flag record per finding.

    Warden's own refusals and a human reviewer's answers carry no outside data and are
    not scanned.
    """
    flags: list[dict[str, Any]] = []
    for result in results:
        meta = result.response_metadata.get("warden") or {}
        if meta.get("refused") or meta.get("responded_by"):
            continue
        for finding in scan(result.text, nonce=nonce):
            flags.append(
                flag_record(
                    finding,
                    source="tool",
                    tool=result.name,
                    tool_call_id=result.tool_call_id,
                    redact_kinds=ctx.redact,
                )
            )
    return flags


def _push_checked(window: list[str], items: list[str], size: int, threshold: int) -> tuple[list[str], bool]:
    """Push items one by one, telling whether any of them completed a repetition."""
    hit = False
    for item in items:
        window = push(window, [item], size)
        hit = hit or repeated(window, threshold)
    return window, hit


async def observe(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Update loop windows from the latest results; on a new loop, warn once."""
    clock = NodeClock()
    ctx = run_context(state, runtime.context)
    doubts = undecided_doubts(state)
    if any(c["id"] in doubts for c in pending_tool_calls(state["messages"])):
        # `act` held the batch back for a human decision on a call in doubt; the batch
        # is observed once, after it has run.
        return {"usage": clock.delta()}
    turn, results = latest_batch(state)
    loop: LoopState = dict(state["loop"])  # type: ignore[assignment]
    # What this node appends to the loop windows; the channel keeps the whole windows.
    added = LoopUpdate()
    update: dict[str, Any] = {}
    refused_for_loop = any(
        r.response_metadata.get("warden", {}).get("refused") == "loop" for r in results
    )
    if turn is not None and not refused_for_loop:
        answered = {r.tool_call_id for r in results}
        calls = [call_fingerprint(c["name"], c["args"]) for c in turn.tool_calls if c["id"] in answered]
        errors = [fingerprint("error", r.name, r.text) for r in results if r.status == "error"]
        seen = [fingerprint("observation", r.name, r.text) for r in results if r.status != "error"]
        loop["calls"] = push(loop["calls"], calls, ctx.loop_window)
        loop["errors"], error_loop = _push_checked(
            loop["errors"], errors, ctx.loop_window, ctx.loop_error_repeats
        )
        loop["observations"], same_loop = _push_checked(
            loop["observations"], seen, ctx.loop_window, ctx.loop_observation_repeats
        )
        pushed = {"calls": calls, "errors": errors, "observations": seen}
        added = LoopUpdate(**{k: v for k, v in pushed.items() if v})  # type: ignore[typeddict-item]
        if added:
            added["keep"] = ctx.loop_window
        found = (
            "the same tool error repeated" if error_loop
            else "the same tool result repeated with no new information" if same_loop
            else None
        )
        if found:
            loop["strikes"] += 1
            loop["last"] = found
            added |= {"strikes": loop["strikes"], "last": found}
            if loop["strikes"] == 1:
                update["messages"] = [
                    HumanMessage(
                        name=WARDEN_NAME,
                        content=(
                            f"[warden] Loop detected: {found}. Do not repeat it; change your "
                            "approach or give your final answer."
                        ),
                    )
                ]
    flags = screen_results(results, state.get("data_nonce"), ctx)
    flags += memory_write_flags(turn, results, ctx.redact)
    if flags:
        # Once a run has seen instruction-like data it stays tainted (plan clears it
        # at the next run): routing then sends every side-effecting call to a human.
        update |= {"tainted": True, "flags": flags}
    usage, spent = clock.usage(state["usage"])
    if added:
        update["loop"] = added
    # Channels are written only when they change: every write is stored.
    if warnings := soft_warnings(usage, ctx, state.get("budget_warnings") or []):
        update["budget_warnings"] = warnings
    return update | {"usage": spent}
