"""Table-driven tests of every router in graph/routing.py, and of diagnose's agreement with them.

States are plain dicts with real langchain_core messages; nothing touches a database.
Every row that routes to `halt` also checks that `diagnose` gives the matching reason,
so a halt reason is never computed two different ways.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolCall, ToolMessage

from graph.context import Context
from graph.loops import call_fingerprint
from graph.policy import Tier
from graph.routing import (
    before_model,
    before_tools,
    diagnose,
    needs_approval,
    pending_tool_calls,
    route_after_approve,
    route_after_observe,
    route_after_plan,
    soft_warnings,
)
from graph.state import HALT_REASONS, State, Usage, empty_usage

TIERS: dict[str, Tier] = {
    "read_file": "read",
    "list_files": "read",
    "write_note": "write",
    "send_email": "irreversible",
    "drop_table": "destructive",
}
TASK = HumanMessage(content="summarise the notes")


def tc(name: str, call_id: str, **args: Any) -> ToolCall:
    """Build a tool call as a model would return it."""
    return ToolCall(name=name, args=args, id=call_id, type="tool_call")


def ai(*calls: ToolCall, content: str = "let me look") -> AIMessage:
    """Build a model turn with the given tool calls."""
    return AIMessage(content=content, tool_calls=list(calls))


def result(call_id: str, name: str = "read_file", content: str = "ok", **kw: Any) -> ToolMessage:
    """Build a tool result for a call."""
    return ToolMessage(content=content, tool_call_id=call_id, name=name, **kw)


def use(**over: Any) -> Usage:
    """Return usage counters with some fields set."""
    return {**empty_usage(), **over}  # type: ignore[typeddict-item]


def fp(name: str, **args: Any) -> str:
    """Fingerprint a call for the loop window."""
    return call_fingerprint(name, args)


def st(
    messages: list[Any],
    *,
    usage: Usage | None = None,
    strikes: int = 0,
    window: list[str] | None = None,
    last: str | None = None,
    stop: dict[str, Any] | None = None,
    approvals: list[dict[str, Any]] | None = None,
) -> State:
    """Build a state dict."""
    return {  # type: ignore[typeddict-item]
        "messages": messages,
        "usage": usage or use(),
        "loop": {
            "calls": window or [],
            "errors": [],
            "observations": [],
            "strikes": strikes,
            "last": last,
        },
        "stop": stop,
        "approvals": approvals or [],
        "budget_warnings": [],
    }


def approval(call_id: str, tool: str = "send_email", decision: str = "approve") -> dict[str, Any]:
    """Build a recorded human decision."""
    return {
        "tool_call_id": call_id,
        "tool": tool,
        "decision": decision,
        "args": {},
        "args_hash": "",
        "reviewer": "ann",
        "message": None,
        "decided_at": "2025-01-01T00:00:00+00:00",
    }


READ = tc("read_file", "c1", path="notes.txt")
READ2 = tc("read_file", "c2", path="todo.md")
LIST = tc("list_files", "c3")
WRITE = tc("write_note", "c4", text="x")
EMAIL = tc("send_email", "c5", to="a@b.co", subject="s", body="b")
DROP = tc("drop_table", "c6", table="t")
UNKNOWN = tc("rm_rf", "c7", path="/")
READ_FP = fp("read_file", path="notes.txt")
A, B = fp("read_file", path="a"), fp("read_file", path="b")
A_CALL, B_CALL = tc("read_file", "ca", path="a"), tc("read_file", "cb", path="b")
STOP_ERROR = {"reason": "error", "detail": "model returned a malformed tool call"}
STOP_CANCELLED = {"reason": "cancelled", "detail": "cancelled by ann"}
STOP_REJECTED = {"reason": "rejected", "detail": "3 tool call(s) rejected in this run (limit 3)"}


# --- route_after_plan ----------------------------------------------------------------

PLAN_CASES = [
    pytest.param(st([TASK, ai(READ)], stop=STOP_ERROR), Context(), "halt", "error", id="stop-error"),
    pytest.param(
        st([TASK, ai(READ)], stop=STOP_CANCELLED), Context(), "halt", "cancelled", id="stop-cancel"
    ),
    pytest.param(st([TASK, ai(content="done")]), Context(), "halt", "completed", id="final-answer"),
    pytest.param(st([TASK, ai(READ)]), Context(), "act", None, id="read-acts"),
    pytest.param(st([TASK, ai(WRITE)]), Context(), "act", None, id="write-acts"),
    pytest.param(st([TASK, ai(EMAIL)]), Context(), "approve", None, id="irreversible-asks"),
    pytest.param(st([TASK, ai(DROP)]), Context(), "approve", None, id="destructive-asks"),
    pytest.param(st([TASK, ai(READ, EMAIL)]), Context(), "approve", None, id="mixed-batch-asks"),
    pytest.param(
        st([TASK, ai(EMAIL)], approvals=[approval("c5")]), Context(), "act", None,
        id="already-decided-acts",
    ),
    pytest.param(
        st([TASK, ai(WRITE)]), Context(ask_tiers=("write",)), "approve", None,
        id="custom-ask-tier",
    ),
    pytest.param(st([TASK, ai(UNKNOWN)]), Context(), "act", None, id="unknown-tool-act-refuses"),
    pytest.param(
        st([TASK, ai(READ, EMAIL), result("c5", "send_email", "rejected", status="error")]),
        Context(), "act", None, id="partially-answered-acts",
    ),
    pytest.param(
        st([TASK, ai(READ)], window=[READ_FP, READ_FP]), Context(), "act", None,
        id="repeat-loop-first-detection-acts",
    ),
    pytest.param(
        st([TASK, ai(READ)], window=[READ_FP, READ_FP], strikes=1), Context(), "halt", "loop",
        id="repeat-loop-after-warning",
    ),
    pytest.param(
        st([TASK, ai(B_CALL)], window=[A, B, A, B, A], strikes=1),
        Context(loop_repeat_threshold=10), "halt", "loop", id="cycle-loop-after-warning",
    ),
    pytest.param(
        st([TASK, ai(B_CALL)], window=[A, B, A, B, A]), Context(loop_repeat_threshold=10),
        "act", None, id="cycle-loop-first-detection-acts",
    ),
    pytest.param(
        st([TASK, ai(READ2)], window=[READ_FP, READ_FP], strikes=1), Context(), "act", None,
        id="different-args-no-loop",
    ),
    pytest.param(
        st([TASK, ai(READ, READ2)], usage=use(tool_calls=2)), Context(max_tool_calls=3),
        "halt", "max_tool_calls", id="batch-would-cross-max-tool-calls",
    ),
    pytest.param(
        st([TASK, ai(READ)], usage=use(tool_calls=2)), Context(max_tool_calls=3), "act", None,
        id="batch-reaches-max-tool-calls-exactly",
    ),
    pytest.param(
        st([TASK, ai(READ, UNKNOWN)], usage=use(tool_calls=2)), Context(max_tool_calls=3),
        "act", None, id="unknown-tool-not-counted",
    ),
    pytest.param(
        st([TASK, ai(READ, LIST)], usage=use(tool_calls=2)),
        Context(max_tool_calls=3, allowed_tools=("read_file",)), "act", None,
        id="disallowed-tool-not-counted",
    ),
    pytest.param(
        st([TASK, ai(READ, WRITE)], usage=use(tool_calls=2)),
        Context(max_tool_calls=3, deny_tiers=("write",)), "act", None,
        id="deny-tier-not-counted",
    ),
    pytest.param(
        st([TASK, ai(READ, EMAIL)], usage=use(tool_calls=2)), Context(max_tool_calls=3),
        "halt", "max_tool_calls", id="ask-calls-counted",
    ),
    pytest.param(
        st([TASK, ai(READ)]), Context(max_tool_calls=0), "halt", "max_tool_calls",
        id="zero-tool-calls-allowed",
    ),
    pytest.param(
        st([TASK, ai(UNKNOWN)]), Context(max_tool_calls=0), "act", None,
        id="zero-tool-calls-only-denied",
    ),
    pytest.param(
        st([TASK, ai(READ, READ2)], usage=use(tool_calls=1, tool_calls_by_name={"read_file": 1})),
        Context(max_tool_calls_per_tool={"read_file": 2}), "halt", "max_tool_calls",
        id="per-tool-limit-crossed",
    ),
    pytest.param(
        st([TASK, ai(READ)], usage=use(tool_calls=1, tool_calls_by_name={"read_file": 1})),
        Context(max_tool_calls_per_tool={"read_file": 2}), "act", None,
        id="per-tool-limit-reached-exactly",
    ),
    pytest.param(
        st([TASK, ai(LIST)], usage=use(tool_calls=1, tool_calls_by_name={"read_file": 1})),
        Context(max_tool_calls_per_tool={"read_file": 1}), "act", None,
        id="per-tool-limit-other-tool",
    ),
    pytest.param(
        st([TASK, ai(EMAIL)]), Context(max_tool_calls_per_tool={"send_email": 0}), "halt",
        "max_tool_calls", id="per-tool-limit-zero",
    ),
    pytest.param(
        st([TASK, ai(EMAIL)]),
        Context(max_tool_calls_per_tool={"send_email": 0}, deny_tiers=("irreversible",)),
        "act", None, id="per-tool-limit-denied-tool-not-counted",
    ),
    pytest.param(
        st([TASK, ai(READ)], usage=use(input_tokens=900, output_tokens=100)),
        Context(max_tokens=1000), "halt", "max_tokens", id="tokens-exhausted",
    ),
    pytest.param(
        st([TASK, ai(READ)], usage=use(input_tokens=800, output_tokens=100, last_input_tokens=500)),
        Context(max_tokens=1000), "act", None, id="token-projection-only-before-model",
    ),
    pytest.param(
        st([TASK, ai(READ)], usage=use(cost_usd=0.5, model_calls=1)), Context(max_cost=0.5),
        "halt", "max_cost", id="cost-exhausted",
    ),
    pytest.param(
        st([TASK, ai(READ)], usage=use(active_seconds=10.0)), Context(max_seconds=10),
        "halt", "max_seconds", id="seconds-exhausted",
    ),
    pytest.param(
        st([TASK, ai(READ)], usage=use(tool_calls=3), window=[READ_FP, READ_FP]),
        Context(max_tool_calls=3), "halt", "max_tool_calls", id="budget-beats-first-loop",
    ),
    pytest.param(
        st([TASK, ai(READ)], usage=use(tool_calls=3), window=[READ_FP, READ_FP], strikes=1),
        Context(max_tool_calls=3), "halt", "loop", id="loop-after-warning-beats-budget",
    ),
]


@pytest.mark.parametrize(("state", "ctx", "route", "reason"), PLAN_CASES)
def test_route_after_plan(state: State, ctx: Context, route: str, reason: str | None) -> None:
    assert route_after_plan(state, ctx, TIERS) == route
    if route == "halt":
        verdict = diagnose(state, ctx, TIERS)
        assert verdict.reason == reason
        assert verdict.detail


# --- route_after_approve -------------------------------------------------------------

REJECTED = result("c5", "send_email", "Rejected by reviewer ann", status="error")
RESPONDED = result("c5", "send_email", "it is already sent")

APPROVE_CASES = [
    pytest.param(
        st([TASK, ai(EMAIL), REJECTED], stop=STOP_REJECTED), Context(), "halt", "rejected",
        id="stop-rejected",
    ),
    pytest.param(
        st([TASK, ai(EMAIL)], stop=STOP_CANCELLED), Context(), "halt", "cancelled",
        id="stop-cancelled",
    ),
    pytest.param(
        st([TASK, ai(EMAIL)], approvals=[approval("c5")]), Context(), "act", None,
        id="approved-call-pending",
    ),
    pytest.param(
        st([TASK, ai(READ, EMAIL), REJECTED], approvals=[approval("c5", decision="reject")]),
        Context(), "act", None, id="allowed-call-still-pending",
    ),
    pytest.param(st([TASK, ai(EMAIL), REJECTED]), Context(), "plan", None, id="all-rejected"),
    pytest.param(st([TASK, ai(EMAIL), RESPONDED]), Context(), "plan", None, id="all-responded"),
    pytest.param(
        st([TASK, ai(EMAIL), REJECTED], approvals=[approval("c5")], usage=use(model_calls=5)),
        Context(max_steps=5), "halt", "max_steps", id="max-steps",
    ),
    pytest.param(
        st([TASK, ai(EMAIL)], approvals=[approval("c5")], usage=use(model_calls=5)),
        Context(max_steps=5), "act", None, id="approved-runs-even-at-max-steps",
    ),
    pytest.param(
        st([TASK, ai(EMAIL), REJECTED], usage=use(input_tokens=700, last_input_tokens=400)),
        Context(max_tokens=1000), "halt", "max_tokens", id="token-projection",
    ),
    pytest.param(
        st([TASK, ai(EMAIL), REJECTED], usage=use(model_calls=1, cost_usd=0.51)),
        Context(max_cost=1.0), "halt", "max_cost", id="cost-projection",
    ),
    pytest.param(
        st([TASK, ai(EMAIL), REJECTED], usage=use(active_seconds=30.0)),
        Context(max_seconds=30), "halt", "max_seconds", id="max-seconds",
    ),
]


@pytest.mark.parametrize(("state", "ctx", "route", "reason"), APPROVE_CASES)
def test_route_after_approve(state: State, ctx: Context, route: str, reason: str | None) -> None:
    assert route_after_approve(state, ctx) == route
    if route == "halt":
        assert diagnose(state, ctx, TIERS).reason == reason


# --- route_after_observe -------------------------------------------------------------

OBSERVED = [TASK, ai(READ), result("c1")]
WARNED = [*OBSERVED, HumanMessage(content="[warden] Loop detected", name="warden")]

OBSERVE_CASES = [
    pytest.param(st(OBSERVED, stop=STOP_ERROR), Context(), "halt", "error", id="stop-error"),
    pytest.param(
        st(OBSERVED, stop=STOP_CANCELLED), Context(), "halt", "cancelled", id="stop-cancelled"
    ),
    pytest.param(st(OBSERVED), Context(), "plan", None, id="within-budgets"),
    pytest.param(st(WARNED, strikes=1, last="same error"), Context(), "plan", None, id="warned"),
    pytest.param(
        st(WARNED, strikes=2, last="the same tool error repeated"), Context(), "halt", "loop",
        id="loop-after-warning",
    ),
    pytest.param(
        st(OBSERVED, usage=use(model_calls=3)), Context(max_steps=3), "halt", "max_steps",
        id="max-steps",
    ),
    pytest.param(
        st(OBSERVED, usage=use(model_calls=2)), Context(max_steps=3), "plan", None,
        id="below-max-steps",
    ),
    pytest.param(
        st(OBSERVED, usage=use(input_tokens=600, output_tokens=400)), Context(max_tokens=1000),
        "halt", "max_tokens", id="tokens-used-up",
    ),
    pytest.param(
        st(OBSERVED, usage=use(input_tokens=600, output_tokens=100, last_input_tokens=301)),
        Context(max_tokens=1000), "halt", "max_tokens", id="token-projection-crosses",
    ),
    pytest.param(
        st(OBSERVED, usage=use(input_tokens=600, output_tokens=100, last_input_tokens=300)),
        Context(max_tokens=1000), "plan", None, id="token-projection-reaches-exactly",
    ),
    pytest.param(
        st(OBSERVED, usage=use(model_calls=1, cost_usd=1.0)), Context(max_cost=1.0), "halt",
        "max_cost", id="cost-spent",
    ),
    pytest.param(
        st(OBSERVED, usage=use(model_calls=1, cost_usd=0.6)), Context(max_cost=1.0), "halt",
        "max_cost", id="cost-projection-crosses",
    ),
    pytest.param(
        st(OBSERVED, usage=use(model_calls=2, cost_usd=0.6)), Context(max_cost=1.0), "plan",
        None, id="cost-projection-fits",
    ),
    pytest.param(
        st(OBSERVED, usage=use(active_seconds=5.0)), Context(max_seconds=5), "halt",
        "max_seconds", id="max-seconds",
    ),
    pytest.param(
        st(OBSERVED, usage=use(active_seconds=4.9)), Context(max_seconds=5), "plan", None,
        id="below-max-seconds",
    ),
    pytest.param(
        st(WARNED, strikes=2, last="x", usage=use(model_calls=3)), Context(max_steps=3), "halt",
        "loop", id="loop-beats-budget",
    ),
]


@pytest.mark.parametrize(("state", "ctx", "route", "reason"), OBSERVE_CASES)
def test_route_after_observe(state: State, ctx: Context, route: str, reason: str | None) -> None:
    assert route_after_observe(state, ctx) == route
    if route == "halt":
        assert diagnose(state, ctx, TIERS).reason == reason


def test_every_router_branch_is_covered() -> None:
    """The tables above exercise every Literal value of every router."""
    assert {p.values[2] for p in PLAN_CASES} == {"act", "approve", "halt"}
    assert {p.values[2] for p in APPROVE_CASES} == {"act", "plan", "halt"}
    assert {p.values[2] for p in OBSERVE_CASES} == {"plan", "halt"}


# --- diagnose ------------------------------------------------------------------------

DIAGNOSE_CASES: dict[str, tuple[State, Context, str]] = {
    "completed": (st([TASK, ai(content="all done")]), Context(), "final answer"),
    "max_steps": (st(OBSERVED, usage=use(model_calls=4)), Context(max_steps=4), "4 of 4 model"),
    "max_tool_calls": (
        st([TASK, ai(READ, READ2)], usage=use(tool_calls=9)), Context(max_tool_calls=10),
        "9 of 10 tool calls used; the next batch has 2",
    ),
    "max_tokens": (
        st(OBSERVED, usage=use(input_tokens=90, last_input_tokens=20)), Context(max_tokens=100),
        "90 of 100 tokens used",
    ),
    "max_cost": (
        st(OBSERVED, usage=use(model_calls=1, cost_usd=0.25)), Context(max_cost=0.25),
        "$0.250000 of $0.250000 spent",
    ),
    "max_seconds": (
        st(OBSERVED, usage=use(active_seconds=7.0)), Context(max_seconds=7), "7.0s of 7.0s",
    ),
    "loop": (
        st([TASK, ai(READ)], window=[READ_FP, READ_FP], strikes=1), Context(),
        "loop continued after a warning: the same tool call with the same arguments was made 3",
    ),
    "rejected": (st([TASK, ai(EMAIL), REJECTED], stop=STOP_REJECTED), Context(), "rejected"),
    "cancelled": (st([TASK, ai(READ)], stop=STOP_CANCELLED), Context(), "cancelled by ann"),
    "global_budget": (
        st([TASK, ai(READ)], stop={"reason": "global_budget", "detail": "tenant acme: daily cap"}),
        Context(), "daily cap",
    ),
    "error": (st(OBSERVED), Context(), "this is a bug in Warden"),
}


def test_diagnose_cases_cover_every_halt_reason() -> None:
    assert set(DIAGNOSE_CASES) == set(HALT_REASONS)


@pytest.mark.parametrize("reason", sorted(DIAGNOSE_CASES))
def test_diagnose(reason: str) -> None:
    state, ctx, detail = DIAGNOSE_CASES[reason]
    verdict = diagnose(state, ctx, TIERS)
    assert verdict.reason == reason
    assert detail in verdict.detail


def test_diagnose_stop_error_keeps_detail() -> None:
    verdict = diagnose(st([TASK], stop=STOP_ERROR), Context(), TIERS)
    assert verdict == (STOP_ERROR["reason"], STOP_ERROR["detail"])


def test_diagnose_loop_after_observe_uses_last_detection() -> None:
    state = st(WARNED, strikes=2, last="the same tool result repeated with no new information")
    verdict = diagnose(state, Context(), TIERS)
    assert verdict.reason == "loop"
    assert verdict.detail.endswith("the same tool result repeated with no new information")


USAGE_GRID = list(
    itertools.product(
        [0, 2, 3],  # model_calls (max_steps=3)
        [(0, 0), (500, 400), (600, 500)],  # (tokens used, last_input_tokens), max_tokens=1000
        [0.0, 0.3, 0.5],  # cost (max_cost=0.5)
        [0.0, 9.0],  # active seconds (max_seconds=9)
    )
)


@pytest.mark.parametrize(("calls", "tokens", "cost", "seconds"), USAGE_GRID)
@pytest.mark.parametrize("strikes", [0, 1, 2])
def test_diagnose_agrees_with_model_routers(
    calls: int, tokens: tuple[int, int], cost: float, seconds: float, strikes: int
) -> None:
    """Over a grid of usages, observe/approve halt exactly when diagnose names a reason."""
    ctx = Context(max_steps=3, max_tokens=1000, max_cost=0.5, max_seconds=9)
    usage = use(
        model_calls=calls, input_tokens=tokens[0], last_input_tokens=tokens[1],
        cost_usd=cost, active_seconds=seconds,
    )
    state = st(OBSERVED, usage=usage, strikes=strikes, last="the same tool error repeated")
    expected = "loop" if strikes > 1 else getattr(before_model(usage, ctx), "reason", None)
    route = route_after_observe(state, ctx)
    assert route == ("halt" if expected else "plan")
    assert diagnose(state, ctx, TIERS).reason == (expected or "error")
    if strikes <= 1:  # approve is only reached with at most one strike
        rejected = st([TASK, ai(EMAIL), REJECTED], usage=usage, strikes=strikes)
        assert route_after_approve(rejected, ctx) == route
        if route == "halt":
            assert diagnose(rejected, ctx, TIERS).reason == expected


# --- before_model / before_tools -----------------------------------------------------

BEFORE_MODEL_CASES = [
    pytest.param(use(), Context(), None, "", id="fresh"),
    pytest.param(use(model_calls=5), Context(max_steps=5), "max_steps", "5 of 5 model calls used",
                 id="steps"),
    pytest.param(use(model_calls=9, input_tokens=10**6), Context(max_steps=9), "max_steps", "",
                 id="steps-first"),
    pytest.param(use(input_tokens=500, output_tokens=500), Context(max_tokens=1000), "max_tokens",
                 "1000 of 1000 tokens used", id="tokens-used"),
    pytest.param(use(input_tokens=900, last_input_tokens=100), Context(max_tokens=1000), None, "",
                 id="tokens-projection-equal"),
    pytest.param(use(input_tokens=900, last_input_tokens=101), Context(max_tokens=1000),
                 "max_tokens", "the next call needs about 101 more", id="tokens-projection-over"),
    pytest.param(use(cost_usd=0.0), Context(max_cost=0.01), None, "", id="no-cost-yet"),
    pytest.param(use(model_calls=2, cost_usd=0.5), Context(max_cost=1.0), None, "",
                 id="cost-projection-fits"),
    pytest.param(use(model_calls=1, cost_usd=0.51), Context(max_cost=1.0), "max_cost",
                 "$0.510000 of $1.000000 spent", id="cost-projection-over"),
    pytest.param(use(cost_usd=1.0), Context(max_cost=1.0), "max_cost", "", id="cost-spent"),
    pytest.param(use(active_seconds=600.0), Context(), "max_seconds", "600.0s of 600.0s",
                 id="seconds"),
    pytest.param(use(active_seconds=599.9), Context(), None, "", id="seconds-left"),
]


@pytest.mark.parametrize(("usage", "ctx", "reason", "detail"), BEFORE_MODEL_CASES)
def test_before_model(usage: Usage, ctx: Context, reason: str | None, detail: str) -> None:
    verdict = before_model(usage, ctx)
    assert getattr(verdict, "reason", None) == reason
    if verdict:
        assert detail in verdict.detail


BEFORE_TOOLS_CASES = [
    pytest.param(use(), [READ], Context(), None, "", id="fresh"),
    pytest.param(use(tool_calls=49), [READ, READ2], Context(), "max_tool_calls",
                 "49 of 50 tool calls used; the next batch has 2", id="batch-crosses"),
    pytest.param(use(tool_calls=48), [READ, READ2], Context(), None, "", id="batch-fits"),
    pytest.param(use(tool_calls=49), [READ, UNKNOWN, UNKNOWN], Context(), None, "",
                 id="denied-not-counted"),
    pytest.param(use(tool_calls=50), [UNKNOWN], Context(), None, "", id="only-denied-at-limit"),
    pytest.param(use(tool_calls_by_name={"send_email": 1}), [EMAIL],
                 Context(max_tool_calls_per_tool={"send_email": 1}), "max_tool_calls",
                 "1 of 1 calls to send_email used; the next batch has 1", id="per-tool"),
    pytest.param(use(tool_calls_by_name={"send_email": 1}), [READ],
                 Context(max_tool_calls_per_tool={"send_email": 1}), None, "",
                 id="per-tool-other"),
    pytest.param(use(input_tokens=999, last_input_tokens=999), [READ], Context(max_tokens=1000),
                 None, "", id="tokens-not-projected"),
    pytest.param(use(output_tokens=1000), [READ], Context(max_tokens=1000), "max_tokens",
                 "1000 of 1000 tokens used", id="tokens-used"),
    pytest.param(use(cost_usd=2.0), [READ], Context(max_cost=2.0), "max_cost", "", id="cost"),
    pytest.param(use(model_calls=1, cost_usd=1.5), [READ], Context(max_cost=2.0), None, "",
                 id="cost-not-projected"),
    pytest.param(use(active_seconds=3.0), [READ], Context(max_seconds=3), "max_seconds", "",
                 id="seconds"),
]


@pytest.mark.parametrize(("usage", "batch", "ctx", "reason", "detail"), BEFORE_TOOLS_CASES)
def test_before_tools(
    usage: Usage, batch: list[ToolCall], ctx: Context, reason: str | None, detail: str
) -> None:
    verdict = before_tools(usage, batch, ctx, TIERS)
    assert getattr(verdict, "reason", None) == reason
    if verdict:
        assert detail in verdict.detail


# --- needs_approval / pending_tool_calls ---------------------------------------------

NEEDS_APPROVAL_CASES = [
    pytest.param([READ, LIST, WRITE], Context(), [], id="safe-tiers"),
    pytest.param([READ, EMAIL, DROP], Context(), ["c5", "c6"], id="ask-tiers"),
    pytest.param([UNKNOWN], Context(), [], id="unknown-is-denied-not-asked"),
    pytest.param([EMAIL], Context(deny_tiers=("irreversible",)), [], id="deny-beats-ask"),
    pytest.param([WRITE, EMAIL], Context(ask_tiers=("write",)), ["c4"], id="custom-ask"),
    pytest.param([EMAIL], Context(tier_overrides={"send_email": "read"}), [], id="override-down"),
    pytest.param([READ], Context(tier_overrides={"read_file": "destructive"}), ["c1"],
                 id="override-up"),
    pytest.param([EMAIL, DROP], Context(allowed_tools=("drop_table",)), ["c6"],
                 id="allowed-tools"),
]


@pytest.mark.parametrize(("batch", "ctx", "ids"), NEEDS_APPROVAL_CASES)
def test_needs_approval(batch: list[ToolCall], ctx: Context, ids: list[str]) -> None:
    state = st([TASK, ai(*batch)])
    assert [c["id"] for c in needs_approval(batch, ctx, TIERS, state)] == ids


@pytest.mark.parametrize("decision", ["approve", "edit", "reject", "respond"])
def test_needs_approval_skips_decided_calls(decision: str) -> None:
    state = st([TASK, ai(EMAIL, DROP)], approvals=[approval("c5", decision=decision)])
    assert [c["id"] for c in needs_approval([EMAIL, DROP], Context(), TIERS, state)] == ["c6"]


PENDING_CASES = [
    pytest.param([], [], id="empty"),
    pytest.param([TASK], [], id="only-task"),
    pytest.param([TASK, ai(content="done")], [], id="final-answer"),
    pytest.param([TASK, ai(READ, EMAIL)], ["c1", "c5"], id="fresh-batch"),
    pytest.param([TASK, ai(READ, EMAIL), result("c5", "send_email")], ["c1"], id="partial"),
    pytest.param([TASK, ai(READ), result("c1")], [], id="all-answered"),
    pytest.param(WARNED, [], id="human-after-results"),
    pytest.param([result("c1")], [], id="orphan-result"),
    pytest.param(
        [TASK, ai(READ), result("c1"), ai(READ2)], ["c2"], id="latest-turn-only",
    ),
]


@pytest.mark.parametrize(("messages", "ids"), PENDING_CASES)
def test_pending_tool_calls(messages: list[Any], ids: list[str]) -> None:
    assert [c["id"] for c in pending_tool_calls(messages)] == ids


# --- soft_warnings -------------------------------------------------------------------

SOFT_CASES = [
    pytest.param(use(), Context(), [], [], id="nothing-used"),
    pytest.param(use(model_calls=19), Context(max_steps=25), [], [], id="below-threshold"),
    pytest.param(use(model_calls=20), Context(max_steps=25), [],
                 ["max_steps: 20 of 25 used (80%)"], id="steps-at-threshold"),
    pytest.param(use(model_calls=20), Context(max_steps=25),
                 ["max_steps: 20 of 25 used (80%)"], [], id="already-recorded"),
    pytest.param(use(tool_calls=5), Context(max_tool_calls=10, soft_threshold=0.5), [],
                 ["max_tool_calls: 5 of 10 used (50%)"], id="custom-threshold"),
    pytest.param(use(tool_calls=0), Context(max_tool_calls=0), [], [], id="zero-limit-ignored"),
    pytest.param(use(input_tokens=700, output_tokens=100), Context(max_tokens=1000), [],
                 ["max_tokens: 800 of 1000 used (80%)"], id="tokens"),
    pytest.param(use(cost_usd=0.9), Context(max_cost=1.0), [],
                 ["max_cost: 0.9 of 1 used (90%)"], id="cost"),
    pytest.param(use(active_seconds=10.0), Context(max_seconds=10, soft_threshold=1.0), [],
                 ["max_seconds: 10 of 10 used (100%)"], id="seconds-full-threshold"),
    pytest.param(use(model_calls=24, tool_calls=45), Context(), ["price: no price"],
                 ["max_steps: 24 of 25 used (96%)", "max_tool_calls: 45 of 50 used (90%)"],
                 id="several-at-once"),
]


@pytest.mark.parametrize(("usage", "ctx", "recorded", "expected"), SOFT_CASES)
def test_soft_warnings(usage: Usage, ctx: Context, recorded: list[str], expected: list[str]) -> None:
    assert soft_warnings(usage, ctx, recorded) == expected
