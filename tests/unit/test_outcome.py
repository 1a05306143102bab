"""How a thread's status is read from its latest checkpoint."""

from __future__ import annotations

import pytest
from langgraph.types import Interrupt, PregelTask, StateSnapshot

from graph.context import Context
from graph.runtime import outcome_of
from graph.state import empty_usage


def snapshot(
    values: dict, next_: tuple[str, ...] = (), tasks: tuple[PregelTask, ...] = (), interrupts=()
) -> StateSnapshot:
    return StateSnapshot(
        values=values,
        next=next_,
        config={"configurable": {"thread_id": "t"}},
        metadata=None,
        created_at=None,
        parent_config=None,
        tasks=tasks,
        interrupts=interrupts,
    )


DONE_ACT = PregelTask(id="task-1", name="act", path=("__pregel_pull", "act"), result={"usage": {}})
REQUEST = {"action_requests": [{"name": "send_email", "args": {}, "description": "d"}]}


@pytest.mark.parametrize(
    ("snap", "status", "reason", "code"),
    [
        pytest.param(snapshot({"halt_reason": "completed"}), "completed", "completed", 0, id="completed"),
        pytest.param(snapshot({"halt_reason": "loop"}), "halted", "loop", 3, id="halted"),
        pytest.param(snapshot({"halt_reason": "error"}), "error", "error", 1, id="error"),
        pytest.param(snapshot({}, next_=("plan",)), "in_progress", None, 1, id="stopped-before-plan"),
        # A crash after a node's writes were saved and before the next checkpoint.
        pytest.param(snapshot({}, tasks=(DONE_ACT,)), "in_progress", None, 1, id="writes-saved-no-checkpoint"),
        pytest.param(
            snapshot({}, next_=("approve",), interrupts=(Interrupt(value=REQUEST, id="i"),)),
            "awaiting_approval", None, 4, id="awaiting",
        ),
        pytest.param(snapshot({}), "halted", "cancelled", 3, id="ended-without-halt"),
    ],
)
def test_status_from_snapshot(snap: StateSnapshot, status: str, reason: str | None, code: int) -> None:
    result = outcome_of("t", snap, Context())
    assert (result.status, result.halt_reason, result.exit_code) == (status, reason, code)
    assert result.pending_approval == (REQUEST if status == "awaiting_approval" else None)
    assert result.usage == empty_usage()
