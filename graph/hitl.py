"""Human-in-the-loop shapes (LangChain v1 HITL) and the validation of decisions.

The request is what `approve` passes to `interrupt()`; the response schema is a
pydantic model built per request, passed as `interrupt(..., response_schema=...)`,
so LangGraph refuses a malformed resume before anything is saved and the thread
stays awaiting approval, unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
)
from typing_extensions import TypedDict

from graph.errors import first_error

__all__ = ["build_request", "first_error", "response_schema"]

DecisionType = Literal["approve", "edit", "reject", "respond"]
ALL_DECISIONS: list[DecisionType] = ["approve", "edit", "reject", "respond"]


class ActionRequest(TypedDict):
    """One tool call put to a human."""

    name: str
    args: dict[str, Any]
    description: str


class ReviewConfig(TypedDict):
    """What a human may decide about one action."""

    action_name: str
    allowed_decisions: list[DecisionType]
    args_schema: NotRequired[dict[str, Any]]


class HITLRequest(TypedDict):
    """The interrupt value: LangChain v1 HITL, extended with Warden's call metadata."""

    action_requests: list[ActionRequest]
    review_configs: list[ReviewConfig]
    tool_call_ids: list[str]
    tiers: list[str]
    in_doubt: NotRequired[list[bool]]


class PendingCall(TypedDict):
    """A tool call that needs approval, as `approve` sees it."""

    id: str
    name: str
    args: dict[str, Any]
    tier: str
    reasoning: str
    policy_reason: NotRequired[str]
    in_doubt: NotRequired[bool]
    doubt_detail: NotRequired[str]


# An in-doubt call keeps the arguments it started with: its idempotency key names them.
IN_DOUBT_DECISIONS: list[DecisionType] = ["approve", "reject", "respond"]


def describe(call: PendingCall) -> str:
    """Write the reviewer-facing description: tool, tier and the model's reasoning."""
    reasoning = call["reasoning"].strip() or "(the model gave no reasoning)"
    why = f"\nApproval needed because: {call['policy_reason']}" if call.get("policy_reason") else ""
    doubt = ""
    if call.get("in_doubt"):
        doubt = (
            f"IN DOUBT: {call.get('doubt_detail', 'an earlier attempt has no recorded outcome')}. "
            "It may or may not have taken effect. Approve runs it again; reject does not "
            "(the model is told its outcome is unknown); respond gives the result yourself.\n"
        )
    return (
        f"{doubt}Tool `{call['name']}` (risk tier: {call['tier']}) wants to run with the "
        f"arguments shown.{why}\nModel's reasoning: {reasoning}"
    )


def build_request(
    calls: Sequence[PendingCall], schemas: Mapping[str, dict[str, Any]] | None = None
) -> HITLRequest:
    """Build the HITL request for a batch of calls needing approval."""
    schemas = schemas or {}
    configs: list[ReviewConfig] = []
    for call in calls:
        allowed = IN_DOUBT_DECISIONS if call.get("in_doubt") else ALL_DECISIONS
        config = ReviewConfig(action_name=call["name"], allowed_decisions=list(allowed))
        if call["name"] in schemas:
            config["args_schema"] = schemas[call["name"]]
        configs.append(config)
    request = HITLRequest(
        action_requests=[
            ActionRequest(name=c["name"], args=dict(c["args"]), description=describe(c))
            for c in calls
        ],
        review_configs=configs,
        tool_call_ids=[c["id"] for c in calls],
        tiers=[c["tier"] for c in calls],
    )
    if any(c.get("in_doubt") for c in calls):
        request["in_doubt"] = [bool(c.get("in_doubt")) for c in calls]
    return request


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApproveDecision(_Strict):
    """Run the call as requested."""

    type: Literal["approve"]


class RejectDecision(_Strict):
    """Do not run the call; the model sees the message and replans."""

    type: Literal["reject"]
    message: str | None = Field(default=None, max_length=10_000)


class RespondDecision(_Strict):
    """Do not run the call; return the human's answer as its result."""

    type: Literal["respond"]
    message: str = Field(max_length=100_000)


def _edit_decision(name: str, args_model: type[BaseModel] | None) -> type[BaseModel]:
    """Build the edit decision for one tool: name pinned, args validated by its schema."""

    def parse_text(value: Any) -> Any:
        # Agent Chat UI edits arguments as text: a JSON object may arrive as a string.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"edited args are not a JSON object: {exc.msg}") from None
        return value

    def check_args(value: Any) -> dict[str, Any]:
        value = parse_text(value)
        if not isinstance(value, dict):
            raise ValueError("edited args must be an object")
        if args_model is None:
            return value
        validated = args_model.model_validate(value)
        return validated.model_dump(mode="json", exclude_unset=True)

    action = create_model(
        f"EditedAction_{name}",
        __config__=ConfigDict(extra="forbid"),
        name=(Literal[name], ...),  # type: ignore[arg-type,valid-type]  # pinned at runtime
        args=(Any, ...),
        __validators__={
            "check": field_validator("args", mode="before")(lambda cls, v: check_args(v))
        },
    )
    return create_model(
        f"EditDecision_{name}",
        __config__=ConfigDict(extra="forbid"),
        type=(Literal["edit"], ...),  # type: ignore[arg-type,maybe-unrecognized-str-typeform]
        edited_action=(action, ...),
    )


def response_schema(
    calls: Sequence[PendingCall], args_models: Mapping[str, type[BaseModel]]
) -> type[BaseModel]:
    """Build the resume schema: exactly one valid decision per requested call, in order."""
    names = [c["name"] for c in calls]
    doubted = [bool(c.get("in_doubt")) for c in calls]
    edit_models = {name: _edit_decision(name, args_models.get(name)) for name in set(names)}
    simple: dict[str, type[BaseModel]] = {
        "approve": ApproveDecision,
        "reject": RejectDecision,
        "respond": RespondDecision,
    }

    def parse(index: int, raw: Any, name: str) -> BaseModel:
        if not isinstance(raw, dict) or "type" not in raw:
            raise ValueError(f"decision {index} must be an object with a 'type'")
        kind = raw["type"]
        if kind == "edit" and doubted[index - 1]:
            raise ValueError(
                f"decision {index}: {name} is in doubt and cannot be edited; approve, "
                "reject or respond"
            )
        model = edit_models[name] if kind == "edit" else simple.get(kind)
        if model is None:
            raise ValueError(
                f"decision {index} has unknown type {kind!r}; expected one of "
                f"{', '.join(ALL_DECISIONS)}"
            )
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"decision {index} ({kind} of {name}): {first_error(exc)}") from None

    def check(cls: Any, value: Any) -> list[BaseModel]:
        if not isinstance(value, list):
            raise ValueError("decisions must be a list")
        if len(value) != len(names):
            raise ValueError(
                f"expected {len(names)} decision(s), one per action request, got {len(value)}"
            )
        return [parse(i, raw, name) for i, (raw, name) in enumerate(zip(value, names, strict=True), 1)]

    return create_model(
        "ApprovalResponse",
        __config__=ConfigDict(extra="forbid"),
        decisions=(list[Any], ...),
        reviewer=(str, Field(default="unknown", min_length=1, max_length=200)),
        __validators__={"check": field_validator("decisions", mode="before")(check)},
    )
