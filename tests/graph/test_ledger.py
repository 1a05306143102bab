"""The idempotency ledger through the real compiled graph on real Postgres.

A crash leaves exactly one trace the next process can see: a ledger row `started`
with no outcome (or `succeeded` with a result but no checkpoint after it). These tests
put such rows in place, as a crash would, and check what `act` does with them: replay,
re-run, reconcile, or ask a human, and never run a call twice. The tools write to a
log file on disk, so every side effect is counted where it happens.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.errors import is_invalid_resume
from langgraph.types import Command
from pydantic import ValidationError

from checkpoints.ledger import ledger_entries, ledger_key, purge_ledger
from checkpoints.saver import open_saver, saver_pool
from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.loops import args_hash
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.builtin import outbox_email_tool
from tools.email import message_id_for
from tools.idempotency import current_idempotency_key
from tools.registry import Reconciled, ToolSpec, as_spec


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def effect_tools(log: Path, outbox: Path) -> list[ToolSpec]:
    """Tools whose every execution appends one line to `log` (the effect to count)."""

    def append(label: str) -> str:
        with log.open("a") as fh:
            fh.write(label + "\n")
        return f"{label} done under key {current_idempotency_key()}"

    def stamp(label: str) -> str:
        """Stamp a label (not idempotent, no way to check afterwards)."""
        return append(f"stamp {label}")

    def touch(label: str) -> str:
        """Touch a label (idempotent)."""
        return append(f"touch {label}")

    def note(label: str) -> str:
        """Note a label (not idempotent, but it can be checked afterwards)."""
        return append(f"note {label}")

    def peek(label: str) -> str:
        """Look at a label (read-only)."""
        return append(f"peek {label}")

    def launch(label: str) -> str:
        """Launch something irreversible; it takes a moment."""
        time.sleep(0.5)
        return append(f"launch {label}")

    def noted(args: dict[str, Any], key: str) -> Reconciled:
        if f"note {args['label']}" in lines(log):
            return Reconciled("done", f"note {args['label']} done (found in the log)")
        return Reconciled("absent")

    return [
        as_spec(stamp, tier="write"),
        as_spec(touch, tier="write", idempotent=True),
        ToolSpec(tool=as_spec(note).tool, tier="write", reconcile=noted),
        as_spec(launch, tier="irreversible"),
        as_spec(peek, tier="read"),
        outbox_email_tool(outbox),
    ]


class Thread:
    """One thread of the real graph, with the tools above."""

    def __init__(self, saver: Any, tmp_path: Path, turns: list[dict[str, Any]], thread_id: str = ""):
        self.log = tmp_path / "effects.log"
        self.outbox = tmp_path / "outbox"
        self.turns = turns
        self.saver = saver
        self.pool = saver_pool(saver)
        self.thread_id = thread_id or str(uuid.uuid4())
        self.app = self.compiled(saver)
        self.ctx = Context()

    def compiled(self, saver: Any) -> Any:
        model = ScriptedChatModel.from_turns(self.turns, model="gpt-4o-mini")
        return compile_graph(
            build_graph(model=model, tools=effect_tools(self.log, self.outbox)), saver
        )

    def cfg(self) -> dict[str, Any]:
        return {
            "configurable": {"thread_id": self.thread_id},
            "recursion_limit": self.ctx.recursion_limit(),
        }

    async def invoke(self, payload: Any, app: Any = None, **kw: Any) -> dict[str, Any]:
        return await (app or self.app).ainvoke(
            payload, self.cfg(), context=self.ctx, durability="sync", **kw
        )

    async def until_act(self, task: str) -> None:
        """Start a run and stop it before `act`: the model turn exists, no tool ran."""
        await self.invoke({"task": task}, interrupt_before=["act"])

    async def key(self, call_id: str) -> str:
        """Return the ledger key `act` uses for a call: thread, model turn, call id."""
        state = await self.app.aget_state(self.cfg())
        turn = next(
            m
            for m in reversed(state.values["messages"])
            if isinstance(m, AIMessage) and any(c["id"] == call_id for c in m.tool_calls)
        )
        return ledger_key(self.thread_id, str(turn.id), call_id)

    async def decide(self, *decisions: dict[str, Any], app: Any = None) -> dict[str, Any]:
        return await self.invoke(
            Command(resume={"decisions": list(decisions), "reviewer": "alice"}), app
        )

    async def plant(
        self,
        call_id: str,
        tool: str,
        args: dict[str, Any],
        *,
        status: str = "started",
        result: dict[str, Any] | None = None,
    ) -> None:
        """Leave the ledger row a crash would leave for this call."""
        key = await self.key(call_id)
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO warden_ledger (key, thread_id, tool_call_id, tool, args_hash, "
                "status, result) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    key,
                    self.thread_id,
                    call_id,
                    tool,
                    args_hash(args),
                    status,
                    json.dumps(result) if result is not None else None,
                ),
            )


def results(state: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


def one_call(tool: str, label: str = "a") -> list[dict[str, Any]]:
    return [turn(f"using {tool}", call(tool, label=label)), turn("finished")]


async def test_every_call_is_claimed_and_recorded_under_its_key(saver, tmp_path: Path) -> None:
    thread = Thread(saver, tmp_path, one_call("stamp"))
    final = await thread.invoke({"task": "stamp a"})
    key = await thread.key("call_1_1")
    assert key.startswith(f"{thread.thread_id}:") and key.endswith(":call_1_1")
    [message] = results(final)
    assert message.text == f"stamp a done under key {key}"  # the tool saw its key
    [entry] = await ledger_entries(thread.pool, thread.thread_id)
    assert (entry.key, entry.tool, entry.status, entry.attempts) == (key, "stamp", "succeeded", 1)
    assert entry.args_hash == args_hash({"label": "a"})
    assert entry.result is not None and entry.result["content"] == message.text
    assert entry.finished_at is not None
    assert lines(thread.log) == ["stamp a"]


async def test_a_read_tier_call_runs_under_its_key_without_a_ledger_row(
    saver, tmp_path: Path
) -> None:
    """A read has no effect to repeat, so it skips the ledger's two round trips; a crash
    before its checkpoint means it simply runs again."""
    thread = Thread(saver, tmp_path, one_call("peek"))
    await thread.until_act("peek a")
    await thread.plant("call_1_1", "peek", {"label": "a"})  # in doubt, for any other tier
    key = await thread.key("call_1_1")
    [message] = results(await thread.invoke(None))
    assert message.text == f"peek a done under key {key}"
    assert lines(thread.log) == ["peek a"]
    [entry] = await ledger_entries(thread.pool, thread.thread_id)
    assert entry.status == "started"  # the planted row, untouched: no claim was made


async def test_a_finished_call_is_replayed_not_run(saver, tmp_path: Path) -> None:
    thread = Thread(saver, tmp_path, one_call("stamp"))
    stored = {"content": "stamp a done before the crash", "status": "success", "meta": {}}
    await thread.until_act("stamp a")
    await thread.plant("call_1_1", "stamp", {"label": "a"}, status="succeeded", result=stored)
    final = await thread.invoke(None)
    [message] = results(final)
    assert message.text == "stamp a done before the crash"
    assert message.response_metadata["warden"]["replayed"] is True
    assert lines(thread.log) == []
    assert final["usage"]["tool_calls"] == 1  # the crashed attempt's count was never saved
    assert final["halt_reason"] == "completed"


async def test_a_failed_call_is_replayed_as_the_same_error(saver, tmp_path: Path) -> None:
    thread = Thread(saver, tmp_path, one_call("stamp"))
    stored = {"content": "stamp failed: disk full", "status": "error", "meta": {"error": "X"}}
    await thread.until_act("stamp a")
    await thread.plant("call_1_1", "stamp", {"label": "a"}, status="failed", result=stored)
    [message] = results(await thread.invoke(None))
    assert (message.text, message.status) == ("stamp failed: disk full", "error")
    assert lines(thread.log) == []


async def test_in_doubt_call_goes_to_a_human_and_runs_once_when_approved(
    saver, tmp_path: Path
) -> None:
    thread = Thread(saver, tmp_path, one_call("stamp"))
    await thread.until_act("stamp a")
    await thread.plant("call_1_1", "stamp", {"label": "a"})
    paused = await thread.invoke(None)
    [interrupt] = paused["__interrupt__"]
    request = interrupt.value
    assert request["in_doubt"] == [True]
    assert request["tool_call_ids"] == ["call_1_1"]
    description = request["action_requests"][0]["description"]
    assert description.startswith("IN DOUBT: attempt 1 of `stamp` started at ")
    assert await thread.key("call_1_1") in description
    assert request["review_configs"][0]["allowed_decisions"] == ["approve", "reject", "respond"]
    assert lines(thread.log) == []  # never re-run blindly

    edit = {"type": "edit", "edited_action": {"name": "stamp", "args": {"label": "b"}}}
    with pytest.raises(ValidationError) as refused:
        await thread.decide(edit)
    assert is_invalid_resume(refused.value)
    assert "in doubt and cannot be edited" in str(refused.value)

    final = await thread.decide({"type": "approve"})
    assert final["halt_reason"] == "completed"
    assert lines(thread.log) == ["stamp a"]
    assert final["approvals"][-1]["in_doubt_attempt"] == 1
    [entry] = await ledger_entries(thread.pool, thread.thread_id)
    assert (entry.status, entry.attempts) == ("succeeded", 2)
    assert final["usage"]["tool_calls"] == 1


async def test_in_doubt_call_rejected_is_not_run_and_the_model_is_told(
    saver, tmp_path: Path
) -> None:
    thread = Thread(saver, tmp_path, one_call("stamp"))
    await thread.until_act("stamp a")
    await thread.plant("call_1_1", "stamp", {"label": "a"})
    await thread.invoke(None)
    final = await thread.decide({"type": "reject", "message": "it went out already"})
    assert final["halt_reason"] == "completed"
    assert lines(thread.log) == []
    [message] = results(final)
    assert message.status == "error"
    assert message.text.startswith("Outcome unknown: this call was started earlier")
    assert "it went out already" in message.text
    assert final["usage"]["rejections"] == 0  # a recovery decision, not a refusal
    assert final["usage"]["tool_calls"] == 0


async def test_in_doubt_idempotent_call_runs_again(saver, tmp_path: Path) -> None:
    thread = Thread(saver, tmp_path, one_call("touch"))
    await thread.until_act("touch a")
    await thread.plant("call_1_1", "touch", {"label": "a"})
    final = await thread.invoke(None)
    assert "__interrupt__" not in final
    assert lines(thread.log) == ["touch a"]
    [entry] = await ledger_entries(thread.pool, thread.thread_id)
    assert (entry.status, entry.attempts) == ("succeeded", 2)


@pytest.mark.parametrize("happened", [True, False], ids=["effect-there", "effect-absent"])
async def test_in_doubt_call_with_a_reconcile_hook_is_settled_by_it(
    saver, tmp_path: Path, happened: bool
) -> None:
    thread = Thread(saver, tmp_path, one_call("note"))
    await thread.until_act("note a")
    await thread.plant("call_1_1", "note", {"label": "a"})
    if happened:
        thread.log.write_text("note a\n")  # the crashed attempt did write it
    final = await thread.invoke(None)
    assert "__interrupt__" not in final
    assert lines(thread.log) == ["note a"]
    [message] = results(final)
    if happened:
        assert message.text == "note a done (found in the log)"
        assert message.response_metadata["warden"]["reconciled"] is True
    else:
        assert message.text.startswith("note a done under key ")
    [entry] = await ledger_entries(thread.pool, thread.thread_id)
    assert entry.status == "succeeded"


async def test_arguments_that_differ_from_the_ledger_are_refused(saver, tmp_path: Path) -> None:
    thread = Thread(saver, tmp_path, one_call("stamp", "a"))
    stored = {"content": "stamp b done", "status": "success", "meta": {}}
    await thread.until_act("stamp")
    await thread.plant("call_1_1", "stamp", {"label": "b"}, status="succeeded", result=stored)
    [message] = results(await thread.invoke(None))
    assert message.status == "error"
    assert message.response_metadata["warden"]["refused"] == "args_mismatch"
    assert lines(thread.log) == []


async def test_outbox_email_in_doubt_is_reconciled_from_the_outbox(saver, tmp_path: Path) -> None:
    email = {"to": "ops@example.com", "subject": "s", "body": "b"}
    thread = Thread(saver, tmp_path, [turn("mail", call("send_email", **email)), turn("sent")])
    paused = await thread.invoke({"task": "mail ops"})
    assert "__interrupt__" in paused
    # The approved attempt delivered, then its process died before recording it.
    key = await thread.key("call_1_1")
    await thread.plant("call_1_1", "send_email", email)
    thread.outbox.mkdir()
    delivered = {"message_id": message_id_for(key, "warden.local"), **email}
    (thread.outbox / "outbox.jsonl").write_text(json.dumps(delivered) + "\n")
    final = await thread.decide({"type": "approve"})
    assert final["halt_reason"] == "completed"
    assert len(lines(thread.outbox / "outbox.jsonl")) == 1
    [message] = results(final)
    assert message.text == f"email sent to ops@example.com (Message-ID {delivered['message_id']})"


async def test_outbox_email_carries_the_key_derived_message_id(saver, tmp_path: Path) -> None:
    email = {"to": "ops@example.com", "subject": "s", "body": "b"}
    thread = Thread(saver, tmp_path, [turn("mail", call("send_email", **email)), turn("sent")])
    await thread.invoke({"task": "mail ops"})
    await thread.decide({"type": "approve"})
    [sent] = [json.loads(x) for x in lines(thread.outbox / "outbox.jsonl")]
    key = await thread.key("call_1_1")
    assert sent["message_id"] == message_id_for(key, "warden.local")


async def test_racing_resumes_without_the_lock_run_the_effect_once(
    saver, database_url: str, tmp_path: Path
) -> None:
    """Two graph invocations (own pools, as two embedding apps) approve one call at once."""
    thread = Thread(saver, tmp_path, one_call("launch"))
    await thread.invoke({"task": "launch a"})
    async with open_saver(database_url, auto_migrate=False) as other:
        second = thread.compiled(other)
        outcomes = await asyncio.gather(
            thread.decide({"type": "approve"}), thread.decide({"type": "approve"}, app=second)
        )
    assert lines(thread.log) == ["launch a"]
    # One fork ran it; the other found it running and asked a human (or replayed it).
    completed = [o for o in outcomes if o.get("halt_reason") == "completed"]
    assert completed, outcomes
    for outcome in outcomes:
        if "__interrupt__" in outcome:
            assert outcome["__interrupt__"][0].value["in_doubt"] == [True]
    [entry] = await ledger_entries(thread.pool, thread.thread_id)
    assert (entry.status, entry.attempts) == ("succeeded", 1)


async def test_purge_ledger_deletes_only_the_given_threads(saver, tmp_path: Path) -> None:
    kept = Thread(saver, tmp_path, one_call("touch"))
    gone = Thread(saver, tmp_path, one_call("touch"))
    await kept.invoke({"task": "touch"})
    await gone.invoke({"task": "touch"})
    async with kept.pool.connection() as conn:
        assert await purge_ledger(conn, [gone.thread_id, "no-such-thread"]) == 1
    assert await ledger_entries(kept.pool, gone.thread_id) == []
    assert len(await ledger_entries(kept.pool, kept.thread_id)) == 1


async def test_a_batch_with_a_call_in_doubt_is_held_back_and_observed_once(
    saver, tmp_path: Path
) -> None:
    turns = [
        turn("both", call("stamp", label="a"), call("touch", label="b")),
        turn("finished"),
    ]
    thread = Thread(saver, tmp_path, turns)
    await thread.until_act("both")
    await thread.plant("call_1_1", "stamp", {"label": "a"})
    paused = await thread.invoke(None)
    assert paused["__interrupt__"][0].value["tool_call_ids"] == ["call_1_1"]
    assert results(paused) == []  # nothing is shown to the model before the decision
    assert lines(thread.log) == ["touch b"]  # the other call ran (and is in the ledger)
    final = await thread.decide({"type": "approve"})
    assert lines(thread.log) == ["touch b", "stamp a"]  # each exactly once
    assert [m.tool_call_id for m in results(final)] == ["call_1_1", "call_1_2"]
    assert results(final)[1].response_metadata["warden"]["replayed"] is True
    assert final["usage"]["tool_calls"] == 2
    assert final["usage"]["tool_calls_by_name"] == {"stamp": 1, "touch": 1}
    assert final["halt_reason"] == "completed"

