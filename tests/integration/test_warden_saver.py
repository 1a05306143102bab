"""WardenSaver beyond the conformance suite: concurrency, atomic writes, and its extra
capabilities on real Warden threads (DeltaChannel messages)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from psycopg.types.json import Jsonb
from typing_extensions import TypedDict

from checkpoints.warden_saver import (
    COUNTERS,
    COUNTERS_SHORT,
    STOCK_FORM_SQL,
    WardenSaver,
    compact_version,
    is_compact,
    version_counter,
)
from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.errors import BadInput
from graph.retention import ACTIVITY_SQL
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.builtin import default_tools

pytestmark = pytest.mark.postgres


def config(thread_id: str, run_id: str | None = None) -> dict[str, Any]:
    """A thread's config; `run_id` goes in the metadata, as LangGraph's server sets it."""
    out: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    if run_id:
        out["metadata"] = {"run_id": run_id}
    return out


async def run_thread(saver: WardenSaver, workspace: Path, outbox: Path, reads: int) -> Any:
    """Run a Warden thread that reads a file `reads` (at most 4) times, then answers."""
    turns = [turn(f"read {i}", call("read_file", path="notes.txt")) for i in range(reads)]
    model = ScriptedChatModel.from_turns([*turns, turn("done")])
    app = compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), saver)
    thread = str(uuid.uuid4())
    run = config(thread, run_id=str(uuid.uuid4()))
    # The same read on purpose: loop detection is set to tolerate it.
    ctx = Context(loop_repeat_threshold=5, loop_observation_repeats=5, loop_window=10)
    result = await app.ainvoke({"task": "read it"}, run, context=ctx, durability="sync")
    assert result["halt_reason"] == "completed"
    return app, thread


async def thread_rows(url: str, thread_id: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        counts = {}
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            cur = await conn.execute(
                f"SELECT count(*) FROM {table} WHERE thread_id = %s", (thread_id,)
            )
            row = await cur.fetchone()
            assert row is not None
            counts[table] = int(row[0])
        return counts


async def test_queries_do_not_wait_for_each_other(saver: WardenSaver, database_url: str) -> None:
    """A put blocked in Postgres does not hold up other queries (no instance lock)."""
    thread = str(uuid.uuid4())
    cp = empty_checkpoint()
    async with await psycopg.AsyncConnection.connect(database_url) as blocker:
        # An uncommitted row with the same key makes the saver's upsert wait on it.
        await blocker.execute(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, checkpoint) "
            "VALUES (%s, '', %s, %s)",
            (thread, cp["id"], Jsonb({})),
        )
        blocked = asyncio.create_task(saver.aput(config(thread), cp, {"source": "input"}, {}))
        await asyncio.sleep(0.2)
        assert not blocked.done()
        # With the stock saver's lock this would wait for the blocked put: fail, not hang.
        other = await asyncio.wait_for(saver.aget_tuple(config(str(uuid.uuid4()))), timeout=30)
        assert other is None
        assert not blocked.done()
        await blocker.commit()
    stored = await asyncio.wait_for(blocked, timeout=30)
    assert stored["configurable"]["checkpoint_id"] == cp["id"]


async def test_put_is_one_transaction(saver: WardenSaver, database_url: str) -> None:
    """When the checkpoint row fails, its blobs (written first) are not left behind."""
    thread = f"poison-{uuid.uuid4()}"
    cp = empty_checkpoint()
    cp["channel_values"] = {"items": ["a", "b"]}
    cp["channel_versions"] = {"items": "1"}
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        # A constraint that refuses this one thread's checkpoint row, not its blobs.
        await conn.execute(
            f"ALTER TABLE checkpoints ADD CONSTRAINT refuse_poison CHECK (thread_id <> '{thread}')"
        )
        try:
            with pytest.raises(psycopg.errors.CheckViolation):
                await saver.aput(config(thread), cp, {"source": "input"}, {"items": "1"})
        finally:
            await conn.execute("ALTER TABLE checkpoints DROP CONSTRAINT refuse_poison")
    assert await thread_rows(database_url, thread) == {
        "checkpoints": 0,
        "checkpoint_blobs": 0,
        "checkpoint_writes": 0,
    }


async def test_copy_thread_keeps_delta_history(
    saver: WardenSaver, database_url: str, workspace: Path, outbox: Path
) -> None:
    app, source = await run_thread(saver, workspace, outbox, reads=3)
    target = str(uuid.uuid4())
    await saver.acopy_thread(source, target)

    src_state = await app.aget_state(config(source))
    dst_state = await app.aget_state(config(target))
    assert len(src_state.values["messages"]) == 8  # task, 3 x (call, result), answer
    assert [m.content for m in dst_state.values["messages"]] == [
        m.content for m in src_state.values["messages"]
    ]
    assert dst_state.values["usage"] == src_state.values["usage"]
    assert await thread_rows(database_url, target) == await thread_rows(database_url, source)

    with pytest.raises(BadInput, match="already exists"):
        await saver.acopy_thread(source, target)


async def test_delete_for_runs_drops_orphaned_blobs_only(
    saver: WardenSaver, database_url: str, workspace: Path, outbox: Path
) -> None:
    app, thread = await run_thread(saver, workspace, outbox, reads=1)
    before = await thread_rows(database_url, thread)
    checkpoints = await loaded(saver, thread)
    first_run = {t.metadata.get("run_id") async for t in saver.alist(config(thread))}
    assert len(first_run) == 1 and None not in first_run

    # A second run on the same thread; then delete it, as a server rollback would.
    model = ScriptedChatModel.from_turns([turn("again")])
    app2 = compile_graph(build_graph(model=model, tools=[]), saver)
    second_run = str(uuid.uuid4())
    await app2.ainvoke(
        {"task": "again"}, config(thread, second_run), context=Context(), durability="sync"
    )
    run_ids = {t.metadata.get("run_id") async for t in saver.alist(config(thread))}
    assert run_ids == first_run | {second_run}
    assert (await thread_rows(database_url, thread))["checkpoint_blobs"] > before["checkpoint_blobs"]

    await saver.adelete_for_runs([second_run])
    assert await thread_rows(database_url, thread) == before
    assert await loaded(saver, thread) == checkpoints  # every value each one references
    state = await app.aget_state(config(thread))
    assert state.values["halt_reason"] == "completed"
    assert [m.content for m in state.values["messages"]][-1] == "done"


async def test_continues_a_thread_the_stock_saver_wrote(
    saver: WardenSaver, workspace: Path, outbox: Path
) -> None:
    """Stock 32-digit versions and Warden's compact ones compare in the right order."""
    model = ScriptedChatModel.from_turns(
        [turn("reading", call("read_file", path="notes.txt")), turn("first done"), turn("second done")]
    )
    tools = default_tools(workspace, outbox)
    thread = str(uuid.uuid4())
    stock = compile_graph(build_graph(model=model, tools=tools), AsyncPostgresSaver(saver.conn))
    first = await stock.ainvoke({"task": "one"}, config(thread), context=Context(), durability="sync")
    assert first["final_answer"] == "first done"

    warden = compile_graph(build_graph(model=model, tools=tools), saver)
    second = await warden.ainvoke({"task": "two"}, config(thread), context=Context(), durability="sync")
    assert second["halt_reason"] == "completed" and second["final_answer"] == "second done"
    assert [m.content for m in second["messages"]] == [
        "one", "reading", "alpha\nbeta\n", "first done", "two", "second done"
    ]
    latest = await saver.aget_tuple(config(thread))
    assert latest is not None
    versions = latest.checkpoint["channel_versions"]
    assert is_compact(versions["messages"]) and len(versions["messages"]) <= 8
    assert any(len(v) > 19 for v in versions.values())  # untouched channels keep stock ones
    # Primitives the stock saver wrote stay inline, where only they are; the ones Warden
    # wrote since are blobs, stored once per change.


async def test_resumes_a_run_the_stock_saver_paused(
    saver: WardenSaver, workspace: Path, outbox: Path
) -> None:
    """A run paused under stock versions, whose primitives exist only inline, resumes:
    values not written since stay inline in the new rows and read back unchanged."""
    email = {"to": "ops@example.com", "subject": "s", "body": "b"}
    model = ScriptedChatModel.from_turns([turn("mailing", call("send_email", **email)), turn("sent")])
    tools = default_tools(workspace, outbox)
    thread = str(uuid.uuid4())
    stock = compile_graph(build_graph(model=model, tools=tools), AsyncPostgresSaver(saver.conn))
    paused = await stock.ainvoke({"task": "mail"}, config(thread), context=Context(), durability="sync")
    assert "__interrupt__" in paused

    warden = compile_graph(build_graph(model=model, tools=tools), saver)
    done = await warden.ainvoke(
        Command(resume={"decisions": [{"type": "approve"}], "reviewer": "alice"}),
        config(thread), context=Context(), durability="sync",
    )
    assert done["halt_reason"] == "completed" and done["final_answer"] == "sent"
    assert (done["run_id"], done["data_nonce"]) == (paused["run_id"], paused["data_nonce"])
    assert done["usage"]["model_calls"] == 2 and done["usage"]["tool_calls"] == 1
    assert len(list(outbox.iterdir())) == 1
    latest = await saver.aget_tuple(config(thread))
    assert latest is not None
    versions = latest.checkpoint["channel_versions"]
    assert not is_compact(versions["run_id"]) and is_compact(versions["messages"])
    async with saver.conn.connection() as conn:
        cur = await conn.execute(
            "SELECT checkpoint -> 'channel_values' AS inline FROM checkpoints "
            "WHERE thread_id = %s ORDER BY checkpoint_id DESC LIMIT 1",
            (thread,),
        )
        row = await cur.fetchone()
    assert row is not None and row["inline"]["run_id"] == paused["run_id"]
    assert "final_answer" not in row["inline"]  # written by Warden: a blob


async def test_forks_of_one_checkpoint_keep_their_own_values(
    saver: WardenSaver, workspace: Path, outbox: Path
) -> None:
    """Two branches from one checkpoint write the same step: each reads its own values."""
    app, thread = await run_thread(saver, workspace, outbox, reads=1)
    history = [s async for s in app.aget_state_history(config(thread))]
    at = next(s for s in history if s.next == ("act",))
    branches = {}
    for text in ("branch A", "branch B"):
        forked = await app.aupdate_state(at.config, {"objective": text}, as_node="act")
        branches[text] = forked
    versions = set()
    for text, forked in branches.items():
        state = await app.aget_state(forked)
        assert state.values["objective"] == text
        assert state.values["usage"] == at.values["usage"]
        stored = await saver.aget_tuple(forked)
        assert stored is not None
        versions.add(stored.checkpoint["channel_versions"]["objective"])
    assert len(versions) == 2 and len({version_counter(v) for v in versions}) == 1


async def test_primitives_are_stored_once_per_change(
    saver: WardenSaver, database_url: str, workspace: Path, outbox: Path
) -> None:
    """A Warden thread's rows carry no inline values, only delta snapshot markers, nor
    what the row holds anyway; each primitive is one blob per version, and the thread
    reads back whole."""
    app, thread = await run_thread(saver, workspace, outbox, reads=2)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT checkpoint_id, checkpoint FROM checkpoints WHERE thread_id = %s", (thread,)
        )
        rows = await cur.fetchall()
        inline = [row[1].get("channel_values", {}) for row in rows]
        cur = await conn.execute(
            "SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %s AND channel = 'run_id'",
            (thread,),
        )
        run_id_blobs = (await cur.fetchone() or [0])[0]
    assert inline and all(set(values.values()) <= {True} for values in inline)
    assert run_id_blobs == 1
    # Neither the id (the row's key) nor `updated_channels` is stored in the row.
    assert not any({"id", "updated_channels"} & set(row[1]) for row in rows)
    latest = await saver.aget_tuple(config(thread))
    assert latest is not None and latest.checkpoint["id"] == max(row[0] for row in rows)
    state = await app.aget_state(config(thread))
    assert state.values["run_id"] and state.values["objective"] == "read it"
    assert state.values["halt_reason"] == "completed" and state.values["tainted"] is False


async def raw_rows(url: str, thread_id: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Return a thread's stored (checkpoint, metadata) columns, oldest first."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT checkpoint, metadata FROM checkpoints WHERE thread_id = %s ORDER BY checkpoint_id",
            (thread_id,),
        )
        return [(row[0], row[1]) for row in await cur.fetchall()]


async def loaded(saver: WardenSaver, thread_id: str) -> list[tuple[Any, Any]]:
    return [(t.checkpoint, t.metadata) async for t in saver.alist(config(thread_id))]


async def test_rows_store_versions_grouped_and_load_as_langgraph_wrote_them(
    saver: WardenSaver, database_url: str, workspace: Path, outbox: Path
) -> None:
    """Rows list the channels that share a version once, under it; loaded, they are
    LangGraph's dicts, the same as from the stock form the prune SQL puts them in."""
    app, thread = await run_thread(saver, workspace, outbox, reads=2)
    rows = await raw_rows(database_url, thread)
    for checkpoint, metadata in rows:
        assert "versions_seen" not in checkpoint and "seen" in checkpoint
        assert set(checkpoint["channel_versions"]) <= {"messages", "usage", "loop"}
        assert COUNTERS not in metadata
    assert all(COUNTERS_SHORT in metadata for _, metadata in rows[1:])
    last = rows[-1][0]
    assert len(last["grouped"]) < sum(len(channels) for channels in last["grouped"].values())
    names = {name for channels in last["grouped"].values() for name in channels}
    assert ">plan" in names and not any(name.startswith("branch:to:") for name in names)
    assert all(isinstance(checkpoint["ts"], int) for checkpoint, _ in rows)  # from the id
    before = await loaded(saver, thread)
    latest = before[0][0]
    assert all(datetime.fromisoformat(c["ts"]).tzinfo == UTC for c, _ in before)
    async with saver._cursor() as cur:
        await cur.execute(ACTIVITY_SQL)
        activity = {r["thread_id"]: r["last_activity"] for r in await cur.fetchall()}
    assert activity[thread] == max(datetime.fromisoformat(c["ts"]) for c, _ in before)
    assert {"run_id", "objective", "messages", "branch:to:plan"} <= set(latest["channel_versions"])
    assert latest["versions_seen"]["plan"] == {"branch:to:plan": latest["versions_seen"]["plan"]["branch:to:plan"]}
    assert all(COUNTERS in metadata for _, metadata in before[:-1])

    async with saver._cursor() as cur:
        await cur.execute(STOCK_FORM_SQL, ([thread],))
    stock_rows = await raw_rows(database_url, thread)
    assert not any({"grouped", "seen"} & set(checkpoint) for checkpoint, _ in stock_rows)
    assert not any(COUNTERS_SHORT in metadata for _, metadata in stock_rows)
    assert await loaded(saver, thread) == before
    state = await app.aget_state(config(thread))
    assert state.values["halt_reason"] == "completed" and len(state.values["messages"]) == 6


class Pair(TypedDict):
    kept: list[str]
    changed: list[str]


async def test_keep_latest_prune_keeps_what_stock_rows_and_grouped_rows_share(
    saver: WardenSaver,
) -> None:
    """A thread the stock saver began and Warden continued: a value neither changed since
    is referenced by stock rows (flat) and Warden's (grouped); pruning the stock rows
    must not take its blob."""
    builder = StateGraph(Pair)
    builder.add_node("step", lambda state: {"changed": [*state["changed"], "x"]})
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    thread = str(uuid.uuid4())
    stock = builder.compile(checkpointer=AsyncPostgresSaver(saver.conn))
    await stock.ainvoke({"kept": ["stock value"], "changed": []}, config(thread), durability="sync")
    warden = builder.compile(checkpointer=saver)
    await warden.ainvoke({"changed": ["warden"]}, config(thread), durability="sync")
    before = await warden.aget_state(config(thread))
    assert before.values == {"kept": ["stock value"], "changed": ["warden", "x"]}

    await saver.aprune([thread], strategy="keep_latest")
    assert len([t async for t in saver.alist(config(thread))]) == 1
    after = await warden.aget_state(config(thread))
    assert after.values == before.values


async def test_delete_for_runs_keeps_a_trigger_value_another_run_references(
    saver: WardenSaver, database_url: str
) -> None:
    """Two runs' checkpoints reference one value of a trigger channel (`grouped` lists it
    as ">node"): deleting one run keeps the value for the other."""
    thread = str(uuid.uuid4())
    version = compact_version(1)
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"branch:to:node": None, "kept": ["value"]}
    checkpoint["channel_versions"] = {"branch:to:node": version, "kept": version}
    first = await saver.aput(
        config(thread), checkpoint, {"run_id": "one"}, dict(checkpoint["channel_versions"])
    )
    second = empty_checkpoint() | {
        "channel_values": checkpoint["channel_values"],
        "channel_versions": checkpoint["channel_versions"],
    }
    await saver.aput(first, second, {"run_id": "two"}, {})
    rows = await raw_rows(database_url, thread)
    assert all(row["grouped"] == {version: [">node", "kept"]} for row, _ in rows)

    await saver.adelete_for_runs(["two"])
    kept = await saver.aget_tuple(config(thread))
    assert kept is not None and kept.metadata["run_id"] == "one"
    assert kept.checkpoint["channel_values"] == {"branch:to:node": None, "kept": ["value"]}


def count_statements(saver: WardenSaver, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every statement the saver sends from now on."""
    sent: list[str] = []
    opened = saver._cursor

    class Recording:
        def __init__(self, cur: Any) -> None:
            self._cur = cur

        async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(query))
            return await self._cur.execute(query, *args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._cur, name)

    @asynccontextmanager
    async def counting(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with opened(*args, **kwargs) as cur:
            yield Recording(cur)

    monkeypatch.setattr(saver, "_cursor", counting)
    return sent


async def test_a_super_step_is_one_statement(
    saver: WardenSaver, database_url: str, workspace: Path, outbox: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task's writes go in with its step's checkpoint: one statement a step, and the
    thread loads as it would have from writes stored on their own."""
    sent = count_statements(saver, monkeypatch)
    app, thread = await run_thread(saver, workspace, outbox, reads=2)
    rows = await thread_rows(database_url, thread)
    assert rows["checkpoint_writes"] > 0
    stores = [q for q in sent if "INSERT" in q]
    assert len(stores) == rows["checkpoints"], stores  # no statement of writes alone
    # Every step after the input's took its tasks' writes along.
    assert sum("INSERT INTO checkpoint_writes" in q for q in stores) == rows["checkpoints"] - 1
    values = (await app.aget_state(config(thread))).values
    assert values["halt_reason"] == "completed"
    assert [m.type for m in values["messages"]] == ["human", *["ai", "tool"] * 2, "ai"]


async def test_held_writes_are_stored_without_their_checkpoint(
    saver: WardenSaver, database_url: str
) -> None:
    """Writes whose step never checkpoints (a cancelled run) are not lost: a read, a
    special write, or `hold_at_most` seconds store them, in their order."""
    thread = str(uuid.uuid4())
    cp = empty_checkpoint()
    stored = await saver.aput(config(thread), cp, {"source": "input"}, {})
    saver.hold_at_most = 3600  # only a read or a special write stores them, at first
    await saver.aput_writes(stored, [("items", "a")], "task-1", "~__pregel_pull, n")
    assert (await thread_rows(database_url, thread))["checkpoint_writes"] == 0  # held
    loaded = await saver.aget_tuple(stored)  # a read stores them first
    assert loaded is not None and loaded.pending_writes == [("task-1", "items", "a")]
    assert (await thread_rows(database_url, thread))["checkpoint_writes"] == 1

    await saver.aput_writes(stored, [("items", "b")], "task-2", "~__pregel_pull, n")
    await saver.aput_writes(stored, [("__error__", ValueError("x"))], "task-3", "~__pregel_pull, m")
    assert (await thread_rows(database_url, thread))["checkpoint_writes"] == 3

    saver.hold_at_most = 0.05
    await saver.aput_writes(stored, [("items", "c")], "task-4", "~__pregel_pull, n")
    deadline = time.monotonic() + 30
    while (await thread_rows(database_url, thread))["checkpoint_writes"] < 4:  # no read needed
        assert time.monotonic() < deadline, "held writes were never stored"
        await asyncio.sleep(0.05)
    loaded = await saver.aget_tuple(stored)
    assert loaded is not None
    assert sorted((t, c) for t, c, _ in loaded.pending_writes) == [
        ("task-1", "items"), ("task-2", "items"), ("task-3", "__error__"), ("task-4", "items")
    ]
