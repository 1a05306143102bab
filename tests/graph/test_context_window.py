"""Long runs under a context budget: what the scripted model is given at every step.

A 200-tool-call run with 3 KB observations would send ~300k tokens by the end if
`plan` sent the whole history; every prompt captured here (with a LangChain callback
handler) must stay under the configured budget, carry the task, and never hold a
tool result without its call or a call without its results. Summaries made by a
scripted summary model are shown, stored with their range and accounted; a failing
summariser falls back to truncation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool
from langgraph.checkpoint.memory import InMemorySaver

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.scripted import ScriptedChatModel
from nodes.context_window import tool_schemas
from nodes.tokens import TokenCounter, encoding
from tests.conftest import call, turn
from tests.support.prompts import PromptRecorder
from tools.registry import ToolSpec

TASK = "TASK-7F3A: fetch every record and report the checksum of the last one."
BUDGET = 8000
OBS_BYTES = 3072


def observation(i: int) -> str:
    """A 3 KB observation, different for every record."""
    seed = hashlib.sha256(str(i).encode()).hexdigest()
    return f"record {i}: " + (seed * (OBS_BYTES // len(seed) + 1))[: OBS_BYTES - 12]


def fetch_tool() -> ToolSpec:
    def fetch(i: int) -> str:
        """Fetch record number i."""
        return observation(i)

    return ToolSpec(tool=StructuredTool.from_function(fetch), tier="read")


def script(calls: int) -> ScriptedChatModel:
    turns = [turn("", call("fetch", i=i)) for i in range(calls)]
    return ScriptedChatModel.from_turns([*turns, turn("all records fetched")], model="gpt-4o-mini")


def context(calls: int, **extra: Any) -> Context:
    settings: dict[str, Any] = {
        "context_budget_tokens": BUDGET,
        "max_steps": calls + 5,
        "max_tool_calls": calls + 1,
        "max_tokens": 10**9,
        "max_cost": 1000.0,
        "max_seconds": 3600.0,
        "loop_observation_repeats": 20,
        "loop_window": 20,
    }
    return Context(**(settings | extra))


async def run(calls: int, ctx: Context) -> tuple[dict[str, Any], PromptRecorder]:
    recorder = PromptRecorder()
    app = compile_graph(build_graph(model=script(calls), tools=[fetch_tool()]), InMemorySaver())
    result = await app.ainvoke(
        {"task": TASK},
        {
            "configurable": {"thread_id": f"ctx-{uuid.uuid4().hex[:8]}"},
            "callbacks": [recorder],
            "recursion_limit": ctx.recursion_limit(),
        },
        context=ctx,
    )
    return result, recorder


def main_prompts(recorder: PromptRecorder) -> list[list[BaseMessage]]:
    return [p for p, m in zip(recorder.prompts, recorder.metadata, strict=True) if not m.get("warden_summary")]


def raw_tokens(prompt: list[BaseMessage]) -> int:
    """Tokens of everything the model was given, counted straight from the messages."""
    text = ""
    for m in prompt:
        text += m.text
        if isinstance(m, AIMessage):
            text += json.dumps([{"name": c["name"], "args": c["args"], "id": c["id"]} for c in m.tool_calls])
    schema = json.dumps(tool_schemas([fetch_tool().tool]), sort_keys=True)
    return len(encoding().encode(text + schema, disallowed_special=()))


def assert_pairs_whole(prompt: list[BaseMessage]) -> None:
    """Every tool result follows its call, and every call in the prompt has all its results."""
    open_calls: set[str] = set()
    for m in prompt:
        if isinstance(m, ToolMessage):
            assert m.tool_call_id in open_calls, f"orphaned tool result {m.tool_call_id}"
            open_calls.discard(m.tool_call_id)
            continue
        assert not open_calls, f"calls without results: {open_calls}"
        if isinstance(m, AIMessage):
            open_calls = {c["id"] for c in m.tool_calls}
    assert not open_calls


async def test_200_tool_calls_stay_under_the_budget() -> None:
    result, recorder = await run(200, context(200))

    assert result["halt_reason"] == "completed"
    assert result["usage"]["tool_calls"] == 200
    prompts = main_prompts(recorder)
    assert len(prompts) == 201
    counter = TokenCounter(None)
    schema_tokens = counter.schemas(tool_schemas([fetch_tool().tool]))
    for prompt in prompts:
        assert counter.messages(prompt) + schema_tokens <= BUDGET
        assert raw_tokens(prompt) <= BUDGET
        assert any(isinstance(m, HumanMessage) and TASK in m.text for m in prompt)
        assert_pairs_whole(prompt)
    # The budget was binding: the whole history is many times larger.
    full = sum(len(encoding().encode(m.text)) for m in result["messages"])
    assert full > 30 * BUDGET
    # The newest observation is always shown in full, fenced with its provenance.
    last = prompts[-1]
    newest = [m for m in last if isinstance(m, ToolMessage)][-1]
    assert observation(199) in newest.text
    assert "tool=fetch call_id=call_200_1 step=200" in newest.text
    # Older results are cut, and keep their provenance inside the fence.
    cut = [m for m in last if isinstance(m, ToolMessage) and "truncated=" in m.text]
    assert cut
    for m in cut:
        assert re.search(rf"tool=fetch call_id={m.tool_call_id} step=\d+ truncated=\d+ trust=untrusted>>", m.text)
        assert "more tokens of this result are not shown" in m.text
    # Earliest turns are left out with a note, not silently.
    assert any("earlier messages" in m.text and "are not shown" in m.text for m in last)
    usage = result["usage"]
    assert 0 < usage["last_prompt_tokens"] <= usage["peak_prompt_tokens"] <= BUDGET
    assert usage["last_prompt_tokens"] == counter.messages(last) + schema_tokens
    # Each model turn records the size of the prompt it was given.
    turns = [m for m in result["messages"] if isinstance(m, AIMessage)]
    sizes = [m.response_metadata["warden"]["prompt_tokens"] for m in turns]
    assert sizes == [counter.messages(p) + schema_tokens for p in prompts]
    assert max(sizes) == usage["peak_prompt_tokens"]
    assert usage["peak_prompt_tokens"] > BUDGET // 2


def summary_script(tmp_path: Path, count: int) -> Path:
    turns = [
        {"content": f"SUMMARY-{k}: records fetched so far look alike [call_1_1]",
         "usage": {"input_tokens": 1000, "output_tokens": 50}}
        for k in range(count)
    ]
    path = tmp_path / "summaries.json"
    path.write_text(json.dumps({"model": "gpt-4o-mini", "turns": turns}))
    return path


async def test_summaries_are_shown_stored_and_accounted(tmp_path: Path) -> None:
    calls = 60
    result, recorder = await run(calls, context(calls, summary_model=f"scripted:{summary_script(tmp_path, 50)}"))

    assert result["halt_reason"] == "completed"
    summaries = result["summaries"]
    assert summaries, "a summary was due and none was made"
    usage = result["usage"]
    assert usage["summary_calls"] == len(summaries) == sum(1 for m in recorder.metadata if m.get("warden_summary"))
    # Main turns report 100 + 10 tokens; each summary 1000 + 50: all of it counts.
    assert usage["input_tokens"] == 100 * (calls + 1) + 1000 * len(summaries)
    assert usage["output_tokens"] == 10 * (calls + 1) + 50 * len(summaries)
    assert usage["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in summaries) + 0.15e-6 * 100 * (calls + 1) + 0.6e-6 * 10 * (calls + 1), rel=1e-6)
    ids = [m.id for m in result["messages"]]
    for s in summaries:
        first, last = s["covers"]
        assert ids.index(first) < ids.index(last)
        assert s["tokens"] > 0 and s["steps"][0] == 1
    # The last prompt shows the latest summary, fenced with what it covers, instead of those steps.
    last = main_prompts(recorder)[-1]
    latest = summaries[-1]
    shown = [m for m in last if f"SUMMARY-{len(summaries) - 1}" in m.text]
    assert len(shown) == 1
    first_step, last_step = latest["steps"]
    assert f"source=summary steps={first_step}-{last_step} tools=fetch" in shown[0].text
    shown_calls = {c["id"] for m in last if isinstance(m, AIMessage) for c in m.tool_calls}
    assert f"call_{last_step}_1" not in shown_calls and f"call_{last_step + 1}_1" in shown_calls
    for prompt in main_prompts(recorder):
        assert raw_tokens(prompt) <= BUDGET
        assert any(TASK in m.text for m in prompt)
        assert_pairs_whole(prompt)


async def test_a_failing_summariser_falls_back_to_truncation(tmp_path: Path) -> None:
    calls = 40
    empty = summary_script(tmp_path, 0)  # every summary call fails: the script is exhausted
    result, recorder = await run(calls, context(calls, summary_model=f"scripted:{empty}"))

    assert result["halt_reason"] == "completed"
    assert result["summaries"] == []
    assert result["usage"]["summary_calls"] == 0
    failed = [w for w in result["budget_warnings"] if w.startswith("context: summary failed")]
    assert len(failed) == 1 and "ran out of turns" in failed[0]
    assert any(m.get("warden_summary") for m in recorder.metadata)  # it was tried
    for prompt in main_prompts(recorder):
        assert raw_tokens(prompt) <= BUDGET
        assert any(TASK in m.text for m in prompt)
        assert_pairs_whole(prompt)


async def test_a_task_larger_than_the_budget_stops_clearly() -> None:
    ctx = context(1, context_budget_tokens=600)
    recorder = PromptRecorder()
    app = compile_graph(build_graph(model=script(1), tools=[fetch_tool()]), InMemorySaver())
    result = await app.ainvoke(
        {"task": "word " * 2000},
        {"configurable": {"thread_id": "ctx-big-task"}, "callbacks": [recorder]},
        context=ctx,
    )
    assert result["halt_reason"] == "error"
    assert result["halt_detail"].startswith("context: the system prompt, tool schemas and task need")
    assert recorder.prompts == []


@pytest.fixture
def units(monkeypatch: pytest.MonkeyPatch) -> dict[int, Any]:
    """An empty cache of grouped histories (`context_window._UNITS`) for this test."""
    from collections import OrderedDict

    from nodes import context_window

    fresh: OrderedDict[int, Any] = OrderedDict()
    monkeypatch.setattr(context_window, "_UNITS", fresh)
    return fresh


async def test_a_finished_run_leaves_no_cached_grouping_of_its_history(
    monkeypatch: pytest.MonkeyPatch, units: dict[int, Any]
) -> None:
    # Memory: `plan` caches the grouping of the history it assembles (it holds the
    # messages); `halt` drops it, so a finished run's history is not kept alive by the
    # cache (a worker resuming long threads kept one per resume until eviction).
    from nodes import context_window

    seen: list[int] = []
    grouped = context_window.units_of

    def spying_units_of(history: Any) -> Any:
        out = grouped(history)
        seen.append(len(units))
        return out

    monkeypatch.setattr(context_window, "units_of", spying_units_of)
    result, _ = await run(3, context(3))
    assert result["halt_reason"] == "completed"
    assert seen and max(seen) == 1  # plan cached one grouping while the run went on
    assert len(units) == 0


async def test_a_run_paused_for_approval_leaves_no_cached_grouping(
    units: dict[int, Any], workspace: Path, outbox: Path
) -> None:
    # A run that stops at `approve` resumes from its checkpoint with new message
    # objects; its cached grouping is dropped when it pauses, not kept until eviction.
    from tools.builtin import default_tools

    email = {"to": "ops@example.com", "subject": "Incident", "body": "The disk is full."}
    model = ScriptedChatModel.from_turns([turn("Emailing ops.", call("send_email", **email)), turn("sent")])
    app = compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), InMemorySaver())
    cfg = {"configurable": {"thread_id": f"ctx-{uuid.uuid4().hex[:8]}"}}
    paused = await app.ainvoke({"task": "tell ops"}, cfg, context=Context())
    assert paused.get("__interrupt__"), paused
    assert len(units) == 0


async def test_a_cancelled_run_leaves_no_cached_grouping(units: dict[int, Any]) -> None:
    # A run cancelled mid-tool (a worker shutting down, a client gone) never reaches
    # `halt`; leaving its node by the exception drops its cached grouping all the same.
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(i: int) -> str:
        """Wait until released."""
        started.set()
        await release.wait()
        return f"record {i}"

    model = ScriptedChatModel.from_turns([turn("", call("slow", i=1)), turn("done")])
    tool = ToolSpec(tool=StructuredTool.from_function(coroutine=slow, name="slow", description="Slow."), tier="read")
    app = compile_graph(build_graph(model=model, tools=[tool]), InMemorySaver())
    cfg = {"configurable": {"thread_id": f"ctx-{uuid.uuid4().hex[:8]}"}}
    run = asyncio.create_task(app.ainvoke({"task": "fetch one slowly"}, cfg, context=Context()))
    await asyncio.wait_for(started.wait(), timeout=10)
    assert len(units) == 1  # plan cached the grouping; the run is inside `act`
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert len(units) == 0
