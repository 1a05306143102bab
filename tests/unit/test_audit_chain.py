"""The audit chain and anchors as pure functions, and how node updates become events."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.types import Overwrite

from checkpoints.audit_chain import (
    GENESIS,
    GENESIS_BASE,
    Base,
    anchor_is_authentic,
    event_hash,
    latest_head,
    prepare_payload,
    sign_anchor,
    verify_chain,
)
from graph.audit import derive_events
from graph.context import Context, context_to_json
from graph.state import empty_loop_state, empty_usage

KEY = b"k" * 32
AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def chain(n: int, base: Base = GENESIS_BASE) -> list[dict[str, Any]]:
    rows, prev = [], base.hash
    for seq in range(base.seq + 1, base.seq + n + 1):
        row: dict[str, Any] = {
            "thread_id": "t", "run_id": "r", "seq": seq, "at": AT, "node": "plan",
            "kind": "model_call", "payload": {"n": seq}, "prev_hash": prev,
        }  # fmt: skip
        row["hash"] = prev = event_hash(row)
        rows.append(row)
    return rows


def test_an_intact_chain_verifies() -> None:
    assert verify_chain(chain(5)) is None


@pytest.mark.parametrize(
    ("tamper", "seq", "needle"),
    [
        (lambda rows: rows[2]["payload"].update(n=99), 3, "changed"),
        (lambda rows: rows.pop(1), 2, "missing"),
        (lambda rows: rows.insert(2, dict(rows[2])), 3, "duplicated"),
        (lambda rows: rows[3].update(prev_hash=GENESIS), 4, "prev_hash"),
    ],
)
def test_the_first_broken_link_is_reported(tamper: Any, seq: int, needle: str) -> None:
    rows = chain(5)
    tamper(rows)
    finding = verify_chain(rows)
    assert finding is not None and finding.seq == seq and needle in finding.problem


def test_a_chain_continues_from_a_purge_record() -> None:
    base = Base(7, "f" * 64)
    rows = chain(3, base)
    assert verify_chain(rows, base) is None
    assert verify_chain(rows) is not None  # without the purge record it starts mid-way
    assert verify_chain(rows, base, {"seq": 7, "hash": "f" * 64}) is None
    assert verify_chain(rows, base, {"seq": 5, "hash": "0" * 64}) is None  # purged, covered
    wrong = verify_chain(rows, base, {"seq": 7, "hash": "e" * 64})
    assert wrong is not None and "rewritten" in wrong.problem


def test_an_anchor_catches_a_cut_tail_and_a_rewrite() -> None:
    rows = chain(6)
    head = {"seq": 6, "hash": rows[-1]["hash"]}
    assert verify_chain(rows, anchor_head=head) is None
    cut = verify_chain(rows[:4], anchor_head=head)
    assert cut is not None and "tail cut off" in cut.problem
    later = verify_chain(rows, anchor_head={"seq": 3, "hash": rows[2]["hash"]})
    assert later is None  # events after the anchor are normal growth


def test_payloads_are_stored_as_they_hash() -> None:
    payload = {"b": (1, 2), "a": "nul\x00here", "c": math.nan, "d": {"x": 0.1, "y": 1e20}}
    prepared = prepare_payload(payload)
    assert prepared == {"a": "nul\ufffdhere", "b": [1, 2], "c": "nan", "d": {"x": 0.1, "y": 10**20}}
    assert json.loads(json.dumps(prepared)) == prepared


def test_anchors_are_signed_and_checked() -> None:
    rows = chain(2)
    anchor = sign_anchor(KEY, [{"thread_id": "t", "seq": 2, "hash": rows[1]["hash"], "at": AT}], AT)
    assert anchor_is_authentic(KEY, anchor)
    assert not anchor_is_authentic(b"x" * 32, anchor)
    forged = json.loads(json.dumps(anchor))
    forged["heads"][0]["seq"] = 1
    assert not anchor_is_authentic(KEY, forged)
    newer = sign_anchor(KEY, [{"thread_id": "t", "seq": 9, "hash": "h", "at": AT}], AT)
    assert latest_head([anchor, newer], "t") == newer["heads"][0]
    assert latest_head([anchor, newer], "other") is None


# --- events from node updates ------------------------------------------------------


def state(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "messages": [HumanMessage("task")], "usage": empty_usage(), "loop": empty_loop_state(),
        "approvals": [], "budget_warnings": [], "tainted": False, "run_id": "r1",
    }  # fmt: skip
    return base | values


TIERS = {"read_file": "read", "send_email": "irreversible"}


def test_a_plan_that_starts_a_run_records_the_start_the_call_and_the_decisions() -> None:
    ctx = Context(model="scripted:x", tenant="acme")
    turn = AIMessage(
        "reading",
        tool_calls=[
            {"id": "c1", "name": "read_file", "args": {"path": "a"}},
            {"id": "c2", "name": "send_email", "args": {"to": "x@y.z", "subject": "s", "body": "b"}},
        ],
    )
    usage = empty_usage() | {"model_calls": 1, "input_tokens": 50, "output_tokens": 5, "cost_usd": 0.25}
    update = {
        "run_context": context_to_json(ctx), "objective": "task", "messages": [turn],
        "usage": usage, "budget_warnings": Overwrite(["max_cost: 0.25 of 0.3 used (83%)"]),
    }  # fmt: skip
    old = empty_usage() | {"input_tokens": 900, "cost_usd": 9.0}  # the previous run's
    events = derive_events("plan", state(usage=old), update, ctx, TIERS)  # type: ignore[arg-type]
    assert [k for k, _ in events] == [
        "run_started", "model_call", "tool_requested", "tool_requested",
        "policy_decision", "policy_decision", "budget_warning",
    ]  # fmt: skip
    assert events[0][1]["tenant"] == "acme" and events[0][1]["task"] == "task"
    assert (events[1][1]["input_tokens"], events[1][1]["cost_usd"]) == (50, 0.25)
    assert [p["decision"] for k, p in events if k == "policy_decision"] == ["allow", "ask"]


def test_act_records_what_ran_and_what_was_refused() -> None:
    turn = AIMessage(
        "",
        tool_calls=[
            {"id": "c1", "name": "read_file", "args": {"path": "a"}},
            {"id": "c2", "name": "nope", "args": {}},
        ],
    )
    update = {
        "messages": [
            ToolMessage("contents", tool_call_id="c1", name="read_file",
                        response_metadata={"warden": {"duration_ms": 1.5, "attempts": 1}}),
            ToolMessage("refused", tool_call_id="c2", name="nope", status="error",
                        response_metadata={"warden": {"refused": "policy"}}),
        ]
    }  # fmt: skip
    st = state(messages=[HumanMessage("task"), turn])
    events = derive_events("act", st, update, Context(), TIERS)  # type: ignore[arg-type]
    assert [k for k, _ in events] == ["tool_validated", "tool_result", "tool_result"]
    assert events[1][1]["status"] == "success" and events[1][1]["duration_ms"] == 1.5
    assert events[2][1]["status"] == "refused" and events[2][1]["refused"] == "policy"


def test_observe_records_flags_loops_and_halt_records_the_reason() -> None:
    loop = empty_loop_state() | {"strikes": 1, "last": "the same tool error repeated"}
    flag = {"kind": "override", "source": "tool", "reason": "asks to ignore instructions"}
    update = {"loop": loop, "flags": [flag], "tainted": True, "budget_warnings": []}
    events = derive_events("observe", state(), update, Context(), TIERS)  # type: ignore[arg-type]
    assert [k for k, _ in events] == ["loop_detected", "injection_flag"]
    halt = {"halt_reason": "loop", "halt_detail": "again", "usage": empty_usage()}
    assert [k for k, _ in derive_events("halt", state(), halt, Context(), TIERS)] == ["halt"]  # type: ignore[arg-type]
