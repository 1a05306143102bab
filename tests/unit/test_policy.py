"""The policy: tiers, argument rules, taint escalation, and the policy file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from graph.errors import ConfigError
from graph.policy import ArgRule, Policy, load_policy_file
from graph.settings import make_context
from tests.conftest import REPO

TIERS = {"read_file": "read", "write_file": "write", "send_email": "irreversible",
         "sql_query": "read", "refund": "write", "drop_db": "destructive"}


def rule(**kw: Any) -> ArgRule:
    return ArgRule(tool=kw.pop("tool", "t"), arg=kw.pop("arg", "a"), action=kw.pop("action", "ask"), **kw)


@pytest.mark.parametrize(
    ("the_rule", "args", "hit"),
    [
        (rule(domains_not_in=("example.com",)), {"a": "bob@example.com"}, False),
        (rule(domains_not_in=("example.com",)), {"a": "bob@mail.example.com"}, False),
        (rule(domains_not_in=("example.com",)), {"a": "eve@evil.test"}, True),
        (rule(domains_not_in=("example.com",)), {"a": "eve@example.com.evil.test"}, True),
        (rule(domains_not_in=("example.com",)), {"a": "bob@example.com, eve@evil.test"}, True),
        (rule(domains_not_in=("example.com",)), {"a": ["bob@example.com", "x@evil.test"]}, True),
        (rule(domains_not_in=("example.com",)), {"a": "not-an-address"}, True),
        (rule(domains_not_in=("example.com",)), {"b": "eve@evil.test"}, False),
        (rule(tables=("users",)), {"a": "select * from orders"}, False),
        (rule(tables=("users",)), {"a": "SELECT name FROM Users"}, True),
        (rule(tables=("users",)), {"a": 'select * from public."users"'}, True),
        (rule(tables=("users",)), {"a": "select * from orders join users u on true"}, True),
        # Any mention counts, even in a literal or comment: the rule errs on the side of asking.
        (rule(tables=("users",)), {"a": "select 'users' as label"}, True),
        (rule(tables=("users",)), {"a": "select 1 -- users"}, True),
        (rule(tables=("users",)), {"a": "select * from users_archive"}, False),
        (rule(gt=100), {"a": 100}, False),
        (rule(gt=100), {"a": 100.01}, True),
        (rule(gt=100), {"a": "1,500"}, True),
        (rule(gt=100), {"a": "lots"}, False),
        (rule(gt=100), {"a": True}, False),
        (rule(matches=r"^/etc/"), {"a": "/etc/passwd"}, True),
        (rule(matches=r"^/etc/"), {"a": "notes/etc.txt"}, False),
    ],
)
def test_rule_conditions(the_rule: ArgRule, args: dict[str, Any], hit: bool) -> None:
    assert the_rule.hits(args) is hit


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"gt": 1, "tables": ("x",)},
        {"matches": "("},
    ],
)
def test_a_rule_needs_exactly_one_valid_condition(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        rule(**bad)


POLICY = Policy(
    rules=(
        ArgRule(tool="send_email", arg="to", domains_not_in=("example.com",), action="deny"),
        ArgRule(tool="refund", arg="amount", gt=100, action="ask", reason="big refund"),
        ArgRule(tool="sql_query", arg="query", tables=("users",), action="ask"),
    )
)


@pytest.mark.parametrize(
    ("tool", "args", "tainted", "decision", "reason"),
    [
        ("read_file", {"path": "a"}, False, "allow", "tier read"),
        ("read_file", {"path": "a"}, True, "allow", "tier read"),  # reading stays allowed
        ("write_file", {"path": "a"}, False, "allow", "tier write"),
        ("write_file", {"path": "a"}, True, "ask", "tainted"),
        ("refund", {"amount": 5}, False, "allow", "tier write"),
        ("refund", {"amount": 500}, False, "ask", "big refund"),
        ("send_email", {"to": "a@example.com"}, False, "ask", "tier irreversible"),
        ("send_email", {"to": "a@evil.test"}, False, "deny", "to outside example.com"),
        ("send_email", {"to": "a@evil.test"}, True, "deny", "to outside example.com"),
        ("sql_query", {"query": "select 1"}, False, "allow", "tier read"),
        ("sql_query", {"query": "select * from users"}, False, "ask", "query touches users"),
        ("drop_db", {}, False, "ask", "tier destructive"),
        ("launch", {}, False, "deny", "unknown tool"),
    ],
)
def test_call_decisions(tool: str, args: dict[str, Any], tainted: bool, decision: str, reason: str) -> None:
    verdict = POLICY.decide_call(tool, args, TIERS, tainted=tainted)
    assert verdict.decision == decision
    assert reason in verdict.reason


def test_profile_limits_tools_and_deny_beats_ask() -> None:
    policy = Policy(
        allow_tools=frozenset({"read_file", "refund"}),
        rules=(
            ArgRule(tool="refund", arg="amount", gt=10, action="ask"),
            ArgRule(tool="refund", arg="amount", gt=1000, action="deny"),
        ),
    )
    assert policy.decide_call("send_email", {}, TIERS).decision == "deny"
    assert policy.decide_call("refund", {"amount": 50}, TIERS).decision == "ask"
    assert policy.decide_call("refund", {"amount": 5000}, TIERS).decision == "deny"


def test_bundled_example_policy_loads_and_builds_contexts() -> None:
    policy_file = load_policy_file(REPO / "policy.example.toml")
    assert policy_file.default_profile == "support"
    support = make_context(policy_file.context_fields(None))
    assert support.profile == "support"
    assert support.egress_allowlist == ("docs.example.com", "status.example.com")
    assert support.policy.decide_call("send_email", {"to": "x@evil.test"}, TIERS).decision == "deny"
    assert support.policy.decide("sql_query", TIERS) == "deny"  # not in this profile
    payments = make_context(policy_file.context_fields("payments"))
    assert payments.policy.decide_call("refund", {"amount": 101}, TIERS).decision == "ask"
    assert payments.policy.decide_call("refund", {"amount": 99}, TIERS).decision == "allow"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("profiles = 3", "profiles"),
        ('[profiles.a]\ntools = ["x"]\nbogus = 1', "bogus"),
        ('default_profile = "b"\n[profiles.a]\ntools = ["x"]', "default_profile 'b' is not a profile"),
        ('[profiles.a]\ntools = ["x"]\n[[profiles.a.rules]]\ntool = "y"\narg = "q"\naction = "ask"\ngt = 1',
         "names a tool outside this profile"),
        ('[profiles.a]\ntools = ["x"]\n[profiles.a.tiers]\nx = "safe"', "tiers.x"),
        ('[profiles.a]\ntools = ["x"]\n[[profiles.a.rules]]\ntool = "x"\narg = "q"\naction = "maybe"\ngt = 1',
         "action"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_policy_file_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy_file(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_profile_selection_errors(tmp_path: Path) -> None:
    policy_file = load_policy_file(write(tmp_path, '[profiles.a]\ntools = ["read_file", "ghost"]'))
    with pytest.raises(ConfigError, match="no default_profile"):
        policy_file.context_fields(None)
    with pytest.raises(ConfigError, match="unknown profile 'z'; the policy file has a"):
        policy_file.context_fields("z")
    with pytest.raises(ConfigError, match="names unknown tools: ghost"):
        policy_file.context_fields("a", known_tools=["read_file"])
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy_file(tmp_path / "missing.toml")


def test_a_tainted_run_sends_changing_calls_to_approval() -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    from graph.context import Context
    from graph.routing import needs_approval, route_after_plan
    from graph.state import empty_loop_state, empty_usage

    turn = AIMessage(
        content="",
        tool_calls=[
            {"name": "write_file", "args": {"path": "a"}, "id": "w1", "type": "tool_call"},
            {"name": "read_file", "args": {"path": "b"}, "id": "r1", "type": "tool_call"},
        ],
    )
    state: dict[str, Any] = {
        "messages": [HumanMessage(content="go"), turn],
        "usage": empty_usage(),
        "loop": empty_loop_state(),
        "approvals": [],
        "tainted": False,
    }
    ctx = Context()
    assert route_after_plan(state, ctx, TIERS) == "act"  # type: ignore[arg-type]
    state["tainted"] = True
    assert route_after_plan(state, ctx, TIERS) == "approve"  # type: ignore[arg-type]
    assert [c["id"] for c in needs_approval(turn.tool_calls, ctx, TIERS, state)] == ["w1"]  # type: ignore[arg-type]
