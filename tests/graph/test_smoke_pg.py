"""A first end-to-end check that the fixtures and the graph work together."""

from __future__ import annotations

import uuid
from pathlib import Path

from langgraph.types import Command

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.builtin import default_tools


async def test_approval_round_trip(saver, workspace: Path, outbox: Path) -> None:
    model = ScriptedChatModel.from_turns(
        [
            turn("reading", call("read_file", path="notes.txt")),
            turn("emailing", call("send_email", to="a@b.co", subject="s", body="b")),
            turn("done"),
        ]
    )
    app = compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), saver)
    cfg = {"configurable": {"thread_id": str(uuid.uuid4())}}
    ctx = Context()
    first = await app.ainvoke({"task": "go"}, cfg, context=ctx)
    assert first["__interrupt__"][0].value["action_requests"][0]["name"] == "send_email"
    final = await app.ainvoke(Command(resume={"decisions": [{"type": "approve"}]}), cfg, context=ctx)
    assert final["halt_reason"] == "completed"
    assert final["usage"]["tool_calls"] == 2
    assert (outbox / "outbox.jsonl").read_text().count("\n") == 1
