"""HITL request shapes (LangChain v1) and validation of human decisions in graph/hitl.py."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from langchain.agents.middleware import human_in_the_loop as lc_hitl
from pydantic import BaseModel, ValidationError

from graph.hitl import PendingCall, build_request, first_error, response_schema
from tools.builtin import outbox_email_tool
from tools.registry import ToolRegistry, as_spec


def resize_volume(volume: str, size_gb: int, force: bool = False) -> str:
    """Resize a storage volume."""
    return f"{volume} -> {size_gb}GB (force={force})"


@pytest.fixture
def registry(tmp_path: Path) -> ToolRegistry:
    """Real tools: the outbox email tool and a typed function tool with an int argument."""
    return ToolRegistry.of(
        [outbox_email_tool(tmp_path / "outbox"), as_spec(resize_volume, tier="destructive")]
    )


EMAIL = PendingCall(
    id="call_1_1",
    name="send_email",
    args={"to": "ops@example.com", "subject": "Incident", "body": "Resolved."},
    tier="irreversible",
    reasoning="The runbook says to notify ops once the incident is resolved.",
)
RESIZE = PendingCall(
    id="call_1_2",
    name="resize_volume",
    args={"volume": "data", "size_gb": 10},
    tier="destructive",
    reasoning="",
)


@pytest.fixture
def schema(registry: ToolRegistry) -> type[BaseModel]:
    """The resume schema for a batch of [send_email, resize_volume]."""
    return response_schema([EMAIL, RESIZE], registry.args_models())


def refusal(schema: type[BaseModel], value: Any) -> str:
    """Validate a resume value that must be refused; return the one-line message."""
    with pytest.raises(ValidationError) as info:
        schema.model_validate(value)
    message = first_error(info.value)
    assert "\n" not in message
    return message


# --- build_request -------------------------------------------------------------------


def test_build_request_shape(registry: ToolRegistry) -> None:
    schemas = {n: m.model_json_schema() for n, m in registry.args_models().items()}
    request = build_request([EMAIL, RESIZE], schemas)
    assert set(request) == {"action_requests", "review_configs", "tool_call_ids", "tiers"}
    assert [a["name"] for a in request["action_requests"]] == ["send_email", "resize_volume"]
    assert request["action_requests"][0]["args"] == EMAIL["args"]
    assert request["review_configs"][0]["action_name"] == "send_email"
    assert request["review_configs"][1]["allowed_decisions"] == [
        "approve", "edit", "reject", "respond"
    ]
    assert request["review_configs"][0]["args_schema"]["required"] == ["to", "subject", "body"]
    assert request["review_configs"][1]["args_schema"]["properties"]["size_gb"]["type"] == "integer"
    assert request["tool_call_ids"] == ["call_1_1", "call_1_2"]
    assert request["tiers"] == ["irreversible", "destructive"]


def test_description_carries_reasoning_and_tier() -> None:
    request = build_request([EMAIL, RESIZE])
    first, second = (a["description"] for a in request["action_requests"])
    assert "send_email" in first
    assert "risk tier: irreversible" in first
    assert "The runbook says to notify ops once the incident is resolved." in first
    assert "risk tier: destructive" in second
    assert "(the model gave no reasoning)" in second


def test_request_args_are_a_copy() -> None:
    request = build_request([EMAIL])
    request["action_requests"][0]["args"]["to"] = "evil@example.com"
    assert EMAIL["args"]["to"] == "ops@example.com"


def test_review_config_without_schema_has_no_args_schema() -> None:
    request = build_request([EMAIL])
    assert "args_schema" not in request["review_configs"][0]


def test_request_matches_langchain_v1_hitl_types() -> None:
    """Agent Chat UI and LangChain clients read these keys; ours must be a superset."""
    request = build_request([EMAIL])
    assert set(typing.get_type_hints(lc_hitl.HITLRequest)) <= set(request)
    assert set(typing.get_type_hints(lc_hitl.ActionRequest)) <= set(request["action_requests"][0])
    config = request["review_configs"][0]
    assert {"action_name", "allowed_decisions"} <= set(config)
    assert set(config) <= set(typing.get_type_hints(lc_hitl.ReviewConfig))
    assert set(config["allowed_decisions"]) <= set(typing.get_args(lc_hitl.DecisionType))


# --- response_schema: accepted decisions ---------------------------------------------


@pytest.mark.parametrize(
    ("decision", "kind"),
    [
        pytest.param({"type": "approve"}, "approve", id="approve"),
        pytest.param({"type": "reject"}, "reject", id="reject-without-message"),
        pytest.param({"type": "reject", "message": "not now"}, "reject", id="reject"),
        pytest.param({"type": "respond", "message": "already sent"}, "respond", id="respond"),
        pytest.param(
            {"type": "edit", "edited_action": {"name": "send_email", "args": {
                "to": "lead@example.com", "subject": "Incident", "body": "Resolved."}}},
            "edit", id="edit",
        ),
    ],
)
def test_each_decision_type_is_accepted(
    schema: type[BaseModel], decision: dict[str, Any], kind: str
) -> None:
    answer = schema.model_validate(
        {"decisions": [decision, {"type": "approve"}], "reviewer": "ann"}
    )
    assert [d.type for d in answer.decisions] == [kind, "approve"]
    assert answer.reviewer == "ann"
    if kind == "edit":
        assert answer.decisions[0].edited_action.args["to"] == "lead@example.com"
    if "message" in decision:
        assert answer.decisions[0].message == decision["message"]


def test_reviewer_defaults_to_unknown(schema: type[BaseModel]) -> None:
    answer = schema.model_validate({"decisions": [{"type": "approve"}, {"type": "approve"}]})
    assert answer.reviewer == "unknown"


def test_edit_coerces_string_values(schema: type[BaseModel]) -> None:
    answer = schema.model_validate(
        {"decisions": [{"type": "approve"}, {"type": "edit", "edited_action": {
            "name": "resize_volume", "args": {"volume": "data", "size_gb": "5"}}}]}
    )
    assert answer.decisions[1].edited_action.args == {"volume": "data", "size_gb": 5}


def test_edit_accepts_whole_args_as_json_string(schema: type[BaseModel]) -> None:
    answer = schema.model_validate(
        {"decisions": [{"type": "approve"}, {"type": "edit", "edited_action": {
            "name": "resize_volume", "args": '{"volume": "logs", "size_gb": "20", "force": true}'}}]}
    )
    assert answer.decisions[1].edited_action.args == {
        "volume": "logs", "size_gb": 20, "force": True
    }


def test_edit_without_args_model_keeps_args(registry: ToolRegistry) -> None:
    call = PendingCall(id="c9", name="custom", args={"a": 1}, tier="irreversible", reasoning="")
    schema = response_schema([call], registry.args_models())
    answer = schema.model_validate(
        {"decisions": [{"type": "edit", "edited_action": {"name": "custom", "args": '{"a": 2}'}}]}
    )
    assert answer.decisions[0].edited_action.args == {"a": 2}


def test_same_tool_twice_in_a_batch(registry: ToolRegistry) -> None:
    other = PendingCall(**{**EMAIL, "id": "call_1_3"})
    schema = response_schema([EMAIL, other], registry.args_models())
    answer = schema.model_validate({"decisions": [{"type": "approve"}, {"type": "reject"}]})
    assert [d.type for d in answer.decisions] == ["approve", "reject"]


# --- response_schema: refusals -------------------------------------------------------

REFUSALS = [
    pytest.param(
        {"decisions": [{"type": "approve"}]},
        "decisions: expected 2 decision(s), one per action request, got 1", id="too-few",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}] * 3},
        "decisions: expected 2 decision(s), one per action request, got 3", id="too-many",
    ),
    pytest.param(
        {"decisions": []}, "decisions: expected 2 decision(s), one per action request, got 0",
        id="empty",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "ignore"}]},
        "decisions: decision 2 has unknown type 'ignore'; expected one of approve, edit, reject, "
        "respond", id="unknown-type",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, "approve"]},
        "decisions: decision 2 must be an object with a 'type'", id="decision-not-object",
    ),
    pytest.param(
        {"decisions": [{"message": "hi"}, {"type": "approve"}]},
        "decisions: decision 1 must be an object with a 'type'", id="decision-without-type",
    ),
    pytest.param({"decisions": {"type": "approve"}}, "decisions: decisions must be a list",
                 id="decisions-object"),
    pytest.param({"decisions": "approve"}, "decisions: decisions must be a list",
                 id="decisions-string"),
    pytest.param({"decisions": None}, "decisions: decisions must be a list", id="decisions-null"),
    pytest.param({"reviewer": "ann"}, "decisions: Field required", id="decisions-missing"),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "approve"}], "comment": "ok"},
        "comment: Extra inputs are not permitted", id="extra-top-level-key",
    ),
    pytest.param(
        {"decisions": [{"type": "approve", "args": {}}, {"type": "approve"}]},
        "decisions: decision 1 (approve of send_email): args: Extra inputs are not permitted",
        id="extra-key-in-approve",
    ),
    pytest.param(
        {"decisions": [{"type": "reject", "message": "no", "why": "x"}, {"type": "approve"}]},
        "decisions: decision 1 (reject of send_email): why: Extra inputs are not permitted",
        id="extra-key-in-reject",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "edit", "edited_action": {
            "name": "resize_volume", "args": {"volume": "d", "size_gb": 1}, "note": "x"}}]},
        "decisions: decision 2 (edit of resize_volume): edited_action.note: Extra inputs are not "
        "permitted", id="extra-key-in-edited-action",
    ),
    pytest.param(
        {"decisions": [{"type": "respond"}, {"type": "approve"}]},
        "decisions: decision 1 (respond of send_email): message: Field required",
        id="respond-without-message",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "edit"}]},
        "decisions: decision 2 (edit of resize_volume): edited_action: Field required",
        id="edit-without-action",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "edit", "edited_action": {
            "name": "resize_volume"}}]},
        "decisions: decision 2 (edit of resize_volume): edited_action.args: Field required",
        id="edit-without-args",
    ),
    pytest.param(
        {"decisions": [{"type": "edit", "edited_action": {
            "name": "resize_volume", "args": {"volume": "d", "size_gb": 1}}}, {"type": "approve"}]},
        "decisions: decision 1 (edit of send_email): edited_action.name: Input should be "
        "'send_email'", id="edit-renames-tool",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "edit", "edited_action": {
            "name": "resize_volume", "args": {"volume": "d", "size_gb": "lots"}}}]},
        "decisions: decision 2 (edit of resize_volume): edited_action.args.size_gb: Input should "
        "be a valid integer, unable to parse string as an integer", id="edit-bad-int",
    ),
    pytest.param(
        {"decisions": [{"type": "edit", "edited_action": {
            "name": "send_email", "args": {"to": "nobody", "subject": "s", "body": "b"}}},
            {"type": "approve"}]},
        "decisions: decision 1 (edit of send_email): edited_action.args.to: String should match "
        "pattern", id="edit-bad-email",
    ),
    pytest.param(
        {"decisions": [{"type": "edit", "edited_action": {
            "name": "send_email", "args": {"to": "a@b.co", "subject": "s"}}}, {"type": "approve"}]},
        "decisions: decision 1 (edit of send_email): edited_action.args.body: Field required",
        id="edit-missing-arg",
    ),
    pytest.param(
        {"decisions": [{"type": "edit", "edited_action": {
            "name": "send_email", "args": {"to": "a@b.co", "subject": "s", "body": "b",
                                           "bcc": "x@y.z"}}}, {"type": "approve"}]},
        "decisions: decision 1 (edit of send_email): edited_action.args.bcc: Extra inputs are "
        "not permitted", id="edit-unknown-arg",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "edit", "edited_action": {
            "name": "resize_volume", "args": "{size_gb: 5}"}}]},
        "decisions: decision 2 (edit of resize_volume): edited_action.args: edited args are not "
        "a JSON object: Expecting property name enclosed in double quotes", id="edit-bad-json",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "edit", "edited_action": {
            "name": "resize_volume", "args": "[5]"}}]},
        "decisions: decision 2 (edit of resize_volume): edited_action.args: edited args must be "
        "an object", id="edit-json-not-object",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "edit", "edited_action": {
            "name": "resize_volume", "args": 5}}]},
        "decisions: decision 2 (edit of resize_volume): edited_action.args: edited args must be "
        "an object", id="edit-args-number",
    ),
    pytest.param(
        {"decisions": [{"type": "approve"}, {"type": "approve"}], "reviewer": ""},
        "reviewer: String should have at least 1 character", id="empty-reviewer",
    ),
]


@pytest.mark.parametrize(("value", "message"), REFUSALS)
def test_refusals_have_one_line_messages(
    schema: type[BaseModel], value: Any, message: str
) -> None:
    assert refusal(schema, value).startswith(message)


@pytest.mark.parametrize("value", [None, [], "approve", 1])
def test_non_object_resume_is_refused(schema: type[BaseModel], value: Any) -> None:
    assert "valid dictionary" in refusal(schema, value)


def test_first_error_without_location() -> None:
    class Only(BaseModel):
        x: int

    with pytest.raises(ValidationError) as info:
        Only.model_validate("nope")
    assert first_error(info.value) == "Input should be a valid dictionary or instance of Only"
