"""The audit trail: derive events from each node's state update and append them to the chain.

One place instead of a call in every node: `audited(name, node, tiers)` wraps a node
and, after it returns, turns what it wrote into audit events —

- `plan`: `run_started` (a new run: task, model, budgets, policy profile, tenant),
  `model_call` (the model's stated reasoning, tool calls, tokens and cost of this call),
  `tool_requested` (raw arguments) and `policy_decision` for each requested call;
- `approve`: `approval_requested` (when it interrupts) and `approval_decision`
  (reviewer, decision, edits) when it resumes;
- `act`: `tool_validated` (the arguments the call ran with, after approval edits) and
  `tool_result` (status, duration, attempts, SHA-256 of the raw result, a redacted preview);
- any node: `injection_flag`, `budget_warning`, `loop_detected`;
- `halt`: `halt` (reason, detail, final answer, usage).

Every payload is redacted with the run's `Context.redact` kinds before it is written
(except identifiers and hashes), then appended to the thread's hash chain
(`checkpoints.audit_store`). Events go to the database the run's checkpoints use
(`checkpoints.db.current_pool()`); a graph run without Warden's saver (InMemorySaver
tests, the no-checkpointer benchmark) has no audit trail and runs on silently.

A node that runs again after a crash writes its events again: that is what happened,
and the chain stays intact because each batch links to the head it finds under the
thread's lock. If the audit write fails, the node fails with it: a step that cannot be
recorded does not count as done. Events are written after the node returns, so a
process killed while a tool runs leaves the tool call recorded only once it is retried.

`audited` composes with other node wrappers: it takes and returns an
`async (state, runtime) -> update` callable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.config import get_config
from langgraph.errors import GraphInterrupt
from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from checkpoints.audit_store import append_events
from checkpoints.db import current_pool
from graph.context import Context, context_from_json, run_context
from graph.policy import Tier
from graph.redaction import redact_obj
from graph.routing import call_decision, pending_tool_calls
from graph.state import State, usage_spent
from nodes.act import latest_decision

Node = Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]
Event = tuple[str, dict[str, Any]]

PREVIEW_CHARS = 2000
"""How much of a tool result (redacted) an event keeps beside its hash."""

SKIP_FIELDS = ("tool_call_id", "sha256", "decided_at")
"""Identifiers, hashes and timestamps: never secrets, and look-alikes of numbers."""

USAGE_FIELDS = ("input_tokens", "output_tokens", "cost_usd")


def _listed(value: Any) -> list[Any]:
    """Return the items of a list-valued update (a new run's warnings come as Overwrite)."""
    if isinstance(value, Overwrite):
        value = value.value
    return list(value or [])


def run_events(update: Mapping[str, Any], ctx: Context) -> list[Event]:
    """Return `run_started` when this update starts a run."""
    if "run_context" not in update:
        return []
    return [
        (
            "run_started",
            {
                "task": update.get("objective"),
                "model": ctx.model,
                "budgets": ctx.budgets(),
                "profile": ctx.profile,
                "tenant": ctx.tenant,
                "policy": {
                    "ask_tiers": list(ctx.ask_tiers),
                    "deny_tiers": list(ctx.deny_tiers),
                    "allowed_tools": None if ctx.allowed_tools is None else list(ctx.allowed_tools),
                },
                "redact": list(ctx.redact),
            },
        )
    ]


def model_events(
    state: Mapping[str, Any], update: Mapping[str, Any], ctx: Context, tiers: Mapping[str, Tier]
) -> list[Event]:
    """Return `model_call`, then `tool_requested` and `policy_decision` per requested call."""
    turn = next((m for m in _listed(update.get("messages")) if isinstance(m, AIMessage)), None)
    if turn is None:
        return []
    spent = usage_spent(update.get("usage"))
    delta = {k: spent.get(k, 0) for k in USAGE_FIELDS}
    events: list[Event] = [
        (
            "model_call",
            {
                "model": turn.response_metadata.get("model_name") or ctx.model,
                "text": turn.text,
                "tool_calls": [
                    {"tool_call_id": c["id"], "name": c["name"], "args": c["args"]}
                    for c in turn.tool_calls
                ],
                "invalid_tool_calls": [dict(c) for c in turn.invalid_tool_calls],
                **delta,
            },
        )
    ]
    tainted = bool(update.get("tainted", state.get("tainted")))
    for call in turn.tool_calls:
        events.append(
            ("tool_requested", {"tool_call_id": call["id"], "name": call["name"], "args": call["args"]})
        )
    for call in turn.tool_calls:
        decision, reason = call_decision(call, ctx, tiers, tainted=tainted)
        events.append(
            (
                "policy_decision",
                {
                    "tool_call_id": call["id"],
                    "name": call["name"],
                    "decision": decision,
                    "reason": reason,
                    "tier": ctx.policy.tier_of(call["name"], tiers),
                    "tainted": tainted,
                },
            )
        )
    return events


def approval_request_events(interrupt: GraphInterrupt) -> list[Event]:
    """Return one `approval_requested` per call put to a human by an interrupt."""
    events: list[Event] = []
    for pending in interrupt.args[0] if interrupt.args else ():
        request = getattr(pending, "value", None)
        if not isinstance(request, Mapping):
            continue
        ids = list(request.get("tool_call_ids") or [])
        tiers = list(request.get("tiers") or [])
        configs = list(request.get("review_configs") or [])
        for i, action in enumerate(request.get("action_requests") or []):
            events.append(
                (
                    "approval_requested",
                    {
                        "tool_call_id": ids[i] if i < len(ids) else None,
                        "name": action.get("name"),
                        "args": action.get("args"),
                        "tier": tiers[i] if i < len(tiers) else None,
                        "description": action.get("description"),
                        "allowed_decisions": (configs[i] if i < len(configs) else {}).get(
                            "allowed_decisions"
                        ),
                    },
                )
            )
    return events


def approval_decision_events(state: Mapping[str, Any], update: Mapping[str, Any]) -> list[Event]:
    """Return one `approval_decision` per human decision in the update, with any edits."""
    requested = {c["id"]: c["args"] for c in pending_tool_calls(state.get("messages") or [])}
    events: list[Event] = []
    for record in _listed(update.get("approvals")):
        payload: dict[str, Any] = {
            "tool_call_id": record["tool_call_id"],
            "name": record["tool"],
            "decision": record["decision"],
            "reviewer": record["reviewer"],
            "message": record.get("message"),
            "decided_at": record.get("decided_at"),
        }
        if record["decision"] == "edit":
            payload["edits"] = {
                "from": requested.get(record["tool_call_id"]),
                "to": record["args"],
            }
        events.append(("approval_decision", payload))
    return events


def tool_events(state: State, update: Mapping[str, Any]) -> list[Event]:
    """Return `tool_validated` (args as executed) and `tool_result` for each call `act` answered."""
    calls = {c["id"]: c for c in pending_tool_calls(state.get("messages") or [])}
    events: list[Event] = []
    for message in _listed(update.get("messages")):
        if not isinstance(message, ToolMessage):
            continue
        meta: dict[str, Any] = dict(message.response_metadata.get("warden") or {})
        call = calls.get(message.tool_call_id)
        ran = not meta.get("refused") and meta.get("error") != "invalid_arguments"
        if ran and call is not None:
            record = latest_decision(state, message.tool_call_id)
            approved = record is not None and record["decision"] in ("approve", "edit")
            events.append(
                (
                    "tool_validated",
                    {
                        "tool_call_id": message.tool_call_id,
                        "name": message.name,
                        "args": record["args"] if approved and record else call["args"],
                        "approved_by": record["reviewer"] if approved and record else None,
                    },
                )
            )
        raw = message.text
        events.append(
            (
                "tool_result",
                {
                    "tool_call_id": message.tool_call_id,
                    "name": message.name,
                    "status": "refused" if meta.get("refused") else message.status,
                    "refused": meta.get("refused"),
                    "error": meta.get("error"),
                    "duration_ms": meta.get("duration_ms"),
                    "attempts": meta.get("attempts"),
                    "sha256": hashlib.sha256(raw.encode()).hexdigest(),
                    "chars": len(raw),
                    "preview": raw[:PREVIEW_CHARS],
                },
            )
        )
    return events


def common_events(state: Mapping[str, Any], update: Mapping[str, Any]) -> list[Event]:
    """Return the events any node can cause: loop detections, injection flags, warnings."""
    events: list[Event] = []
    loop, before = update.get("loop"), state.get("loop") or {}
    # A new run's reset comes as `Overwrite` and never adds a strike.
    if isinstance(loop, Mapping) and loop.get("strikes", 0) > before.get("strikes", 0):
        events.append(("loop_detected", {"detail": loop.get("last"), "strikes": loop["strikes"]}))
    events += [("injection_flag", dict(flag)) for flag in _listed(update.get("flags"))]
    events += [("budget_warning", {"warning": w}) for w in _listed(update.get("budget_warnings"))]
    return events


def halt_events(update: Mapping[str, Any]) -> list[Event]:
    """Return `halt` when the update ends the run."""
    if update.get("halt_reason") is None:
        return []
    return [
        (
            "halt",
            {
                "reason": update["halt_reason"],
                "detail": update.get("halt_detail"),
                "final_answer": update.get("final_answer"),
                # The counters as the run ended (the channel write is a delta).
                "usage": (update.get("report") or {}).get("usage"),
            },
        )
    ]


def derive_events(
    node: str, state: State, update: Mapping[str, Any], ctx: Context, tiers: Mapping[str, Tier]
) -> list[Event]:
    """Return the audit events a node's update stands for, in the order they happened."""
    events = run_events(update, ctx) if node == "plan" else []
    if node == "plan":
        events += model_events(state, update, ctx, tiers)
    elif node == "approve":
        events += approval_decision_events(state, update)
    elif node == "act":
        events += tool_events(state, update)
    events += common_events(state, update)
    if node == "halt":
        events += halt_events(update)
    return events


async def record(node: str, run_id: str, events: list[Event], ctx: Context) -> None:
    """Redact the events with the run's kinds and append them to the thread's chain.

    Nothing is written without a Postgres-backed checkpointer or a thread id.
    """
    pool = current_pool()
    thread_id = (get_config().get("configurable") or {}).get("thread_id") if pool else None
    if pool is None or thread_id is None or not events:
        return
    await append_events(
        pool,
        thread_id=str(thread_id),
        run_id=run_id,
        node=node,
        events=[(kind, redact_obj(payload, ctx.redact, SKIP_FIELDS)) for kind, payload in events],
    )


def audited(name: str, node: Node, tiers: Mapping[str, Tier]) -> Node:
    """Wrap a node so that what it does is appended to the thread's audit chain.

    `tiers` are the registry's tool tiers, which the policy decisions are computed with
    (the same rule the router applies after `plan`).
    """

    async def audited_node(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        try:
            update = await node(state, runtime)
        except GraphInterrupt as interrupt:
            ctx = run_context(state, runtime.context)
            await record(name, state.get("run_id") or "", approval_request_events(interrupt), ctx)
            raise
        ctx = (
            context_from_json(update["run_context"])
            if update.get("run_context")
            else run_context(state, runtime.context)
        )
        run_id = update.get("run_id") or state.get("run_id") or ""
        await record(name, run_id, derive_events(name, state, update, ctx, tiers), ctx)
        return update

    audited_node.__name__ = audited_node.__qualname__ = name
    return audited_node
