"""`approve`: the only node that interrupts. One HITL request per model turn.

Everything before `interrupt()` is recomputed from state, so re-running the node on
resume asks the same question; the decisions are validated by the response schema
before anything is saved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from graph.context import Context, run_context
from graph.hitl import PendingCall, build_request, response_schema
from graph.loops import args_hash
from graph.routing import call_decision, needs_approval, pending_tool_calls, undecided_doubts
from graph.state import ApprovalRecord, State, StopSignal
from nodes.accounting import NodeClock
from nodes.results import tool_message
from tools.registry import ToolRegistry


def make_approve_node(
    tools: ToolRegistry,
) -> Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]:
    """Build the `approve` node over a tool registry (tiers and argument schemas)."""
    tiers = tools.tiers()
    args_models = tools.args_models()
    schemas = {name: model.model_json_schema() for name, model in args_models.items()}

    async def approve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        ctx = run_context(state, runtime.context)
        batch = pending_tool_calls(state["messages"])
        asking = needs_approval(batch, ctx, tiers, state)
        doubts = undecided_doubts(state)
        turn = next(m for m in reversed(state["messages"]) if isinstance(m, AIMessage))
        pending = [
            PendingCall(
                id=str(c["id"]),
                name=c["name"],
                args=c["args"],
                tier=ctx.policy.tier_of(c["name"], tiers) or "unknown",
                reasoning=turn.text,
                policy_reason=call_decision(
                    c, ctx, tiers, tainted=bool(state.get("tainted"))
                ).reason,
            )
            for c in asking
        ]
        for call in pending:
            if call["id"] in doubts:
                call["in_doubt"] = True
                call["doubt_detail"] = doubts[call["id"]]["detail"]
        # The pause (GraphInterrupt) drops the run's cached history grouping on its way
        # out (nodes.context_window.forgets_history_on_exit wraps every node).
        answer: Any = interrupt(
            build_request(pending, schemas), response_schema=response_schema(pending, args_models)
        )
        clock = NodeClock()
        now = datetime.now(UTC).isoformat()
        records: list[ApprovalRecord] = []
        messages: list[ToolMessage] = []
        rejections = 0
        for call, decision in zip(pending, answer.decisions, strict=True):
            kind = decision.type
            args = decision.edited_action.args if kind == "edit" else call["args"]
            message = getattr(decision, "message", None)
            record = ApprovalRecord(
                tool_call_id=call["id"],
                tool=call["name"],
                decision=kind,
                args=args,
                args_hash=args_hash(args),
                reviewer=answer.reviewer,
                message=message,
                decided_at=now,
            )
            if call.get("in_doubt"):
                record["in_doubt_attempt"] = doubts[call["id"]]["attempt"]
            records.append(record)
            if kind == "reject" and call.get("in_doubt"):
                # Not a refusal of the model's intent: the call may well have run.
                messages.append(
                    tool_message(
                        call,
                        f"Outcome unknown: this call was started earlier but Warden "
                        f"cannot tell whether it took effect, and reviewer "
                        f"{answer.reviewer} decided not to run it again"
                        f"{': ' + message if message else ''}. Do not retry it "
                        "unless asked.",
                        status="error",
                        refused="in_doubt",
                    )
                )
            elif kind == "reject":
                rejections += 1
                messages.append(
                    tool_message(
                        call,
                        f"Rejected by reviewer {answer.reviewer}: "
                        f"{message or 'no reason given'}. The call was not executed; "
                        "do not retry it unless asked.",
                        status="error",
                        refused="rejected",
                    )
                )
            elif kind == "respond":
                messages.append(
                    ToolMessage(
                        content=message,
                        tool_call_id=call["id"],
                        name=call["name"],
                        response_metadata={"warden": {"responded_by": answer.reviewer}},
                    )
                )
        usage, spent = clock.usage(state["usage"], rejections=rejections)
        update: dict[str, Any] = {"approvals": records, "messages": messages, "usage": spent}
        if rejections and usage["rejections"] >= ctx.max_rejections:
            update["stop"] = StopSignal(
                reason="rejected",
                detail=f"{usage['rejections']} tool call(s) rejected in this run "
                f"(limit {ctx.max_rejections})",
            )
        return update

    return approve
