"""Human approval through the real compiled graph on real Postgres.

Every decision type (approve, edit, reject, respond), malformed decisions that must
leave the thread exactly as it was, mixed batches and unknown tools. The model is the
scripted one; the email tool really writes to the outbox, so side effects are checked
on disk.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langgraph.errors import is_invalid_resume
from langgraph.types import Command
from pydantic import ValidationError

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.loops import args_hash
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.builtin import default_tools

EMAIL = {"to": "ops@example.com", "subject": "Incident", "body": "The disk is full."}


class PromptLog(AsyncCallbackHandler):
    """Record what the model is sent, to show what it saw."""

    def __init__(self) -> None:
        self.prompts: list[list[BaseMessage]] = []

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.prompts.append(messages[0])


class Thread:
    """One thread of the real graph, driven like a client would."""

    def __init__(self, saver: Any, workspace: Path, outbox: Path, turns: list[dict[str, Any]]):
        model = ScriptedChatModel.from_turns(turns, model="gpt-4o-mini")
        self.app = compile_graph(
            build_graph(model=model, tools=default_tools(workspace, outbox)), saver
        )
        self.saver = saver
        self.outbox = outbox
        self.ctx = Context()
        self.log = PromptLog()
        self.thread_id = str(uuid.uuid4())
        self.cfg = {
            "configurable": {"thread_id": self.thread_id},
            "recursion_limit": self.ctx.recursion_limit(),
            "callbacks": [self.log],
        }

    async def invoke(self, payload: Any) -> dict[str, Any]:
        return await self.app.ainvoke(payload, self.cfg, context=self.ctx, durability="sync")

    async def start(self, task: str = "handle the incident") -> dict[str, Any]:
        return await self.invoke({"task": task})

    async def decide(self, *decisions: dict[str, Any], reviewer: str = "alice") -> dict[str, Any]:
        return await self.invoke(
            Command(resume={"decisions": list(decisions), "reviewer": reviewer})
        )

    async def state(self) -> Any:
        return await self.app.aget_state({"configurable": {"thread_id": self.thread_id}})

    async def checkpoints(self) -> int:
        """Count this thread's checkpoints in Postgres."""
        async with self.saver.conn.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s", (self.thread_id,)
                )
            ).fetchone()
        return row["n"]


def emails(outbox: Path) -> list[dict[str, Any]]:
    file = outbox / "outbox.jsonl"
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines()]


def tool_results(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def email_turns(then: str = "Done.") -> list[dict[str, Any]]:
    return [turn("The disk is full; I will tell ops.", call("send_email", **EMAIL)), turn(then)]


# --- decisions -------------------------------------------------------------------


async def test_approve_sends_the_email_once(saver, workspace: Path, outbox: Path) -> None:
    thread = Thread(saver, workspace, outbox, email_turns())
    paused = await thread.start()
    [interrupt] = paused["__interrupt__"]
    request = interrupt.value
    assert request["action_requests"] == [
        {
            "name": "send_email",
            "args": EMAIL,
            "description": (
                "Tool `send_email` (risk tier: irreversible) wants to run with the arguments "
                "shown.\nApproval needed because: tier irreversible needs approval"
                "\nModel's reasoning: The disk is full; I will tell ops."
            ),
        }
    ]
    assert request["tool_call_ids"] == ["call_1_1"]
    assert request["tiers"] == ["irreversible"]
    assert request["review_configs"][0]["allowed_decisions"] == [
        "approve",
        "edit",
        "reject",
        "respond",
    ]
    assert request["review_configs"][0]["args_schema"]["required"] == ["to", "subject", "body"]
    assert emails(outbox) == []

    result = await thread.decide({"type": "approve"}, reviewer="alice")
    assert result["halt_reason"] == "completed"
    assert result["final_answer"] == "Done."
    [sent] = emails(outbox)
    assert {k: sent[k] for k in EMAIL} == EMAIL
    [message] = tool_results(result)
    assert message.status == "success"
    assert message.text.startswith("email sent to ops@example.com (Message-ID <")
    assert result["usage"]["tool_calls"] == 1
    [record] = result["approvals"]
    assert record["decision"] == "approve"
    assert record["reviewer"] == "alice"
    assert record["args"] == EMAIL
    assert record["args_hash"] == args_hash(EMAIL)
    assert record["tool"] == "send_email" and record["tool_call_id"] == "call_1_1"
    assert record["message"] is None
    assert record["decided_at"]
    # Reading the finished thread again does not send anything again.
    assert (await thread.state()).values["approvals"] == [record]
    assert len(emails(outbox)) == 1


async def test_edit_runs_the_edited_arguments(saver, workspace: Path, outbox: Path) -> None:
    thread = Thread(saver, workspace, outbox, email_turns())
    await thread.start()
    edited = {"to": "boss@example.com", "subject": "Edited", "body": "Shorter."}
    # Agent Chat UI sends edited arguments as text: a JSON string is coerced to an object.
    result = await thread.decide(
        {"type": "edit", "edited_action": {"name": "send_email", "args": json.dumps(edited)}},
        reviewer="bob",
    )
    assert result["halt_reason"] == "completed"
    [sent] = emails(outbox)
    assert {k: sent[k] for k in edited} == edited
    [message] = tool_results(result)
    assert message.status == "success"
    assert message.text.startswith("[a human reviewer edited the arguments before this call ran: ")
    assert json.dumps(edited) in message.text
    assert "email sent to boss@example.com" in message.text
    [record] = result["approvals"]
    assert record["decision"] == "edit"
    assert record["args"] == edited
    assert record["args_hash"] == args_hash(edited)
    assert record["reviewer"] == "bob"
    # The model's original request stays in the history, unchanged.
    ai = next(m for m in result["messages"] if isinstance(m, AIMessage) and m.tool_calls)
    assert ai.tool_calls[0]["args"] == EMAIL


async def test_reject_with_message_makes_the_model_replan(
    saver, workspace: Path, outbox: Path
) -> None:
    turns = [
        turn("Emailing ops.", call("send_email", **EMAIL)),
        turn("Understood, I will read the notes instead.", call("read_file", path="notes.txt")),
        turn("Notes read; no email sent."),
    ]
    thread = Thread(saver, workspace, outbox, turns)
    await thread.start()
    result = await thread.decide(
        {"type": "reject", "message": "ops is asleep, do not page them"}, reviewer="carol"
    )
    assert result["halt_reason"] == "completed"
    assert result["final_answer"] == "Notes read; no email sent."
    assert emails(outbox) == []
    rejected, read = tool_results(result)
    assert rejected.status == "error"
    assert rejected.tool_call_id == "call_1_1"
    assert rejected.text == (
        "Rejected by reviewer carol: ops is asleep, do not page them. The call was not "
        "executed; do not retry it unless asked."
    )
    assert read.text == "alpha\nbeta\n"
    usage = result["usage"]
    assert (usage["rejections"], usage["tool_calls"], usage["model_calls"]) == (1, 1, 3)
    # The model's second call was sent the rejection.
    assert len(thread.log.prompts) == 3
    seen = thread.log.prompts[1][-1]
    assert isinstance(seen, ToolMessage)
    assert "ops is asleep, do not page them" in seen.text
    [record] = result["approvals"]
    assert (record["decision"], record["reviewer"], record["message"]) == (
        "reject",
        "carol",
        "ops is asleep, do not page them",
    )


async def test_respond_returns_the_human_answer_as_the_result(
    saver, workspace: Path, outbox: Path
) -> None:
    thread = Thread(saver, workspace, outbox, email_turns(then="Ops already knows."))
    await thread.start()
    answer = "I phoned ops myself; they are on it."
    result = await thread.decide({"type": "respond", "message": answer}, reviewer="dave")
    assert result["halt_reason"] == "completed"
    assert emails(outbox) == []
    [message] = tool_results(result)
    assert message.text == answer
    assert message.status == "success"
    assert message.response_metadata["warden"] == {"responded_by": "dave"}
    assert result["usage"]["tool_calls"] == 0
    assert result["usage"]["tool_calls_by_name"] == {}
    seen = thread.log.prompts[1][-1]
    assert isinstance(seen, ToolMessage) and answer in seen.text
    [record] = result["approvals"]
    assert (record["decision"], record["reviewer"], record["message"]) == (
        "respond",
        "dave",
        answer,
    )


async def test_every_decision_is_recorded_with_its_reviewer(
    saver, workspace: Path, outbox: Path
) -> None:
    second = {**EMAIL, "subject": "Second"}
    turns = [
        turn("First try.", call("send_email", **EMAIL)),
        turn("Second try.", call("send_email", **second)),
        turn("Done."),
    ]
    thread = Thread(saver, workspace, outbox, turns)
    await thread.start()
    paused = await thread.decide({"type": "reject", "message": "not yet"}, reviewer="erin")
    assert paused["__interrupt__"][0].value["tool_call_ids"] == ["call_2_1"]
    result = await thread.decide({"type": "approve"}, reviewer="frank")
    assert result["halt_reason"] == "completed"
    assert [(a["tool_call_id"], a["decision"], a["reviewer"]) for a in result["approvals"]] == [
        ("call_1_1", "reject", "erin"),
        ("call_2_1", "approve", "frank"),
    ]
    [sent] = emails(outbox)
    assert sent["subject"] == "Second"


# --- malformed decisions ---------------------------------------------------------

MALFORMED: dict[str, dict[str, Any]] = {
    "no decisions": {"decisions": [], "reviewer": "x"},
    "two decisions for one call": {
        "decisions": [{"type": "approve"}, {"type": "approve"}],
        "reviewer": "x",
    },
    "unknown type": {"decisions": [{"type": "maybe"}], "reviewer": "x"},
    "edit with invalid args": {
        "decisions": [
            {
                "type": "edit",
                "edited_action": {
                    "name": "send_email",
                    "args": {"to": "not an address", "subject": "s", "body": "b"},
                },
            }
        ],
        "reviewer": "x",
    },
    "edit with args that are not JSON": {
        "decisions": [
            {"type": "edit", "edited_action": {"name": "send_email", "args": "{to: nobody"}}
        ],
        "reviewer": "x",
    },
    "edit with an unknown argument": {
        "decisions": [
            {"type": "edit", "edited_action": {"name": "send_email", "args": {**EMAIL, "cc": "x"}}}
        ],
        "reviewer": "x",
    },
    "edit renaming the tool": {
        "decisions": [
            {"type": "edit", "edited_action": {"name": "read_file", "args": {"path": "notes.txt"}}}
        ],
        "reviewer": "x",
    },
    "reject with an extra key": {
        "decisions": [{"type": "reject", "message": "no", "force": True}],
        "reviewer": "x",
    },
    "decisions missing": {"reviewer": "x"},
    "empty reviewer": {"decisions": [{"type": "approve"}], "reviewer": ""},
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_decisions_leave_the_thread_unchanged(
    saver, workspace: Path, outbox: Path, name: str
) -> None:
    thread = Thread(saver, workspace, outbox, email_turns())
    await thread.start()
    before = await thread.state()
    checkpoints_before = await thread.checkpoints()
    assert before.next == ("approve",)

    with pytest.raises(ValidationError) as raised:
        await thread.invoke(Command(resume=MALFORMED[name]))
    assert is_invalid_resume(raised.value)

    after = await thread.state()
    assert after.next == before.next == ("approve",)
    assert (
        after.config["configurable"]["checkpoint_id"]
        == (before.config["configurable"]["checkpoint_id"])
    )
    assert [(i.id, i.value) for i in after.interrupts] == [
        (i.id, i.value) for i in before.interrupts
    ]
    assert len(after.values["messages"]) == len(before.values["messages"])
    assert after.values["approvals"] == []
    assert after.values["usage"] == before.values["usage"]
    assert await thread.checkpoints() == checkpoints_before
    assert emails(outbox) == []

    # A correct answer afterwards completes the run, as if nothing had happened.
    result = await thread.decide({"type": "approve"}, reviewer="grace")
    assert result["halt_reason"] == "completed"
    assert len(emails(outbox)) == 1
    assert [(a["decision"], a["reviewer"]) for a in result["approvals"]] == [("approve", "grace")]


# --- batches and unknown tools ---------------------------------------------------


async def test_mixed_batch_asks_only_for_the_risky_call(
    saver, workspace: Path, outbox: Path
) -> None:
    turns = [
        turn("Read, then email.", call("read_file", path="notes.txt"), call("send_email", **EMAIL)),
        turn("Both done."),
    ]
    thread = Thread(saver, workspace, outbox, turns)
    paused = await thread.start()
    request = paused["__interrupt__"][0].value
    assert [a["name"] for a in request["action_requests"]] == ["send_email"]
    assert request["tool_call_ids"] == ["call_1_2"]
    # Nothing of the batch ran before the decision, not even the allowed read.
    state = await thread.state()
    assert not any(isinstance(m, ToolMessage) for m in state.values["messages"])
    assert state.values["usage"]["tool_calls"] == 0

    result = await thread.decide({"type": "approve"})
    assert result["halt_reason"] == "completed"
    read, sent = tool_results(result)
    assert (read.tool_call_id, read.status, read.text) == ("call_1_1", "success", "alpha\nbeta\n")
    assert sent.tool_call_id == "call_1_2" and sent.text.startswith("email sent to ops@example.com")
    assert result["usage"]["tool_calls"] == 2
    assert result["usage"]["tool_calls_by_name"] == {"read_file": 1, "send_email": 1}
    assert len(emails(outbox)) == 1
    assert [a["tool_call_id"] for a in result["approvals"]] == ["call_1_2"]


async def test_unknown_tool_is_refused_and_the_run_continues(
    saver, workspace: Path, outbox: Path
) -> None:
    turns = [
        turn("Cleaning up.", call("delete_everything", target="/")),
        turn("I cannot delete; reading instead.", call("read_file", path="todo.md")),
        turn("Todo read."),
    ]
    thread = Thread(saver, workspace, outbox, turns)
    result = await thread.start()
    assert "__interrupt__" not in result
    assert result["halt_reason"] == "completed"
    assert result["final_answer"] == "Todo read."
    refused, read = tool_results(result)
    assert refused.status == "error"
    assert refused.name == "delete_everything"
    assert refused.text == (
        "refused by policy (unknown tool 'delete_everything'): this call to "
        "'delete_everything' is not allowed here. "
        "Allowed tools: list_files, read_file, recall, remember, send_email."
    )
    assert refused.response_metadata["warden"]["refused"] == "policy"
    assert read.text == "- ship warden\n"
    assert result["usage"]["tool_calls"] == 1
    assert result["usage"]["tool_calls_by_name"] == {"read_file": 1}
    assert result["approvals"] == []
    # The model was told about the refusal.
    assert "refused by policy" in thread.log.prompts[1][-1].text
