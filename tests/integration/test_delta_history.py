"""WardenSaver's DeltaChannel history walk gives the stock saver's result, cheaper."""

from __future__ import annotations

import operator
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import psycopg
import pytest
from langgraph.channels import DeltaChannel
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

import checkpoints.delta_history as delta_history
from checkpoints.warden_saver import WardenSaver
from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.builtin import default_tools

pytestmark = pytest.mark.postgres


def concat(current: list[str], batches: Sequence[list[str]]) -> list[str]:
    return [*current, *(item for batch in batches for item in batch)]


def total(current: int, batches: Sequence[int]) -> int:
    return current + sum(batches)


class Toy(TypedDict):
    # Snapshots every few updates, so walks stop at seeds in the middle of a thread.
    items: Annotated[list[str], DeltaChannel(concat, snapshot_frequency=3)]
    count: Annotated[int, DeltaChannel(total, snapshot_frequency=4)]
    # Its snapshots are removed below, so walks go to the root across fork points.
    tags: Annotated[list[str], DeltaChannel(concat)]
    log: Annotated[list[str], operator.add]


def toy_graph(checkpointer: Any) -> Any:
    def step(state: Toy) -> dict[str, Any]:
        return {"items": [f"i{len(state['items'])}"], "count": 1, "tags": ["t"], "log": ["step"]}

    def more(state: Toy) -> str:
        return "step" if len(state["items"]) % 5 else END

    builder = StateGraph(Toy)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", more)
    return builder.compile(checkpointer=checkpointer)


def config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


async def toy_thread(saver: WardenSaver) -> tuple[Any, str]:
    """A thread begun by the stock saver, continued by Warden's, with two forks."""
    thread = str(uuid.uuid4())
    stock = toy_graph(AsyncPostgresSaver(saver.conn))
    await stock.ainvoke({"items": ["start"], "count": 0}, config(thread), durability="sync")
    app = toy_graph(saver)
    await app.ainvoke({"items": ["again"]}, config(thread), durability="sync")
    history = [s async for s in app.aget_state_history(config(thread))]
    for k, at in enumerate((history[3], history[8])):
        forked = await app.aupdate_state(at.config, {"items": [f"fork{k}"]}, as_node="step")
        await app.ainvoke(None, forked, durability="sync")
    await app.ainvoke({"items": ["last"]}, config(thread), durability="sync")
    # LangGraph snapshots every delta channel where a branch starts; an older thread
    # may not have: without them a walk crosses the fork point, and its chain has gaps
    # (the other branch's checkpoints lie between its ends).
    async with saver.conn.connection() as conn:  # type: ignore[union-attr]
        await conn.execute(
            "DELETE FROM checkpoint_blobs WHERE thread_id = %s AND channel = 'tags'", (thread,)
        )
        await conn.execute(
            "UPDATE checkpoints SET checkpoint = checkpoint #- '{channel_values,tags}' "
            "WHERE thread_id = %s",
            (thread,),
        )
    return app, thread


async def warden_thread(saver: WardenSaver, workspace: Path, outbox: Path) -> tuple[Any, str]:
    """A real Warden thread: messages, usage and loop are DeltaChannels."""
    turns = [turn(f"read {i}", call("read_file", path="notes.txt")) for i in range(3)]
    model = ScriptedChatModel.from_turns([*turns, turn("done"), turn("again")])
    app = compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), saver)
    thread = str(uuid.uuid4())
    ctx = Context(loop_repeat_threshold=5, loop_observation_repeats=5, loop_window=10)
    for task in ("read it", "once more"):
        result = await app.ainvoke({"task": task}, config(thread), context=ctx, durability="sync")
        assert result["halt_reason"] == "completed"
    return app, thread


async def assert_same_histories(saver: WardenSaver, app: Any, thread: str, channels: list[str]) -> int:
    """Compare both walks at every checkpoint of the thread; return how many."""
    snapshots = [s async for s in app.aget_state_history(config(thread))]
    for snap in snapshots:
        ours = await saver.aget_delta_channel_history(config=snap.config, channels=channels)
        stock = await AsyncPostgresSaver.aget_delta_channel_history(
            saver, config=snap.config, channels=channels
        )
        assert ours == stock, snap.config
    latest = await saver.aget_delta_channel_history(config=config(thread), channels=channels)
    assert latest == await AsyncPostgresSaver.aget_delta_channel_history(
        saver, config=config(thread), channels=channels
    )
    return len(snapshots)


@pytest.mark.parametrize("page", [2, delta_history._DELTA_PAGE_SIZE])
async def test_same_history_as_the_stock_walk(
    saver: WardenSaver, page: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeds (snapshots and a stock-written start), forks, and walks over many pages."""
    monkeypatch.setattr(delta_history, "_DELTA_PAGE_SIZE", page)
    app, thread = await toy_thread(saver)
    assert await assert_same_histories(saver, app, thread, ["items", "count", "tags"]) > 20
    state = await app.aget_state(config(thread))
    assert {"start", "fork1", "last"} <= set(state.values["items"])


async def test_same_history_on_a_warden_thread(
    saver: WardenSaver, workspace: Path, outbox: Path
) -> None:
    app, thread = await warden_thread(saver, workspace, outbox)
    assert await assert_same_histories(saver, app, thread, ["messages", "usage", "loop"]) > 10


async def test_same_history_for_a_missing_thread(saver: WardenSaver) -> None:
    missing = config(str(uuid.uuid4()))
    assert await saver.aget_delta_channel_history(config=missing, channels=["items"]) == {
        "items": {"writes": []}
    }


async def test_load_sends_no_probes_and_no_id_lists(
    saver: WardenSaver, workspace: Path, outbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stock walk probes the blobs once per row and channel and sends the chain's
    ids; on a thread without forks this one does neither."""
    _, thread = await warden_thread(saver, workspace, outbox)
    sent: list[tuple[str, Any]] = []
    execute = psycopg.AsyncCursor.execute

    async def recording(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        sent.append((str(query), params))
        return await execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", recording)
    history = await saver.aget_delta_channel_history(
        config=config(thread), channels=["messages", "usage", "loop"]
    )
    assert len(history["messages"]["writes"]) > 8
    assert sent and not any("EXISTS" in sql for sql, _ in sent)
    assert not any(isinstance(p, list) and len(p) > 3 for _, ps in sent for p in ps or [])
