"""In-doubt calls in the pure layers: routing, the HITL request and its schema, config.

The database side (claims, replays, reconciliation, races) is in
tests/graph/test_ledger.py; the crashes themselves in tests/integration/test_chaos.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolCall, ToolMessage
from pydantic import ValidationError

from graph.context import Context
from graph.hitl import PendingCall, build_request, response_schema
from graph.routing import needs_approval, route_after_observe, undecided_doubts
from graph.settings import load_config_file
from graph.state import State, empty_usage
from tests.conftest import REPO
from tools.email import SendEmailArgs
from tools.loader import load_tool
from tools.registry import Reconciled

TIERS = {"read_file": "read", "stamp": "write", "send_email": "irreversible"}


def tc(name: str, call_id: str) -> ToolCall:
    return ToolCall(name=name, args={}, id=call_id, type="tool_call")


def doubt(call_id: str, attempt: int = 1) -> dict[str, Any]:
    return {"tool_call_id": call_id, "tool": "stamp", "attempt": attempt,
            "started_at": "2026-01-01T00:00:00+00:00", "detail": "attempt 1 started"}


def decided(call_id: str, attempt: int | None, decision: str = "approve") -> dict[str, Any]:
    record: dict[str, Any] = {"tool_call_id": call_id, "tool": "stamp", "decision": decision,
                              "args": {}, "args_hash": "", "reviewer": "r", "message": None,
                              "decided_at": ""}
    if attempt is not None:
        record["in_doubt_attempt"] = attempt
    return record


def st(
    messages: list[Any], doubts: list[dict[str, Any]], approvals: list[dict[str, Any]]
) -> State:
    return {  # type: ignore[typeddict-item]
        "messages": [HumanMessage(content="task"), *messages],
        "usage": empty_usage(),
        "loop": {"calls": [], "errors": [], "observations": [], "strikes": 0, "last": None},
        "stop": None,
        "approvals": approvals,
        "in_doubt": doubts,
    }


TURN = AIMessage(content="go", tool_calls=[tc("stamp", "c1"), tc("read_file", "c2")])
DONE = ToolMessage(content="ok", tool_call_id="c2", name="read_file")


@pytest.mark.parametrize(
    ("messages", "doubts", "approvals", "route", "undecided"),
    [
        ([TURN, DONE], [], [], "plan", set()),
        ([TURN, DONE], [doubt("c1")], [], "approve", {"c1"}),
        # A normal approval of the call does not settle its doubt...
        ([TURN, DONE], [doubt("c1")], [decided("c1", None)], "approve", {"c1"}),
        # ...a decision on that very attempt does.
        ([TURN, DONE], [doubt("c1")], [decided("c1", 1)], "plan", set()),
        # A later attempt in doubt again needs a new decision.
        ([TURN, DONE], [doubt("c1"), doubt("c1", 2)], [decided("c1", 1)], "approve", {"c1"}),
        # Answered (e.g. rejected): nothing pending any more.
        (
            [TURN, DONE, ToolMessage(content="x", tool_call_id="c1", name="stamp")],
            [doubt("c1")], [], "plan", {"c1"},
        ),
    ],
    ids=["no-doubt", "doubt", "normal-approval-only", "decided", "second-attempt", "answered"],
)
def test_route_after_observe_sends_doubts_to_a_human(
    messages: list[Any], doubts: list[dict[str, Any]], approvals: list[dict[str, Any]],
    route: str, undecided: set[str],
) -> None:
    state = st(messages, doubts, approvals)
    assert route_after_observe(state, Context()) == route
    assert set(undecided_doubts(state)) == undecided


def test_a_call_in_doubt_needs_approval_whatever_its_tier() -> None:
    state = st([TURN, DONE], [doubt("c1")], [])
    assert [c["id"] for c in needs_approval([tc("stamp", "c1")], Context(), TIERS, state)] == ["c1"]
    assert needs_approval([tc("stamp", "c1")], Context(), TIERS, st([TURN], [], [])) == []


def pending(in_doubt: bool) -> PendingCall:
    call = PendingCall(id="c1", name="send_email", args={"to": "a@b.example", "subject": "s",
                       "body": "b"}, tier="irreversible", reasoning="tell them")
    if in_doubt:
        call["in_doubt"] = True
        call["doubt_detail"] = "attempt 1 of `send_email` started at 10:00"
    return call


def test_in_doubt_request_is_marked_and_cannot_be_edited() -> None:
    request = build_request([pending(True)])
    assert request["in_doubt"] == [True]
    assert request["action_requests"][0]["description"].startswith(
        "IN DOUBT: attempt 1 of `send_email` started at 10:00. It may or may not have taken effect."
    )
    assert request["review_configs"][0]["allowed_decisions"] == ["approve", "reject", "respond"]
    assert "in_doubt" not in build_request([pending(False)])
    schema = response_schema([pending(True)], {"send_email": SendEmailArgs})
    edit = {"type": "edit", "edited_action": {"name": "send_email", "args": pending(True)["args"]}}
    with pytest.raises(ValidationError, match="in doubt and cannot be edited"):
        schema.model_validate({"decisions": [edit]})
    assert schema.model_validate({"decisions": [{"type": "approve"}]}).decisions[0].type == "approve"
    plain = response_schema([pending(False)], {"send_email": SendEmailArgs})
    assert plain.model_validate({"decisions": [edit]}).decisions[0].type == "edit"


def order_recorded(args: dict[str, Any], key: str) -> Reconciled:
    """Reconcile hook for the loader test."""
    return Reconciled("done", f"{args} under {key}")


def record_order(item: str) -> str:
    """Record an order."""
    return item


def test_config_entries_can_name_a_reconcile_hook() -> None:
    from tools.loader import ToolEntry

    spec = load_tool(
        ToolEntry(
            path="tests.unit.test_in_doubt:record_order",
            tier="write",
            reconcile="tests.unit.test_in_doubt:order_recorded",
        )
    )
    assert spec.reconcile is not None
    assert spec.reconcile({"item": "x"}, "k") == Reconciled("done", "{'item': 'x'} under k")
    with pytest.raises(Exception, match="has no attribute 'nope'"):
        load_tool(ToolEntry(path="tests.unit.test_in_doubt:record_order", tier="write",
                            reconcile="tests.unit.test_in_doubt:nope"))


def test_readme_reconcile_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Exactly-once side effects") :]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match
    config = tmp_path / "warden.toml"
    config.write_text(match.group(1))
    [entry] = load_config_file(config).tool_entries
    assert entry.reconcile == "mypkg.orders:order_recorded"
