"""How threads ended from outside read in `warden status`.

Agent Chat UI's "Mark as Resolved" sends `Command(goto="__end__")` with no resume
value. On LangGraph 1.2 that command is ignored on a thread paused at an interrupt, so
the thread must still read as awaiting approval (not broken) and `cancel` must end it.
A thread ended with no halt at all (e.g. `update_state(..., as_node=END)`) reads as
halted with reason `cancelled`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langgraph.graph import END
from langgraph.types import Command

from graph.context import Context
from graph.models import make_model_factory
from graph.runtime import Warden, outcome_of
from tests.conftest import call, turn


@pytest.fixture
def warden(saver, outbox: Path) -> Warden:
    return Warden(saver, outbox=outbox, model_factory=make_model_factory())


@pytest.fixture
def email_context(write_script) -> Context:
    script = write_script(
        [
            turn("emailing", call("send_email", to="a@b.co", subject="s", body="b")),
            turn("done"),
        ]
    )
    return Context(model=f"scripted:{script}")


async def test_mark_as_resolved_leaves_a_readable_paused_thread(
    warden: Warden, email_context: Context, workspace: Path, outbox: Path
) -> None:
    first = await warden.run("email", context=email_context, workspace=workspace)
    assert first.status == "awaiting_approval"
    app = warden.graph(workspace)
    config = warden.config(first.thread_id, email_context)
    await app.ainvoke(Command(goto=END), config, context=email_context)
    after = await warden.status(first.thread_id)
    assert after.status == "awaiting_approval"
    assert after.pending_approval == first.pending_approval
    cancelled = await warden.cancel(first.thread_id)
    assert (cancelled.status, cancelled.halt_reason) == ("halted", "cancelled")
    assert cancelled.exit_code == 3
    assert not outbox.exists()  # the email never ran


async def test_thread_ended_without_halt_reads_as_cancelled(
    warden: Warden, email_context: Context, workspace: Path
) -> None:
    first = await warden.run("email", context=email_context, workspace=workspace)
    app = warden.graph(workspace)
    config = warden.config(first.thread_id, email_context)
    await app.aupdate_state(config, None, as_node=END)
    snapshot = await app.aget_state(config)
    assert snapshot.next == ()
    result = outcome_of(first.thread_id, snapshot, email_context)
    assert (result.status, result.halt_reason, result.exit_code) == ("halted", "cancelled", 3)
    assert json.loads(json.dumps(result.as_json()))["pending_approval"] is None


@pytest.mark.parametrize(
    ("decision", "parked_before"),
    [({"type": "approve"}, "act"), ({"type": "reject", "message": "no"}, "plan")],
)
async def test_cancel_of_a_thread_stopped_mid_run_never_runs_the_pending_node(
    warden: Warden,
    email_context: Context,
    workspace: Path,
    outbox: Path,
    decision: dict[str, str],
    parked_before: str,
) -> None:
    first = await warden.run("email", context=email_context, workspace=workspace)
    app = warden.graph(workspace)
    config = warden.config(first.thread_id, email_context)
    # Park the run right before `act` (the approved email) or `plan` (the next model call).
    await app.ainvoke(
        Command(resume={"decisions": [decision]}),
        config,
        context=email_context,
        interrupt_before=[parked_before],
    )
    parked = await warden.status(first.thread_id)
    assert parked.status == "in_progress"
    assert (await app.aget_state(config)).next == (parked_before,)

    cancelled = await warden.cancel(first.thread_id, reason="operator said stop")
    assert (cancelled.halt_reason, cancelled.halt_detail) == ("cancelled", "operator said stop")
    assert cancelled.usage["model_calls"] == 1  # plan never ran again
    assert cancelled.usage["tool_calls"] == 0  # act never ran
    assert not outbox.exists()


async def test_cancel_keeps_results_a_crash_left_as_saved_writes(
    warden: Warden, saver, email_context: Context, workspace: Path, outbox: Path
) -> None:
    """A process that died after `act` saved its writes, before the next checkpoint."""
    app = warden.graph(workspace)
    approve = Command(resume={"decisions": [{"type": "approve"}]})
    parked = {}
    for name in ("crashed", "reference"):
        first = await warden.run("email", context=email_context, workspace=workspace)
        config = warden.config(first.thread_id, email_context)
        await app.ainvoke(approve, config, context=email_context, interrupt_before=["act"])
        parked[name] = (config, await app.aget_state(config))
    # The reference thread runs `act` for real; its saved writes are what the crashed
    # thread's `act` would have saved before the process died.
    ref_config, ref_parked = parked["reference"]
    await app.ainvoke(None, ref_config, context=email_context, interrupt_after=["act"])
    saved = await saver.aget_tuple(ref_parked.config)
    act_writes = [(ch, v) for tid, ch, v in saved.pending_writes if tid == ref_parked.tasks[0].id]
    assert any(ch == "messages" for ch, _ in act_writes)
    crash_config, crash_parked = parked["crashed"]
    await saver.aput_writes(crash_parked.config, act_writes, crash_parked.tasks[0].id)

    thread_id = crash_config["configurable"]["thread_id"]
    crashed = await app.aget_state(crash_config)
    assert crashed.next == () and crashed.tasks  # how LangGraph shows it
    assert (await warden.status(thread_id)).status == "in_progress"

    cancelled = await warden.cancel(thread_id)
    assert cancelled.halt_reason == "cancelled"
    history = await warden.history(thread_id)
    results = [m for m in history["messages"] if m["type"] == "tool"]
    assert [(m["name"], m["status"]) for m in results] == [("send_email", "success")]
    assert cancelled.usage["tool_calls"] == 1
    assert cancelled.usage["model_calls"] == 1  # the model was not called again
    # Only the reference thread's act really ran: one email in all.
    assert (outbox / "outbox.jsonl").read_text().count("\n") == 1
