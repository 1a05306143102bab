"""Budgets survive a pause and a new process; each run on a thread gets fresh budgets.

A run paused at approval is resumed by a newly compiled graph over a new saver (as a
new process would), and must continue its counters exactly. A follow-up task on a
finished thread starts with zeroed usage and loop windows. Messages are stored as
deltas (DeltaChannel), not re-stored whole at every step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.channels import DeltaChannel
from langgraph.types import Command

from checkpoints.saver import open_saver
from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.builtin import default_tools

EMAIL = {"to": "ops@example.com", "subject": "Incident", "body": "The disk is full."}


def compile_app(saver: Any, workspace: Path, outbox: Path, turns: list[dict[str, Any]]) -> Any:
    """Compile a fresh graph around a fresh scripted model, as a new process would."""
    model = ScriptedChatModel.from_turns(turns, model="gpt-4o-mini")
    return compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), saver)


def config(thread_id: str, ctx: Context) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": ctx.recursion_limit()}


def emails(outbox: Path) -> list[dict[str, Any]]:
    file = outbox / "outbox.jsonl"
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines()]


def ai_texts(messages: list[Any]) -> list[str]:
    return [m.text for m in messages if isinstance(m, AIMessage)]


# Turn 2 needs approval; the script goes on longer than any budget below allows.
PAUSING_SCRIPT = [
    turn("1", call("read_file", path="notes.txt")),
    turn("2", call("send_email", **EMAIL)),
    turn("3", call("read_file", path="todo.md")),
    turn("4", call("list_files", path=".")),
    turn("5 never reached"),
]


async def _pause(
    saver: Any, workspace: Path, outbox: Path, ctx: Context
) -> tuple[str, dict[str, Any]]:
    """Run until the email approval; return the thread id and the paused usage."""
    thread_id = str(uuid.uuid4())
    app = compile_app(saver, workspace, outbox, PAUSING_SCRIPT)
    paused = await app.ainvoke(
        {"task": "report the incident"}, config(thread_id, ctx), context=ctx, durability="sync"
    )
    assert paused["__interrupt__"][0].value["tool_call_ids"] == ["call_2_1"]
    usage = paused["usage"]
    assert (usage["model_calls"], usage["tool_calls"]) == (2, 1)
    assert (usage["input_tokens"], usage["output_tokens"]) == (200, 20)
    assert emails(outbox) == []
    return thread_id, usage


async def test_max_steps_holds_across_a_pause_and_a_new_process(
    saver, database_url: str, workspace: Path, outbox: Path
) -> None:
    ctx = Context(max_steps=3)
    thread_id, paused_usage = await _pause(saver, workspace, outbox, ctx)
    await asyncio.sleep(1.0)  # a human thinking: not active time

    async with open_saver(database_url, auto_migrate=False) as fresh_saver:
        app = compile_app(fresh_saver, workspace, outbox, PAUSING_SCRIPT)
        resumed = time.monotonic()
        result = await app.ainvoke(
            Command(resume={"decisions": [{"type": "approve"}], "reviewer": "ops-lead"}),
            config(thread_id, ctx),
            context=ctx,
            durability="sync",
        )
        resume_seconds = time.monotonic() - resumed

    assert result["halt_reason"] == "max_steps"
    assert result["halt_detail"] == "3 of 3 model calls used"
    usage = result["usage"]
    # Exactly three model calls across the pause: two before it, one after.
    assert usage["model_calls"] == 3
    assert ai_texts(result["messages"]) == ["1", "2", "3"]
    assert usage["tool_calls"] == 3
    assert usage["tool_calls_by_name"] == {"read_file": 2, "send_email": 1}
    assert (usage["input_tokens"], usage["output_tokens"]) == (300, 30)
    assert usage["steps"] > paused_usage["steps"]
    assert usage["active_seconds"] >= paused_usage["active_seconds"]
    # What the resume added is at most the resume's own wall time: the second of waiting
    # for approval before it is not counted (a bound that holds on any machine).
    added = usage["active_seconds"] - paused_usage["active_seconds"]
    assert added <= resume_seconds, "time waiting for approval counted as active"
    assert len(emails(outbox)) == 1
    assert [(a["decision"], a["reviewer"]) for a in result["approvals"]] == [
        ("approve", "ops-lead")
    ]


async def test_max_tool_calls_holds_across_a_pause_and_a_new_process(
    saver, database_url: str, workspace: Path, outbox: Path
) -> None:
    ctx = Context(max_tool_calls=2)
    thread_id, _ = await _pause(saver, workspace, outbox, ctx)

    async with open_saver(database_url, auto_migrate=False) as fresh_saver:
        app = compile_app(fresh_saver, workspace, outbox, PAUSING_SCRIPT)
        result = await app.ainvoke(
            Command(resume={"decisions": [{"type": "approve"}]}),
            config(thread_id, ctx),
            context=ctx,
            durability="sync",
        )

    assert result["halt_reason"] == "max_tool_calls"
    assert result["halt_detail"] == "2 of 2 tool calls used; the next batch has 1"
    usage = result["usage"]
    assert usage["tool_calls"] == 2  # the read and the approved email; todo.md never read
    assert usage["tool_calls_by_name"] == {"read_file": 1, "send_email": 1}
    assert usage["model_calls"] == 3
    assert len(emails(outbox)) == 1
    last = result["messages"][-1]
    assert isinstance(last, ToolMessage) and last.tool_call_id == "call_3_1"
    assert last.text.startswith("Not executed: the run halted (max_tool_calls")


async def test_a_follow_up_run_starts_with_fresh_budgets(
    saver, workspace: Path, outbox: Path
) -> None:
    read = call("read_file", path="notes.txt")
    turns = [
        # Run 1: two identical reads, a rejected email, an answer (4 model calls).
        turn("r1", read),
        turn("r1", read),
        turn("r1 email", call("send_email", **EMAIL)),
        turn("first done"),
        # Run 2: the same two reads again (3 model calls). With carried-over loop windows
        # they would be a loop; with carried-over usage max_steps would already be spent.
        turn("r2", read),
        turn("r2", read),
        turn("second done"),
    ]
    ctx = Context(max_steps=4)
    thread_id = str(uuid.uuid4())
    cfg = config(thread_id, ctx)
    app = compile_app(saver, workspace, outbox, turns)

    paused = await app.ainvoke({"task": "first task"}, cfg, context=ctx, durability="sync")
    assert "__interrupt__" in paused
    first = await app.ainvoke(
        Command(resume={"decisions": [{"type": "reject", "message": "no"}]}),
        cfg,
        context=ctx,
        durability="sync",
    )
    assert first["halt_reason"] == "completed"
    assert first["final_answer"] == "first done"
    assert first["usage"]["model_calls"] == 4
    assert first["usage"]["rejections"] == 1
    assert first["loop"]["calls"] != []
    assert [w.split(":")[0] for w in first["budget_warnings"]] == ["max_steps"]

    second = await app.ainvoke({"task": "follow up"}, cfg, context=ctx, durability="sync")
    assert second["halt_reason"] == "completed"
    assert second["final_answer"] == "second done"
    assert second["objective"] == "follow up"
    usage = second["usage"]
    assert usage["model_calls"] == 3
    assert usage["tool_calls"] == 2
    assert usage["tool_calls_by_name"] == {"read_file": 2}
    assert (usage["input_tokens"], usage["output_tokens"]) == (300, 30)
    assert usage["rejections"] == 0
    assert second["loop"]["strikes"] == 0
    assert len(second["loop"]["calls"]) == 2
    # Run 1 passed 80% of max_steps; run 2 (3 of 4) did not, so its warnings are empty.
    assert second["budget_warnings"] == []
    assert second["report"]["usage"]["model_calls"] == 3
    # The conversation itself is kept: both tasks and all seven model turns.
    humans = [m.text for m in second["messages"] if isinstance(m, HumanMessage)]
    assert humans == ["first task", "follow up"]
    assert ai_texts(second["messages"]) == [t["content"] for t in turns]
    assert len(emails(outbox)) == 0


async def test_messages_are_stored_as_deltas(
    saver, database_url: str, workspace: Path, outbox: Path
) -> None:
    files = [f"big{i}.txt" for i in range(8)]
    for i, name in enumerate(files):
        (workspace / name).write_text(f"line {i} of a large file\n" * 200)
    turns = [turn(str(i), call("read_file", path=n)) for i, n in enumerate(files)] + [turn("done")]
    app = compile_app(saver, workspace, outbox, turns)
    assert isinstance(app.channels["messages"], DeltaChannel)

    ctx = Context()
    thread_id = str(uuid.uuid4())
    result = await app.ainvoke(
        {"task": "read everything"}, config(thread_id, ctx), context=ctx, durability="sync"
    )
    assert result["halt_reason"] == "completed"
    full = len(saver.serde.dumps_typed(result["messages"])[1])
    assert full > 30_000

    async with saver.conn.connection() as conn:
        checkpoints = await (
            await conn.execute(
                "SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s", (thread_id,)
            )
        ).fetchone()
        blobs = await (
            await conn.execute(
                "SELECT count(*) AS n, coalesce(sum(length(blob)), 0) AS bytes "
                "FROM checkpoint_blobs WHERE thread_id = %s AND channel = 'messages'",
                (thread_id,),
            )
        ).fetchone()
        writes = await (
            await conn.execute(
                "SELECT count(*) AS n, coalesce(sum(length(blob)), 0) AS bytes "
                "FROM checkpoint_writes WHERE thread_id = %s AND channel = 'messages'",
                (thread_id,),
            )
        ).fetchone()
    assert checkpoints["n"] >= 25
    # Re-storing the list at every step would cost about checkpoints * full / 2 bytes.
    # As deltas, each message is written once and no step stores the whole list.
    assert blobs["bytes"] < full
    assert writes["bytes"] < 1.5 * full
    assert blobs["bytes"] + writes["bytes"] < 2 * full

    # A new process reconstructs the whole conversation from the deltas.
    async with open_saver(database_url, auto_migrate=False) as fresh_saver:
        fresh = compile_app(fresh_saver, workspace, outbox, turns)
        state = await fresh.aget_state({"configurable": {"thread_id": thread_id}})
    assert [m.id for m in state.values["messages"]] == [m.id for m in result["messages"]]
    assert [m.text for m in state.values["messages"]] == [m.text for m in result["messages"]]


async def test_a_resume_cannot_loosen_the_budgets_the_run_started_with(
    saver, workspace: Path, outbox: Path
) -> None:
    # A server client resumes with whatever context it likes, or none at all.
    for resume_context in (Context(max_steps=50, max_tool_calls=50), None):
        app = compile_app(saver, workspace, outbox, PAUSING_SCRIPT)
        strict = Context(max_steps=3)
        cfg = config(str(uuid.uuid4()), strict)
        paused = await app.ainvoke({"task": "go"}, cfg, context=strict)
        assert "__interrupt__" in paused
        kwargs = {} if resume_context is None else {"context": resume_context}
        final = await app.ainvoke(
            Command(resume={"decisions": [{"type": "approve"}]}), cfg, **kwargs
        )
        assert final["halt_reason"] == "max_steps", resume_context
        assert final["usage"]["model_calls"] == 3
        assert final["report"]["budgets"]["max_steps"] == 3
        assert final["run_context"]["max_steps"] == 3


async def test_a_run_started_without_context_runs_under_the_defaults(
    saver, workspace: Path, outbox: Path
) -> None:
    app = compile_app(saver, workspace, outbox, [turn("hello there")])
    final = await app.ainvoke(
        {"messages": [{"role": "user", "content": "hi"}]},
        {"configurable": {"thread_id": str(uuid.uuid4())}},
    )
    assert (final["halt_reason"], final["final_answer"]) == ("completed", "hello there")
    assert final["report"]["budgets"] == Context().budgets()
    assert final["objective"] == "hi"
