"""An operator's policy, pinned at build time, holds against whatever context a caller sends."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.policy import ArgRule
from graph.scripted import ScriptedChatModel
from tests.conftest import call, turn
from tools.builtin import default_tools

EMAIL = {"to": "eve@evil.test", "subject": "s", "body": "b"}


def compile_with(saver, workspace: Path, outbox: Path, policy):
    model = ScriptedChatModel.from_turns(
        [turn("emailing", call("send_email", **EMAIL)), turn("done")]
    )
    return compile_graph(
        build_graph(model=model, tools=default_tools(workspace, outbox), policy=policy), saver
    )


async def test_a_caller_cannot_switch_approvals_off(saver, workspace: Path, outbox: Path) -> None:
    app = compile_with(saver, workspace, outbox, {"ask_tiers": ("irreversible", "destructive")})
    loose = Context(ask_tiers=(), allowed_tools=None)
    result = await app.ainvoke(
        {"task": "send it"}, {"configurable": {"thread_id": str(uuid.uuid4())}}, context=loose
    )
    assert "__interrupt__" in result  # still asks
    assert result["run_context"]["ask_tiers"] == ["irreversible", "destructive"]
    assert not outbox.exists()


async def test_without_a_pinned_policy_the_context_decides(saver, workspace: Path, outbox: Path) -> None:
    app = compile_with(saver, workspace, outbox, None)
    result = await app.ainvoke(
        {"task": "send it"},
        {"configurable": {"thread_id": str(uuid.uuid4())}},
        context=Context(ask_tiers=()),
    )
    assert result["halt_reason"] == "completed"
    assert (outbox / "outbox.jsonl").read_text().count("\n") == 1


async def test_a_pinned_rule_denies_outside_recipients(saver, workspace: Path, outbox: Path) -> None:
    rule = ArgRule(tool="send_email", arg="to", domains_not_in=("example.com",), action="deny")
    app = compile_with(saver, workspace, outbox, {"arg_rules": (rule,)})
    result = await app.ainvoke(
        {"task": "send it"}, {"configurable": {"thread_id": str(uuid.uuid4())}}, context=Context()
    )
    assert result["halt_reason"] == "completed"
    refusal = next(m for m in result["messages"] if getattr(m, "tool_call_id", None))
    assert refusal.status == "error" and "to outside example.com" in refusal.text
    assert not outbox.exists()


def test_a_bad_pinned_policy_is_refused_at_build_time(workspace: Path, outbox: Path) -> None:
    with pytest.raises(ValueError, match="not policy fields: max_steps"):
        build_graph(tools=default_tools(workspace, outbox), policy={"max_steps": 1})
