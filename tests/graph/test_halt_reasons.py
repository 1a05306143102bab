"""Every halt reason, reached through the real compiled graph on real Postgres.

The model is Warden's scripted model; tools, policy, budgets, loop detection and
checkpoints are the real ones. Each test asserts the halt reason and the counters or
side effects that prove the control fired at the right moment.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.types import Command

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.models import make_model_factory
from graph.pricing import ModelPrice
from graph.runtime import Warden
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.builtin import default_tools

MODEL = "gpt-4o-mini"


async def run(
    saver: Any,
    workspace: Path,
    outbox: Path,
    turns: list[dict[str, Any]],
    *,
    task: str | None = "do the task",
    **budgets: Any,
) -> dict[str, Any]:
    """Compile the real graph around a scripted model and run one task to its end."""
    model = ScriptedChatModel.from_turns(turns, model=MODEL)
    app = compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), saver)
    ctx = Context(**budgets)
    cfg = {
        "configurable": {"thread_id": str(uuid.uuid4())},
        "recursion_limit": ctx.recursion_limit(),
    }
    payload: dict[str, Any] = {} if task is None else {"task": task}
    result = await app.ainvoke(payload, cfg, context=ctx, durability="sync")
    snapshot = await app.aget_state(cfg)
    assert snapshot.next == (), "the run must have ended"
    assert "__interrupt__" not in result
    return result


def tool_results(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def model_turns(result: dict[str, Any]) -> list[AIMessage]:
    return [m for m in result["messages"] if isinstance(m, AIMessage)]


def halted_notes(result: dict[str, Any]) -> list[ToolMessage]:
    return [
        m
        for m in tool_results(result)
        if m.response_metadata.get("warden", {}).get("refused") == "halted"
    ]


def sent_emails(outbox: Path) -> list[dict[str, Any]]:
    file = outbox / "outbox.jsonl"
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines()]


# --- completed -------------------------------------------------------------------


async def test_completed_sets_final_answer(saver, workspace: Path, outbox: Path) -> None:
    result = await run(
        saver,
        workspace,
        outbox,
        [turn("reading", call("read_file", path="notes.txt")), turn("The notes say alpha, beta.")],
    )
    assert result["halt_reason"] == "completed"
    assert result["final_answer"] == "The notes say alpha, beta."
    assert result["report"]["halt_reason"] == "completed"
    assert result["report"]["final_answer"] == "The notes say alpha, beta."
    usage = result["usage"]
    assert usage["model_calls"] == 2
    assert usage["tool_calls"] == 1
    assert usage["tool_calls_by_name"] == {"read_file": 1}
    assert (usage["input_tokens"], usage["output_tokens"]) == (200, 20)
    assert usage["last_input_tokens"] == 100
    assert usage["cost_usd"] > 0
    [read] = tool_results(result)
    assert read.status == "success" and read.text == "alpha\nbeta\n"
    assert result["stop"] is None
    assert result["objective"] == "do the task"


# --- max_steps -------------------------------------------------------------------


async def test_max_steps_stops_before_the_next_model_call(
    saver, workspace: Path, outbox: Path
) -> None:
    result = await run(
        saver,
        workspace,
        outbox,
        [
            turn("1", call("read_file", path="notes.txt")),
            turn("2", call("read_file", path="todo.md")),
            turn("3", call("list_files", path=".")),
            turn("never reached"),
        ],
        max_steps=2,
    )
    assert result["halt_reason"] == "max_steps"
    assert result["halt_detail"] == "2 of 2 model calls used"
    assert result["final_answer"] is None
    assert result["usage"]["model_calls"] == 2
    assert len(model_turns(result)) == 2
    assert result["usage"]["tool_calls"] == 2
    assert all(m.status == "success" for m in tool_results(result))


# --- max_tool_calls --------------------------------------------------------------


async def test_max_tool_calls_refuses_the_crossing_batch(
    saver, workspace: Path, outbox: Path
) -> None:
    # The second batch (read_file + send_email) would make 3 calls with a limit of 2:
    # none of it runs, not even the harmless read, and nobody is asked to approve.
    result = await run(
        saver,
        workspace,
        outbox,
        [
            turn("1", call("read_file", path="notes.txt")),
            turn(
                "2",
                call("read_file", path="todo.md"),
                call("send_email", to="ops@example.com", subject="s", body="b"),
            ),
            turn("never reached"),
        ],
        max_tool_calls=2,
    )
    assert result["halt_reason"] == "max_tool_calls"
    assert result["halt_detail"] == "1 of 2 tool calls used; the next batch has 2"
    assert result["usage"]["tool_calls"] == 1
    assert result["usage"]["tool_calls_by_name"] == {"read_file": 1}
    assert result["usage"]["model_calls"] == 2
    assert sent_emails(outbox) == []
    assert result["approvals"] == []
    notes = halted_notes(result)
    assert [m.name for m in notes] == ["read_file", "send_email"]
    assert all(m.text.startswith("Not executed: the run halted (max_tool_calls") for m in notes)
    assert all(m.status == "error" for m in notes)
    # The only successful result is the first read; todo.md was never read.
    assert [m.text for m in tool_results(result) if m.status == "success"] == ["alpha\nbeta\n"]


async def test_max_tool_calls_per_tool(saver, workspace: Path, outbox: Path) -> None:
    result = await run(
        saver,
        workspace,
        outbox,
        [
            turn("1", call("read_file", path="notes.txt")),
            turn("2", call("list_files", path="."), call("read_file", path="todo.md")),
            turn("never reached"),
        ],
        max_tool_calls_per_tool={"read_file": 1},
    )
    assert result["halt_reason"] == "max_tool_calls"
    assert result["halt_detail"] == "1 of 1 calls to read_file used; the next batch has 1"
    # The whole crossing batch is refused: list_files did not run either.
    assert result["usage"]["tool_calls"] == 1
    assert result["usage"]["tool_calls_by_name"] == {"read_file": 1}
    notes = halted_notes(result)
    assert [m.name for m in notes] == ["list_files", "read_file"]
    assert not any("todo.md" in m.text or "ship warden" in m.text for m in tool_results(result))


async def test_max_tool_calls_zero_never_runs_an_email(
    saver, workspace: Path, outbox: Path
) -> None:
    result = await run(
        saver,
        workspace,
        outbox,
        [turn("send", call("send_email", to="a@example.com", subject="s", body="b"))],
        max_tool_calls=0,
    )
    assert result["halt_reason"] == "max_tool_calls"
    assert result["usage"]["tool_calls"] == 0
    assert sent_emails(outbox) == []
    assert [m.name for m in halted_notes(result)] == ["send_email"]


# --- max_tokens ------------------------------------------------------------------


async def test_max_tokens_halts_before_the_call_that_would_cross(
    saver, workspace: Path, outbox: Path
) -> None:
    # Each call uses 100 in + 10 out. After one call: 110 used, next needs ~100 -> 210 <= 250.
    # After two: 220 used, next needs ~100 -> 320 > 250, so the third call never starts.
    result = await run(
        saver,
        workspace,
        outbox,
        [
            turn("1", call("read_file", path="notes.txt")),
            turn("2", call("read_file", path="todo.md")),
            turn("3", call("list_files", path=".")),
            turn("never reached"),
        ],
        max_tokens=250,
    )
    assert result["halt_reason"] == "max_tokens"
    usage = result["usage"]
    assert usage["model_calls"] == 2
    assert usage["input_tokens"] + usage["output_tokens"] == 220
    assert usage["input_tokens"] + usage["output_tokens"] <= 250
    assert result["halt_detail"].startswith("220 of 250 tokens used")
    assert usage["tool_calls"] == 2


# --- max_cost --------------------------------------------------------------------


async def test_max_cost_with_configured_prices(saver, workspace: Path, outbox: Path) -> None:
    # $1000 per million tokens: each 110-token call costs $0.11. After two calls $0.22 is
    # spent and the projected third ($0.33) would pass $0.25.
    price = ModelPrice(input_per_mtok=1000, output_per_mtok=1000)
    result = await run(
        saver,
        workspace,
        outbox,
        [
            turn("1", call("read_file", path="notes.txt")),
            turn("2", call("read_file", path="todo.md")),
            turn("3", call("list_files", path=".")),
            turn("never reached"),
        ],
        max_cost=0.25,
        prices={MODEL: price},
    )
    assert result["halt_reason"] == "max_cost"
    usage = result["usage"]
    assert usage["model_calls"] == 2
    assert abs(usage["cost_usd"] - 0.22) < 1e-9
    assert usage["cost_usd"] <= 0.25
    assert result["halt_detail"] == "$0.220000 of $0.250000 spent"


# --- max_seconds -----------------------------------------------------------------


async def test_max_seconds_cuts_off_a_slow_model_call(saver, workspace: Path, outbox: Path) -> None:
    started = time.perf_counter()
    result = await run(
        saver,
        workspace,
        outbox,
        [
            {
                "content": "too slow",
                "delay_seconds": 30,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            }
        ],
        max_seconds=0.5,
    )
    elapsed = time.perf_counter() - started
    assert result["halt_reason"] == "max_seconds"
    assert "0.5s budget" in result["halt_detail"]
    assert elapsed < 5, f"the model call was not cut off ({elapsed:.1f}s)"
    usage = result["usage"]
    assert usage["model_calls"] == 0
    assert 0.4 <= usage["active_seconds"] < 5
    assert model_turns(result) == []


async def test_max_seconds_counts_time_across_model_calls(
    saver, workspace: Path, outbox: Path
) -> None:
    # The first call takes 0.4s of a 2s budget; the second is cut off at the remainder.
    # (The slack, not the 0.4s, must hold the nodes around the first call on a loaded
    # machine: with 0.2s left the run could halt before the tool ran.)
    started = time.perf_counter()
    result = await run(
        saver,
        workspace,
        outbox,
        [
            {**turn("1", call("read_file", path="notes.txt")), "delay_seconds": 0.4},
            {**turn("2", call("read_file", path="todo.md")), "delay_seconds": 30},
        ],
        max_seconds=2.0,
    )
    assert time.perf_counter() - started < 10
    assert result["halt_reason"] == "max_seconds"
    assert result["usage"]["model_calls"] == 1
    assert result["usage"]["tool_calls"] == 1
    assert 1.95 <= result["usage"]["active_seconds"] < 10


# --- loop ------------------------------------------------------------------------


def loop_refusals(result: dict[str, Any]) -> list[ToolMessage]:
    return [
        m
        for m in tool_results(result)
        if m.response_metadata.get("warden", {}).get("refused") == "loop"
    ]


def warden_notes(result: dict[str, Any]) -> list[HumanMessage]:
    return [m for m in result["messages"] if isinstance(m, HumanMessage) and m.name == "warden"]


async def test_loop_identical_calls_warned_then_halted(
    saver, workspace: Path, outbox: Path
) -> None:
    same = call("read_file", path="notes.txt")
    result = await run(
        saver,
        workspace,
        outbox,
        [turn("1", same), turn("2", same), turn("3", same), turn("4", same), turn("never")],
    )
    assert result["halt_reason"] == "loop"
    assert result["halt_detail"] == (
        "loop continued after a warning: the same tool call with the same arguments was made "
        "4 times"
    )
    usage = result["usage"]
    assert usage["model_calls"] == 4
    assert usage["tool_calls"] == 2  # the third was refused, the fourth halted the run
    [refused] = loop_refusals(result)
    assert refused.tool_call_id == "call_3_1"
    assert refused.status == "error"
    assert refused.text.startswith("Not executed: loop detected (the same tool call")
    assert result["loop"]["strikes"] == 1
    [halted] = halted_notes(result)
    assert halted.tool_call_id == "call_4_1"


async def test_loop_cycle_of_two_calls(saver, workspace: Path, outbox: Path) -> None:
    a = call("read_file", path="notes.txt")
    b = call("list_files", path=".")
    result = await run(
        saver,
        workspace,
        outbox,
        [turn(str(i), a if i % 2 else b) for i in range(1, 8)] + [turn("never")],
        # Repeats and identical results would be caught earlier; isolate the cycle rule.
        loop_repeat_threshold=10,
        loop_observation_repeats=10,
    )
    assert result["halt_reason"] == "loop"
    assert result["halt_detail"] == (
        "loop continued after a warning: a cycle of 2 tool calls repeated 3 times"
    )
    usage = result["usage"]
    assert usage["model_calls"] == 7
    assert usage["tool_calls"] == 5  # A,B,A,B,A ran; the 6th (B) was refused, the 7th halted
    assert usage["tool_calls_by_name"] == {"read_file": 3, "list_files": 2}
    [refused] = loop_refusals(result)
    assert refused.tool_call_id == "call_6_1"
    assert "a cycle of 2 tool calls repeated 3 times" in refused.text
    assert [m.tool_call_id for m in halted_notes(result)] == ["call_7_1"]


async def test_loop_same_tool_error_repeated(saver, workspace: Path, outbox: Path) -> None:
    missing = call("read_file", path="missing.txt")
    result = await run(
        saver,
        workspace,
        outbox,
        [turn(str(i), missing) for i in range(1, 5)] + [turn("never")],
        loop_repeat_threshold=10,  # let the identical calls run, so their errors repeat
    )
    assert result["halt_reason"] == "loop"
    assert result["halt_detail"] == "loop continued after a warning: the same tool error repeated"
    usage = result["usage"]
    assert usage["model_calls"] == 4
    assert usage["tool_calls"] == 4
    errors = tool_results(result)
    assert [m.status for m in errors] == ["error"] * 4
    assert all(m.text == "read_file failed: no such file: 'missing.txt'" for m in errors)
    # The warning came once, right after the third error, and the model was called again.
    [note] = warden_notes(result)
    assert "the same tool error repeated" in note.text
    messages = result["messages"]
    index = messages.index(note)
    assert messages[index - 1].tool_call_id == "call_3_1"
    assert isinstance(messages[index + 1], AIMessage)
    assert result["loop"]["strikes"] == 2


async def test_loop_same_observation_with_different_args(
    saver, workspace: Path, outbox: Path
) -> None:
    # ".", "./", "./." and ".//" are different arguments that list the same directory.
    paths = [".", "./", "./.", ".//"]
    result = await run(
        saver,
        workspace,
        outbox,
        [turn(str(i), call("list_files", path=p)) for i, p in enumerate(paths, 1)]
        + [turn("never")],
    )
    assert result["halt_reason"] == "loop"
    assert result["halt_detail"] == (
        "loop continued after a warning: the same tool result repeated with no new information"
    )
    results = tool_results(result)
    assert [m.text for m in results] == ["notes.txt\ntodo.md"] * 4
    assert len(set(result["loop"]["calls"])) == 4  # four distinct calls, no call loop
    assert result["usage"]["tool_calls"] == 4
    assert result["usage"]["model_calls"] == 4
    [note] = warden_notes(result)
    assert "no new information" in note.text


async def test_different_args_to_the_same_tool_do_not_halt(
    saver, workspace: Path, outbox: Path
) -> None:
    names = [f"part{i}.txt" for i in range(6)]
    for i, name in enumerate(names):
        (workspace / name).write_text(f"content {i}\n")
    result = await run(
        saver,
        workspace,
        outbox,
        [turn(str(i), call("read_file", path=n)) for i, n in enumerate(names, 1)]
        + [turn("read them all")],
    )
    assert result["halt_reason"] == "completed"
    assert result["final_answer"] == "read them all"
    assert result["usage"]["tool_calls"] == 6
    assert result["loop"]["strikes"] == 0
    assert warden_notes(result) == [] and loop_refusals(result) == []
    assert [m.text for m in tool_results(result)] == [f"content {i}\n" for i in range(6)]


# --- rejected --------------------------------------------------------------------


async def _reject_until_halt(
    saver: Any, workspace: Path, outbox: Path, **budgets: Any
) -> tuple[dict[str, Any], int]:
    turns = [
        turn(f"try {i}", call("send_email", to="ops@example.com", subject=f"s{i}", body="b"))
        for i in range(1, 5)
    ] + [turn("never")]
    model = ScriptedChatModel.from_turns(turns, model=MODEL)
    app = compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), saver)
    ctx = Context(**budgets)
    cfg = {
        "configurable": {"thread_id": str(uuid.uuid4())},
        "recursion_limit": ctx.recursion_limit(),
    }
    result = await app.ainvoke({"task": "email ops"}, cfg, context=ctx, durability="sync")
    interrupts = 0
    while "__interrupt__" in result:
        interrupts += 1
        decision = {
            "decisions": [{"type": "reject", "message": f"no {interrupts}"}],
            "reviewer": "rita",
        }
        result = await app.ainvoke(Command(resume=decision), cfg, context=ctx, durability="sync")
    assert (await app.aget_state(cfg)).next == ()
    return result, interrupts


async def test_rejected_after_max_rejections(saver, workspace: Path, outbox: Path) -> None:
    result, interrupts = await _reject_until_halt(saver, workspace, outbox)
    assert result["halt_reason"] == "rejected"
    assert result["halt_detail"] == "3 tool call(s) rejected in this run (limit 3)"
    assert interrupts == 3
    assert result["usage"]["rejections"] == 3
    assert result["usage"]["model_calls"] == 3
    assert result["usage"]["tool_calls"] == 0
    assert sent_emails(outbox) == []
    assert [(a["decision"], a["reviewer"], a["message"]) for a in result["approvals"]] == [
        ("reject", "rita", "no 1"),
        ("reject", "rita", "no 2"),
        ("reject", "rita", "no 3"),
    ]


async def test_rejected_with_max_rejections_one(saver, workspace: Path, outbox: Path) -> None:
    result, interrupts = await _reject_until_halt(saver, workspace, outbox, max_rejections=1)
    assert result["halt_reason"] == "rejected"
    assert result["halt_detail"] == "1 tool call(s) rejected in this run (limit 1)"
    assert interrupts == 1
    assert result["usage"]["rejections"] == 1
    assert result["usage"]["model_calls"] == 1
    assert sent_emails(outbox) == []
    [rejected] = tool_results(result)
    assert rejected.text.startswith("Rejected by reviewer rita: no 1.")


# --- cancelled -------------------------------------------------------------------


async def test_cancelled_while_awaiting_approval(
    saver, workspace: Path, outbox: Path, tmp_path: Path
) -> None:
    script = tmp_path / "cancel.json"
    script.write_text(
        json.dumps(
            {
                "model": MODEL,
                "turns": [
                    turn(
                        "send it", call("send_email", to="ops@example.com", subject="s", body="b")
                    ),
                    turn("sent"),
                ],
            }
        )
    )
    warden = Warden(saver, outbox=outbox, model_factory=make_model_factory())
    ctx = Context(model=f"scripted:{script.resolve()}")
    paused = await warden.run("email ops", context=ctx, workspace=workspace)
    assert paused.status == "awaiting_approval"
    assert paused.pending_approval is not None
    assert paused.pending_approval["action_requests"][0]["name"] == "send_email"

    outcome = await warden.cancel(paused.thread_id, reason="operator said stop")
    assert outcome.status == "halted"
    assert outcome.exit_code == 3
    assert outcome.halt_reason == "cancelled"
    assert outcome.halt_detail == "operator said stop"
    assert outcome.pending_approval is None
    assert outcome.usage["tool_calls"] == 0
    assert outcome.usage["model_calls"] == 1
    assert sent_emails(outbox) == []

    status = await warden.status(paused.thread_id)
    assert (status.status, status.halt_reason) == ("halted", "cancelled")
    history = await warden.history(paused.thread_id)
    last = history["messages"][-1]
    assert last["type"] == "tool" and last["name"] == "send_email"
    assert last["content"].startswith("Not executed: the run halted (cancelled")
    assert history["report"]["halt_reason"] == "cancelled"


# --- error -----------------------------------------------------------------------


async def test_error_when_the_script_runs_out(saver, workspace: Path, outbox: Path) -> None:
    result = await run(saver, workspace, outbox, [turn("1", call("read_file", path="notes.txt"))])
    assert result["halt_reason"] == "error"
    assert "ran out of turns" in result["halt_detail"]
    assert "turn 2 was requested" in result["halt_detail"]
    assert result["usage"]["model_calls"] == 1
    assert result["usage"]["tool_calls"] == 1
    assert result["final_answer"] is None


async def test_error_on_malformed_tool_call(saver, workspace: Path, outbox: Path) -> None:
    result = await run(
        saver,
        workspace,
        outbox,
        [
            {
                "content": "reading",
                "tool_calls": [{"name": "read_file", "args": '{"path": "notes.txt"'}],
                "usage": {"input_tokens": 10, "output_tokens": 5},
            },
            turn("never"),
        ],
    )
    assert result["halt_reason"] == "error"
    assert result["halt_detail"].startswith("model returned a malformed tool call 'read_file'")
    assert result["usage"]["tool_calls"] == 0
    assert tool_results(result) == []
    # The malformed call was still made and paid for, and its turn is kept for the record.
    assert (result["usage"]["model_calls"], result["usage"]["input_tokens"]) == (1, 10)
    assert [m.invalid_tool_calls[0]["name"] for m in model_turns(result)] == ["read_file"]


async def test_error_without_a_task(saver, workspace: Path, outbox: Path) -> None:
    result = await run(saver, workspace, outbox, [turn("never")], task=None)
    assert result["halt_reason"] == "error"
    assert result["halt_detail"] == "no task: send a `task` or a human message"
    assert result["usage"]["model_calls"] == 0
    assert model_turns(result) == []
