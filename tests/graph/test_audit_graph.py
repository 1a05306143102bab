"""The audited graph in-process: events land in Postgres with Warden's saver, nowhere without it."""

from __future__ import annotations

import uuid
from pathlib import Path

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from checkpoints.audit_chain import verify_chain
from checkpoints.audit_store import read_events
from checkpoints.saver import saver_pool
from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.builtin import default_tools

TURNS = [
    turn("reading", call("read_file", path="notes.txt")),
    turn("emailing", call("send_email", to="a@b.co", subject="s", body="b")),
    turn("done"),
]


async def test_an_embedded_graph_writes_one_chain_across_an_approval(
    saver, workspace: Path, outbox: Path
) -> None:
    model = ScriptedChatModel.from_turns(TURNS)
    app = compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), saver)
    thread = str(uuid.uuid4())
    cfg = {"configurable": {"thread_id": thread}}
    await app.ainvoke({"task": "go"}, cfg, context=Context())
    pool = saver_pool(saver)
    at_interrupt = [e["kind"] for e in await read_events(pool, thread)]
    assert at_interrupt[-1] == "approval_requested"
    final = await app.ainvoke(Command(resume={"decisions": [{"type": "approve"}]}), cfg)
    assert final["halt_reason"] == "completed"
    events = await read_events(pool, thread)
    assert [e["kind"] for e in events][: len(at_interrupt)] == at_interrupt
    assert [e["kind"] for e in events][len(at_interrupt) :] == [
        "approval_decision", "tool_validated", "tool_result", "model_call", "halt",
    ]  # fmt: skip
    assert {e["run_id"] for e in events} == {final["run_id"]}
    assert verify_chain(events) is None


async def test_without_warden_s_saver_the_run_goes_on_unaudited(
    workspace: Path, outbox: Path
) -> None:
    model = ScriptedChatModel.from_turns([turn("reading", call("read_file", path="notes.txt")), turn("done")])
    builder = build_graph(model=model, tools=default_tools(workspace, outbox))
    in_memory = compile_graph(builder, InMemorySaver())
    done = await in_memory.ainvoke({"task": "go"}, {"configurable": {"thread_id": "t"}})
    assert done["halt_reason"] == "completed" and done["usage"]["tool_calls"] == 1
    model = ScriptedChatModel.from_turns([turn("reading", call("read_file", path="notes.txt")), turn("done")])
    no_checkpointer = compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), None)
    done = await no_checkpointer.ainvoke({"task": "go"})
    assert done["halt_reason"] == "completed"
