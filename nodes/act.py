"""`act`: run the pending tool calls. Side effects happen here and nowhere else."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import AIMessage, ToolCall, ToolMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime
from pydantic import ValidationError

from checkpoints.db import current_pool
from graph.context import Context, run_context, running_under
from graph.hitl import first_error
from graph.loops import args_hash, call_fingerprint
from graph.routing import call_decision, pending_tool_calls, proposed_loop
from graph.state import ApprovalRecord, InDoubtRecord, LoopUpdate, State
from nodes.accounting import NodeClock
from nodes.exactly_once import run_once
from nodes.results import tool_message
from tools.registry import ToolRegistry, ToolSpec
from tools.resilience import CircuitBreakers, CircuitOpenError, call_resiliently


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


async def execute(
    spec: ToolSpec,
    call: ToolCall,
    args: dict[str, Any],
    budget_s: float,
    breakers: CircuitBreakers | None = None,
) -> ToolMessage:
    """Validate and run one call: timeout, retries for transient failures, circuit breaker.

    Expected failures (a `ToolError`, a declared transient error or timeout once retries
    are spent, an open circuit) become error results the model can act on; the attempts
    made and the breaker's state are recorded in `response_metadata["warden"]`.
    """
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
    outcome = await call_resiliently(
        spec.name,
        lambda: spec.tool.ainvoke(args),
        attempt_timeout=spec.timeout,
        budget_s=budget_s,
        transient=spec.transient,
        retries=spec.retries,
        idempotent=spec.idempotent,
        breakers=breakers if breakers is not None else CircuitBreakers(),
        threshold=spec.breaker_threshold,
        cooldown=spec.breaker_cooldown,
    )
    meta: dict[str, Any] = {
        "attempts": outcome.attempts,
        "breaker": outcome.breaker,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    error = outcome.error
    tries = f" (after {outcome.attempts} attempts)" if outcome.attempts > 1 else ""
    if isinstance(error, CircuitOpenError):
        return tool_message(
            call,
            f"{spec.name} is temporarily unavailable: it kept failing, so Warden is not "
            "calling it for now. Retry later or use another approach.",
            status="error",
            error="unavailable",
            refused="unavailable",
            **meta,
        )
    if isinstance(error, TimeoutError):
        timeout = max(min(spec.timeout, budget_s), 0.001)
        return tool_message(
            call,
            f"{spec.name} timed out after {timeout:g}s{tries}",
            status="error",
            error="timeout",
            **meta,
        )
    if error is not None:
        return tool_message(
            call, f"{spec.name} failed{tries}: {error}", status="error", error=type(error).__name__,
            **meta,
        )
    return tool_message(
        call,
        render_result(outcome.result),
        tier=spec.tier,
        **meta,
    )


def make_act_node(
    tools: ToolRegistry,
) -> Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]:
    """Build the `act` node over a tool registry."""
    tiers = tools.tiers()
    # One circuit per tool for this compiled graph, shared by the runs of this process.
    # In-process state is right here: a breaker is client-side protection of this process
    # against a failing dependency, not run progress. Nothing about a run depends on it;
    # a restart simply starts with closed circuits, which costs at most a few failed
    # attempts before they open again.
    breakers = CircuitBreakers()

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
            return {
                "messages": [tool_message(c, note, status="error", refused="loop") for c in batch],
                "loop": LoopUpdate(
                    calls=[call_fingerprint(c["name"], c["args"]) for c in batch],
                    keep=ctx.loop_window,
                    strikes=state["loop"]["strikes"] + 1,
                    last=loop,
                ),
                "usage": clock.delta(),
            }
        policy = ctx.policy
        results: list[ToolMessage] = []
        doubts: list[InDoubtRecord] = []
        counted: dict[str, int] = {}
        pool = current_pool()
        thread_id = get_config()["configurable"].get("thread_id") if pool else None
        tool_seconds = 0.0
        turn = next(m for m in reversed(state["messages"]) if isinstance(m, AIMessage))
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
            record = latest_decision(state, str(call["id"]))
            if decision == "ask":
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
            remaining = ctx.max_seconds - state["usage"]["active_seconds"] - (
                time.perf_counter() - clock.started
            )
            spec = tools[call["name"]]
            started = time.perf_counter()
            with running_under(ctx):
                outcome = await run_once(
                    pool,
                    thread_id=thread_id,
                    turn_id=str(turn.id),
                    spec=spec,
                    call=call,
                    args=args,
                    approved_attempt=(
                        record.get("in_doubt_attempt")
                        if record is not None and record["decision"] == "approve"
                        else None
                    ),
                    run=lambda: execute(spec, call, args, remaining, breakers),  # noqa: B023
                )
            took = time.perf_counter() - started
            tool_seconds += took
            if not isinstance(outcome, ToolMessage):
                doubts.append(outcome)  # no result yet: `approve` asks a human first
                continue
            message = outcome
            # Every executed call carries its duration (metrics read it), not only successes;
            # a result replayed from the ledger keeps the duration it was stored with.
            message.response_metadata["warden"].setdefault("duration_ms", round(took * 1000, 3))
            if message.response_metadata["warden"].get("refused") is None:
                counted[call["name"]] = counted.get(call["name"], 0) + 1
            if note:
                message = message.model_copy(update={"content": note + message.text})
            results.append(message)
        if doubts:
            # Hold every result back until a human decides on the calls in doubt: those
            # that ran are in the ledger and replay (uncounted until then) on the next pass,
            # so the batch reaches `observe` once, whole.
            return {"in_doubt": doubts, "usage": clock.delta()}
        return {
            "messages": results,
            "usage": clock.delta(
                tool_calls=sum(counted.values()),
                tool_calls_by_name=counted,
                tool_seconds=tool_seconds,
            ),
        }

    return act
