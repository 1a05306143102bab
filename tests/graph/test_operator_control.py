"""Operator control on real Postgres: cancel requests, inject, fork.

Runs are parked at a chosen node with LangGraph's `interrupt_before`, so what an
operator does "while the run is between two nodes" is deterministic here; the
subprocess tests in tests/integration/test_operator_cli.py do the same with real
concurrent processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from langgraph.types import Command

from checkpoints.cancels import request_cancel
from checkpoints.locks import thread_lock
from checkpoints.pool import open_pool
from graph.context import Context
from graph.control import fork, inject
from graph.errors import BadInput
from graph.models import make_model_factory
from graph.runtime import Warden
from tests.conftest import call, turn

EMAIL = call("send_email", to="a@b.co", subject="s", body="b")


@pytest.fixture
def warden(saver, outbox: Path) -> Warden:
    return Warden(saver, outbox=outbox, model_factory=make_model_factory())


@pytest.fixture
def email_context(write_script) -> Context:
    return Context(model=f"scripted:{write_script([turn('emailing', EMAIL), turn('done')])}")


def cancel_rows(url: str, thread_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM warden_cancel_requests WHERE thread_id = %s", (thread_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def park_before(
    warden: Warden, ctx: Context, thread_id: str, node: str, decision: dict[str, Any]
) -> None:
    """Answer the pending approval and stop the run right before `node`."""
    app = warden.graph(*((await warden._load(thread_id))[1]))
    await app.ainvoke(
        Command(resume={"decisions": [decision], "reviewer": "bob"}),
        warden.config(thread_id, ctx),
        context=ctx,
        interrupt_before=[node],
    )
    assert (await warden.status(thread_id)).status == "in_progress"


# --- cancel -----------------------------------------------------------------------------


async def test_pending_request_skips_the_next_node_and_is_consumed(
    warden: Warden, email_context: Context, workspace: Path, outbox: Path, database_url: str
) -> None:
    first = await warden.run("email", context=email_context, workspace=workspace)
    await park_before(warden, email_context, first.thread_id, "act", {"type": "approve"})
    await request_cancel(warden.pool, first.thread_id, requested_by="ann", reason="wrong customer")
    assert cancel_rows(database_url, first.thread_id) == 1

    done = await warden.resume(first.thread_id)  # the run goes on, as its own process would
    assert (done.status, done.halt_reason) == ("halted", "cancelled")
    assert done.halt_detail == "cancelled by ann before act: wrong customer"
    assert done.usage["tool_calls"] == 0  # the approved email never ran
    assert not outbox.exists()
    assert cancel_rows(database_url, first.thread_id) == 0  # honoured once
    history = await warden.history(first.thread_id)
    [result] = [m for m in history["messages"] if m["type"] == "tool"]
    assert "Not executed" in result["content"]


async def test_cancel_of_a_busy_thread_stores_a_request(
    warden: Warden, email_context: Context, workspace: Path, database_url: str
) -> None:
    first = await warden.run("email", context=email_context, workspace=workspace)
    await park_before(warden, email_context, first.thread_id, "plan", {"type": "reject"})
    async with open_pool(database_url) as other, thread_lock(other, first.thread_id):
        # Another process holds the thread: nothing is written to the thread itself.
        outcome = await warden.cancel(first.thread_id, reason="stop", requested_by="ann")
        assert outcome.status == "in_progress"
        assert cancel_rows(database_url, first.thread_id) == 1
    done = await warden.resume(first.thread_id)
    assert (done.halt_reason, done.usage["model_calls"]) == ("cancelled", 1)
    assert cancel_rows(database_url, first.thread_id) == 0


async def test_a_request_left_over_does_not_outlive_the_run(
    warden: Warden, write_script, workspace: Path, database_url: str
) -> None:
    """A request that arrives as the run reaches `halt` is dropped with the run."""
    ctx = Context(model=f"scripted:{write_script([turn('hello')])}")
    app = warden.graph(workspace)
    config = warden.config("late-cancel", ctx)
    await app.ainvoke({"task": "greet"}, config, context=ctx, interrupt_before=["halt"])
    await request_cancel(warden.pool, "late-cancel", requested_by="ann", reason="late")
    await app.ainvoke(None, config, context=ctx)
    assert cancel_rows(database_url, "late-cancel") == 0
    assert (await app.aget_state(config)).values["halt_reason"] == "completed"


async def test_a_request_stored_after_a_run_ended_does_not_cancel_the_next_run(
    warden: Warden, write_script, workspace: Path, database_url: str
) -> None:
    ctx = Context(model=f"scripted:{write_script([turn('hello'), turn('hello again')])}")
    first = await warden.run("greet", context=ctx, workspace=workspace)
    assert first.status == "completed"
    # As if `warden cancel` saw the lock just before the finished run let go of it.
    await request_cancel(warden.pool, first.thread_id, requested_by="ann", reason="too late")
    again = await warden.run("greet again", context=ctx, workspace=workspace, thread_id=first.thread_id)
    assert (again.status, again.halt_reason) == ("completed", "completed")
    assert cancel_rows(database_url, first.thread_id) == 0


# --- inject -----------------------------------------------------------------------------


async def test_inject_on_an_awaiting_thread_answers_the_calls_and_replans(
    warden: Warden, email_context: Context, workspace: Path, outbox: Path
) -> None:
    first = await warden.run("email", context=email_context, workspace=workspace)
    assert first.status == "awaiting_approval"
    done = await inject(warden, first.thread_id, "do not email; just report", sender="ann")
    assert (done.status, done.final_answer) == ("completed", "done")
    assert done.usage["model_calls"] == 2  # the same run went on: budgets were not reset
    assert not outbox.exists()
    history = await warden.history(first.thread_id)
    kinds = [(m["type"], m.get("injected_by")) for m in history["messages"]]
    assert kinds == [("human", None), ("ai", None), ("tool", None), ("human", "ann"), ("ai", None)]
    assert "operator ann injected an instruction" in history["messages"][2]["content"]
    assert history["objective"] == "do not email; just report"
    assert history["approvals"] == []  # nobody approved or rejected the email


async def test_inject_on_an_ended_thread_starts_a_follow_up_run(
    warden: Warden, write_script, workspace: Path
) -> None:
    ctx = Context(model=f"scripted:{write_script([turn('first answer'), turn('second answer')])}")
    first = await warden.run("one", context=ctx, workspace=workspace)
    assert first.status == "completed"
    done = await inject(warden, first.thread_id, "and now two", sender="ann")
    assert (done.final_answer, done.usage["model_calls"]) == ("second answer", 1)
    history = await warden.history(first.thread_id)
    assert [m.get("injected_by") for m in history["messages"] if m["type"] == "human"] == [
        None,
        "ann",
    ]


@pytest.mark.parametrize(
    ("decision", "parked_before", "emails"),
    [({"type": "approve"}, "act", 1), ({"type": "reject", "message": "no"}, "plan", 0)],
)
async def test_inject_on_a_run_stopped_mid_way(
    warden: Warden,
    email_context: Context,
    workspace: Path,
    outbox: Path,
    decision: dict[str, Any],
    parked_before: str,
    emails: int,
) -> None:
    """Decided work finishes first; the instruction reaches the model at its next turn."""
    first = await warden.run("email", context=email_context, workspace=workspace)
    await park_before(warden, email_context, first.thread_id, parked_before, decision)
    done = await inject(warden, first.thread_id, "wrap up", sender="ann")
    assert done.status == "completed"
    sent = (outbox / "outbox.jsonl").read_text().count("\n") if outbox.exists() else 0
    assert sent == emails
    history = await warden.history(first.thread_id)
    types = [m["type"] for m in history["messages"]]
    assert types == ["human", "ai", "tool", "human", "ai"]
    assert history["messages"][3]["injected_by"] == "ann"


async def test_inject_refuses_an_empty_instruction_and_unknown_threads(
    warden: Warden, email_context: Context, workspace: Path
) -> None:
    first = await warden.run("email", context=email_context, workspace=workspace)
    with pytest.raises(BadInput, match="empty"):
        await inject(warden, first.thread_id, "  ", sender="ann")
    with pytest.raises(BadInput, match="unknown thread"):
        await inject(warden, "no-such-thread", "go", sender="ann")
    assert (await warden.status(first.thread_id)).status == "awaiting_approval"


# --- fork ------------------------------------------------------------------------------


async def checkpoint_rows(url: str, thread_id: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT checkpoint_id, parent_checkpoint_id, checkpoint, metadata FROM checkpoints "
            "WHERE thread_id = %s ORDER BY checkpoint_id",
            (thread_id,),
        )
        return await cur.fetchall()


async def test_fork_from_an_earlier_checkpoint_leaves_the_original_alone(
    warden: Warden, write_script, workspace: Path, database_url: str
) -> None:
    turns = [
        turn("reading notes", call("read_file", path="notes.txt")),
        turn("reading todo", call("read_file", path="todo.md")),
        turn("both read"),
    ]
    ctx = Context(model=f"scripted:{write_script(turns)}")
    original = await warden.run("read both", context=ctx, workspace=workspace)
    assert original.status == "completed"
    before = await checkpoint_rows(database_url, original.thread_id)
    app = warden.graph(workspace)
    # The checkpoint just before the second model call.
    states = [s async for s in app.aget_state_history(warden.config(original.thread_id, ctx))]
    at = next(
        s
        for s in states
        if s.next == ("plan",) and sum(m.type == "ai" for m in s.values["messages"]) == 1
    )
    at_id = at.config["configurable"]["checkpoint_id"]
    listed = [c["checkpoint_id"] for c in (await warden.history(original.thread_id))["checkpoints"]]
    assert at_id in listed  # `warden history` lists what fork takes

    forked = await fork(warden, original.thread_id, at_id, new_thread_id="forked-1")
    assert forked.status == "in_progress"
    assert forked.usage == at.values["usage"]
    assert len(await checkpoint_rows(database_url, "forked-1")) < len(before)

    done = await warden.resume("forked-1")
    assert (done.status, done.final_answer) == ("completed", "both read")
    assert done.usage["model_calls"] == original.usage["model_calls"]
    assert await checkpoint_rows(database_url, original.thread_id) == before
    assert (await warden.status(original.thread_id)).as_json() == original.as_json()

    with pytest.raises(BadInput, match="already exists"):
        await fork(warden, original.thread_id, at_id, new_thread_id="forked-1")
    with pytest.raises(BadInput, match="no checkpoint"):
        await fork(warden, original.thread_id, "nope", new_thread_id="forked-2")
    assert await checkpoint_rows(database_url, "forked-2") == []
    with pytest.raises(BadInput, match="unknown thread"):
        await warden.status("forked-2")


async def test_fork_at_an_approval_asks_again_on_the_new_thread(
    warden: Warden, email_context: Context, workspace: Path, outbox: Path
) -> None:
    first = await warden.run("email", context=email_context, workspace=workspace)
    app = warden.graph(workspace)
    at = await app.aget_state(warden.config(first.thread_id, email_context))
    rejected = await warden.resume(
        first.thread_id, decisions={"decisions": [{"type": "reject"}], "reviewer": "bob"}
    )
    assert rejected.status == "completed"
    forked = await fork(warden, first.thread_id, at.config["configurable"]["checkpoint_id"])
    asked = await warden.resume(forked.thread_id)  # re-runs approve, which asks again
    assert asked.status == "awaiting_approval"
    assert asked.pending_approval == first.pending_approval
    approved = await warden.resume(
        forked.thread_id, decisions={"decisions": [{"type": "approve"}], "reviewer": "bob"}
    )
    assert approved.status == "completed"
    assert (outbox / "outbox.jsonl").read_text().count("\n") == 1
    assert (await warden.status(first.thread_id)).as_json() == rejected.as_json()


async def test_fork_refuses_a_point_between_an_approval_and_its_call(
    warden: Warden, email_context: Context, workspace: Path, outbox: Path
) -> None:
    first = await warden.run("email", context=email_context, workspace=workspace)
    await park_before(warden, email_context, first.thread_id, "act", {"type": "approve"})
    app = warden.graph(workspace)
    at = await app.aget_state(warden.config(first.thread_id, email_context))
    assert at.next == ("act",)
    with pytest.raises(BadInput, match="between an approval and its execution"):
        await fork(warden, first.thread_id, at.config["configurable"]["checkpoint_id"])
    assert not outbox.exists()
