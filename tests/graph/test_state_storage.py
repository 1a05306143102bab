"""What a run stores per tool call: deltas, not copies, and compact checkpoint rows.

The benchmark's workload (one 3 KB observation per call) on Warden's saver; the bounds
are generous, and storing whole `usage`/`loop` values per super-step, or a dozen inline
values per row, exceeds them several times over.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.runnables.config import patch_config
from langgraph._internal._constants import CONFIG_KEY_RUNTIME
from langgraph.channels import LastValue
from langgraph.runtime import Runtime
from langgraph.types import Command

from bench.checkpointing import runner_for
from bench.workload import make_model, make_tool
from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.scripted import ScriptedChatModel
from graph.state import LoopState, Usage
from tests.conftest import call, turn
from tools.builtin import default_tools

pytestmark = pytest.mark.postgres

CALLS = 20

BYTES_SQL = """
SELECT channel, sum(bytes) AS bytes, sum(n) AS n FROM (
    SELECT channel, length(blob) AS bytes, 1 AS n FROM checkpoint_writes WHERE thread_id = %(t)s
    UNION ALL
    SELECT channel, length(blob), 0 FROM checkpoint_blobs WHERE thread_id = %(t)s
) AS stored GROUP BY channel
"""


async def stored(url: str, thread_id: str) -> tuple[dict[str, tuple[int, int]], float]:
    """Return bytes and write count per channel, and the mean checkpoint row length."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(BYTES_SQL, {"t": thread_id})
        channels = {row[0]: (int(row[1] or 0), int(row[2])) for row in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT avg(length(checkpoint::text) + length(metadata::text)) FROM checkpoints "
            "WHERE thread_id = %s",
            (thread_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    return channels, float(row[0])


async def test_a_run_stores_deltas_and_compact_rows(saver: Any, database_url: str) -> None:
    runner = runner_for("warden", make_model(CALLS), make_tool(3072), saver, CALLS)
    thread = str(uuid.uuid4())
    result = await runner.start(thread)
    runner.check(result, CALLS)
    assert len(result["loop"]["observations"]) == CALLS  # the window (20) is full and whole

    channels, row_length = await stored(database_url, thread)
    # Whole copies: ~2.5 KB of `usage` and ~0.8 KB of `loop` per call; deltas: ~0.13 /
    # 0.06 (~0.47 KB of `usage` with long keys and the fields the others imply).
    assert channels["usage"][0] < CALLS * 250
    assert channels["loop"][0] < CALLS * 150
    # Written when they change, not at every step.
    assert channels["objective"][1] == 1
    assert channels["budget_warnings"][1] <= 3  # the reset at the start, two soft warnings
    # Rows were ~1500 characters with 19-character versions and inline values.
    assert row_length < 1000

    state = await runner.app.aget_state({"configurable": {"thread_id": thread}})
    assert state.values["usage"] == result["usage"] and state.values["loop"] == result["loop"]


async def test_a_thread_with_whole_usage_and_loop_values_resumes(
    saver: Any, workspace: Path, outbox: Path
) -> None:
    """A thread whose `usage` and `loop` were stored whole (before they were delta
    channels) resumes mid-run from those values and adds this run's deltas to them."""
    email = {"to": "ops@example.com", "subject": "s", "body": "b"}
    model = ScriptedChatModel.from_turns([turn("mailing", call("send_email", **email)), turn("sent")])
    tools = default_tools(workspace, outbox)
    cfg = {"configurable": {"thread_id": str(uuid.uuid4())}}
    app = compile_graph(build_graph(model=model, tools=tools), saver)
    paused = await app.ainvoke({"task": "mail"}, cfg, context=Context(), durability="sync")
    assert "__interrupt__" in paused

    # Rewrite the paused state as the earlier graph stored it: plain last-value channels.
    earlier = build_graph(model=model, tools=tools)
    earlier.channels["usage"] = LastValue(Usage)
    earlier.channels["loop"] = LastValue(LoopState)
    whole_usage = paused["usage"] | {"model_calls": 7, "tool_calls": 5, "steps": 30}
    whole_loop = paused["loop"] | {"calls": ["x", "y"], "strikes": 1, "last": "earlier"}
    # Routers need the run context, which update_state reads from this config key.
    with_runtime = patch_config(cfg, configurable={CONFIG_KEY_RUNTIME: Runtime(context=Context())})
    await compile_graph(earlier, saver).aupdate_state(
        with_runtime, {"usage": whole_usage, "loop": whole_loop}, as_node="plan"
    )
    stored_whole = await saver.aget_tuple(cfg)
    assert stored_whole is not None
    assert stored_whole.checkpoint["channel_values"]["usage"] == whole_usage

    done = await app.ainvoke(
        Command(resume={"decisions": [{"type": "approve"}], "reviewer": "alice"}),
        cfg, context=Context(), durability="sync",
    )
    assert done["halt_reason"] == "completed" and done["final_answer"] == "sent"
    usage = done["usage"]
    # approve, act, observe, plan, halt added their steps to the stored counters.
    assert (usage["model_calls"], usage["tool_calls"], usage["steps"]) == (8, 6, 35)
    assert done["loop"]["calls"][:2] == ["x", "y"] and len(done["loop"]["calls"]) == 3
    assert (done["loop"]["strikes"], done["loop"]["last"]) == (1, "earlier")
    reloaded = await app.aget_state(cfg)
    assert reloaded.values["usage"] == usage and reloaded.values["loop"] == done["loop"]


async def test_usage_deltas_stream_long_and_are_stored_compact(saver: Any) -> None:
    """Stream consumers (Studio's node updates, API clients) see usage deltas with their
    long keys; only the stored writes are compact (the saver's `stored_write`)."""
    runner = runner_for("warden", make_model(2), make_tool(64), saver, 2)
    thread = str(uuid.uuid4())
    config = runner.config(thread)
    deltas = []
    async for update in runner.app.astream(
        {"task": "fetch"}, config, context=runner.ctx, stream_mode="updates", durability="sync"
    ):
        for node, written in update.items():
            usage = (written or {}).get("usage")
            if node in ("act", "observe") and isinstance(usage, dict):
                deltas.append(usage)
    assert deltas and all("steps" in d and "node_seconds" in d for d in deltas)
    async with saver._cursor() as cur:
        await cur.execute(
            "SELECT type, blob FROM checkpoint_writes WHERE thread_id = %s AND channel = 'usage'",
            (thread,),
        )
        rows = await cur.fetchall()
    loaded = [saver.serde.loads_typed((r["type"], r["blob"])) for r in rows]
    compact = [v for v in loaded if isinstance(v, dict) and "n" in v]  # node_seconds, short
    assert len(compact) >= len(deltas)
    assert not any("node_seconds" in v for v in loaded if isinstance(v, dict))
