"""Operator control over stored threads: inject an instruction, fork from a checkpoint.

Both work on any thread in Warden's database, whoever started it, and take the
thread's lock, so they never race a process that is running it.

What `inject` does depends on where the thread stands:

- ended (completed, halted, error): a follow-up run on the thread with the
  instruction as its task, under the thread's stored Context (like `warden run
  --thread-id`, but attributed to the sender);
- awaiting approval: the pending calls are answered "not executed: operator
  injected an instruction" (no approval is recorded) and the model re-plans with the
  instruction as the latest human message; the run's budgets go on;
- stopped mid-way: work already decided (an approved batch) finishes first, up to the
  next model turn or approval, then the same as above.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.runnables.config import patch_config
from langgraph._internal._constants import CONFIG_KEY_RUNTIME
from langgraph.runtime import Runtime
from langgraph.types import Command

from checkpoints.fork import copy_thread_until
from checkpoints.locks import thread_lock
from graph.context import context_to_json
from graph.errors import BadInput
from graph.routing import pending_tool_calls
from graph.runtime import RunOutcome, Warden

INJECTED = "operator_injected"
# Nodes at which an instruction can join the conversation: before the next model turn,
# or in place of an approval.
BOUNDARIES = ["plan", "approve"]


def injected_message(text: str, sender: str) -> HumanMessage:
    """Return the operator's instruction as a human message recording who sent it."""
    meta = {"injected_by": sender, "injected_at": datetime.now(UTC).isoformat()}
    return HumanMessage(content=text, response_metadata={"warden": meta})


async def inject(warden: Warden, thread_id: str, text: str, *, sender: str) -> RunOutcome:
    """Add an operator's instruction to a thread and continue it (see the module doc)."""
    if not text.strip():
        raise BadInput("the instruction is empty")
    async with thread_lock(warden.pool, thread_id):
        ctx, setup, snapshot = await warden._load(thread_id)
        if len(text) > ctx.max_task_chars:
            raise BadInput(
                f"instruction is {len(text)} characters; the limit is {ctx.max_task_chars}"
            )
        graph = warden.graph(*setup)
        config = warden.config(thread_id, ctx)
        message = injected_message(text, sender)
        status = warden._outcome(thread_id, snapshot, ctx).status
        if status == "in_progress" and (not snapshot.next or snapshot.next[0] not in BOUNDARIES):
            await graph.ainvoke(
                None, config, context=ctx, interrupt_before=BOUNDARIES, durability="sync"
            )
            snapshot = await graph.aget_state(config)
            status = warden._outcome(thread_id, snapshot, ctx).status
        if status not in ("awaiting_approval", "in_progress"):
            return await warden._drive(thread_id, ctx, setup, {"messages": [message]})
        pending = snapshot.interrupts[0].value if snapshot.interrupts else {}
        if any(pending.get("in_doubt") or ()):
            # "Not executed" would be a guess for a call that may have taken effect.
            raise BadInput(
                f"thread {thread_id} has a call in doubt after a crash; decide it with "
                f"`warden resume {thread_id}` first"
            )
        if snapshot.next and snapshot.next[0] == "plan":
            return await warden._drive(
                thread_id, ctx, setup, Command(update={"messages": [message]})
            )
        refused = [
            ToolMessage(
                content=(
                    f"Not executed: operator {sender} injected an instruction instead of "
                    "deciding this call; follow the next message."
                ),
                tool_call_id=call["id"],
                name=call["name"],
                status="error",
                response_metadata={"warden": {"refused": INJECTED}},
            )
            for call in pending_tool_calls(snapshot.values.get("messages", []))
        ]
        # Written as if `approve` had run: its trigger is consumed and its router, with
        # no calls left unanswered, sends the run to `plan` (or `halt` on a budget).
        # Routers need the run context, which update_state reads from this config key.
        with_runtime = patch_config(config, configurable={CONFIG_KEY_RUNTIME: Runtime(context=ctx)})
        await graph.aupdate_state(
            with_runtime, {"messages": [*refused, message]}, as_node="approve"
        )
        return await warden._drive(thread_id, ctx, setup, None)


def approved_and_pending(values: dict[str, Any]) -> bool:
    """Tell whether an approved call of the latest model turn has not run yet."""
    approved = {
        r["tool_call_id"]
        for r in values.get("approvals") or ()
        if r["decision"] in ("approve", "edit")
    }
    return any(c["id"] in approved for c in pending_tool_calls(values.get("messages", [])))


async def fork(
    warden: Warden, thread_id: str, checkpoint_id: str, *, new_thread_id: str | None = None
) -> RunOutcome:
    """Start a new thread from one of `thread_id`'s checkpoints; the original is untouched.

    The new thread gets the checkpoint and its ancestors, and a `warden_threads` row
    with the original's Context, workspace and config file, so `warden resume`,
    `inject` and `status` work on it like on any thread. The fork re-runs from that
    point, so a checkpoint between an approval and the approved call is refused: the
    fork would perform the call a second time (in a new thread, with new idempotency
    keys) without anyone deciding it again.
    """
    target = new_thread_id or str(uuid.uuid4())
    ctx, setup, _ = await warden._load(thread_id)
    config = warden.config(thread_id, ctx)
    config["configurable"]["checkpoint_id"] = checkpoint_id
    at = await warden.graph(*setup).aget_state(config)
    if at.next == ("act",) and approved_and_pending(at.values):
        raise BadInput(
            f"checkpoint {checkpoint_id} lies between an approval and its execution: a fork "
            "would run the approved call again; fork at the checkpoint before the approval "
            "to decide it again"
        )
    async with thread_lock(warden.pool, target), warden.pool.connection() as conn:
        async with conn.transaction():
            row = await (
                await conn.execute(
                    "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s) "
                    "+ (SELECT count(*) FROM warden_threads WHERE thread_id = %(t)s) AS used",
                    {"t": target},
                )
            ).fetchone()
            if row and row["used"]:
                raise BadInput(f"thread {target} already exists; choose another --thread")
            if not await copy_thread_until(conn, thread_id, target, checkpoint_id):
                raise BadInput(
                    f"thread {thread_id} has no checkpoint {checkpoint_id!r}; "
                    f"see `warden history {thread_id}`"
                )
            await conn.execute(
                """
                INSERT INTO warden_threads (thread_id, task, context, workspace, config_path)
                SELECT %s, task, %s, workspace, config_path FROM warden_threads
                WHERE thread_id = %s
                """,
                (target, json.dumps(context_to_json(ctx)), thread_id),
            )
    return await warden.status(target)
