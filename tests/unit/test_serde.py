"""WardenSerializer: messages load without re-validation, equal to the stock path."""

from __future__ import annotations

from typing import Any

import ormsgpack
import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.checkpoint.serde.jsonplus import EXT_PYDANTIC_V2, JsonPlusSerializer, _msgpack_enc
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from langgraph.types import Overwrite
from pydantic import BaseModel

from checkpoints.serde import MESSAGE_CLASSES, WardenSerializer
from checkpoints.warden_saver import WardenSaver


def well_formed() -> list[BaseMessage]:
    """Messages as Warden and LangChain write them: every shape the fast path takes."""
    return [
        HumanMessage(content="fetch the records", id="h1"),
        HumanMessage(content="[warden: note]", name="warden"),
        HumanMessage(
            content=[
                {"type": "text", "text": "look"},
                {"type": "image", "url": "https://example.com/a.png"},
                "plain",
            ],
            id="h2",
            additional_kwargs={"k": [1, 2, {"x": None}]},
        ),
        SystemMessage(content="you are an agent", id="s1"),
        AIMessage(content="done", id="run-1", response_metadata={"model_name": "gpt-4o-mini"}),
        AIMessage(
            content="",
            id="run-2",
            tool_calls=[
                {"name": "fetch", "args": {"i": 3}, "id": "call_1"},
                {"name": "fetch", "args": {"i": 4, "nested": {"a": [1]}}, "id": None},
            ],
            invalid_tool_calls=[
                {"name": "bad", "args": "{not json", "id": "call_2", "error": "JSON"},
                {"name": None, "args": None, "id": None, "error": None},
            ],
            usage_metadata={
                "input_tokens": 100,
                "output_tokens": 20,
                "total_tokens": 120,
                "input_token_details": {"cache_read": 5},
                "output_token_details": {"reasoning": 3},
            },
            response_metadata={"warden": {"prompt_tokens": 5, "rate_limit_wait_s": 0.25}},
            additional_kwargs={"refusal": None},
        ),
        AIMessage(
            content=[{"type": "text", "text": "thinking"}, {"type": "reasoning", "reasoning": "r"}],
            name="planner",
        ),
        ToolMessage(content="ab" * 1536, tool_call_id="call_1", name="fetch", id="t1"),
        ToolMessage(
            content=[{"type": "text", "text": "part"}, "more"],
            tool_call_id="call_2",
            status="error",
            artifact={"rows": [1, 2]},
            response_metadata={"warden": {"refused": "policy"}},
        ),
    ]


def unusual() -> list[Any]:
    """Values the fast path must leave to the stock path."""
    extra = HumanMessage(content="x", id="e1")
    extra.custom = "attribute"  # type: ignore[attr-defined]  # extra="allow"
    return [
        AIMessageChunk(content="chunk", id="c1"),
        ChatMessage(content="hi", role="critic"),
        RemoveMessage(id="gone"),
        extra,
        Overwrite([HumanMessage(content="reset")]),
    ]


def state(value: Any) -> Any:
    """Everything a loaded value holds: pydantic state, field order, nested values."""
    if isinstance(value, BaseModel):
        return (
            type(value),
            list(value.__dict__),
            value.__getstate__(),
            value.model_dump_json(),
        )
    if isinstance(value, _DeltaSnapshot):
        return ("snapshot", state(value.value))
    if isinstance(value, Overwrite):
        return ("overwrite", state(value.value))
    if isinstance(value, list):
        return [state(v) for v in value]
    if isinstance(value, dict):
        return {k: state(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    "value",
    [
        *well_formed(),
        *unusual(),
        well_formed(),
        _DeltaSnapshot(well_formed()),
        {"messages": well_formed(), "n": 1},
    ],
    ids=lambda v: type(v).__name__,
)
def test_loads_equal_the_stock_path(value: Any) -> None:
    stock = JsonPlusSerializer()
    stored = stock.dumps_typed(value)
    assert WardenSerializer().dumps_typed(value) == stored  # writes are the stock bytes
    assert state(WardenSerializer().loads_typed(stored)) == state(stock.loads_typed(stored))


def count_validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every message constructor call (the stock path's `cls(**fields)`)."""
    calls: list[str] = []
    for cls in MESSAGE_CLASSES:

        def init(self: Any, *args: Any, __init: Any = cls.__init__, **kwargs: Any) -> None:
            calls.append(type(self).__name__)
            __init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)
    return calls


def test_well_formed_messages_skip_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of it: no constructor, no validator runs for a well-formed message."""
    messages = well_formed()
    stored = JsonPlusSerializer().dumps_typed(_DeltaSnapshot(messages))
    validated = count_validations(monkeypatch)
    loaded = WardenSerializer().loads_typed(stored)
    assert validated == []
    assert [m.id for m in loaded.value] == [m.id for m in messages]
    JsonPlusSerializer().loads_typed(stored)
    assert len(validated) == len(messages)  # what the stock path does


def payload(module: str, name: str, fields: dict[str, Any]) -> tuple[str, bytes]:
    """A stored list holding one pydantic payload with these fields, as LangGraph packs it."""
    ext = ormsgpack.Ext(EXT_PYDANTIC_V2, _msgpack_enc((module, name, fields, "model_validate_json")))
    return "msgpack", ormsgpack.packb([ext])


def older_payloads() -> list[tuple[str, bytes]]:
    """Messages an older LangChain stored, or with odd fields: the stock path's job."""
    old_ai = AIMessage(content="", id="old").model_dump()
    del old_ai["invalid_tool_calls"], old_ai["tool_calls"]
    old_ai["additional_kwargs"] = {
        "tool_calls": [
            {"id": "c9", "type": "function", "function": {"name": "fetch", "arguments": '{"i": 9}'}}
        ]
    }
    extras = AIMessage(content="", id="odd").model_dump()
    extras["tool_calls"] = [{"name": "f", "args": {}, "id": "c", "type": "tool_call", "extras": {}}]
    numeric_id = ToolMessage(content="r", tool_call_id="x").model_dump()
    numeric_id["tool_call_id"] = 7
    float_usage = AIMessage(content="u").model_dump()
    float_usage["usage_metadata"] = {"input_tokens": 1.0, "output_tokens": 2, "total_tokens": 3}
    float_detail = AIMessage(content="d").model_dump()
    float_detail["usage_metadata"] = {
        "input_tokens": 1, "output_tokens": 2, "total_tokens": 3, "input_token_details": {"cache_read": 1.0}
    }
    list_args = AIMessage(content="", tool_calls=[{"name": "f", "args": {}, "id": "c"}]).model_dump()
    list_args["tool_calls"][0]["args"] = [1, 2]
    wrong_type = HumanMessage(content="h").model_dump()
    wrong_type["type"] = "ai"
    tuple_content = ToolMessage(content="r", tool_call_id="x").model_dump()
    tuple_content["content"] = 42
    return [
        payload("langchain_core.messages.ai", "AIMessage", old_ai),
        payload("langchain_core.messages.ai", "AIMessage", extras),
        payload("langchain_core.messages.tool", "ToolMessage", numeric_id),
        payload("langchain_core.messages.ai", "AIMessage", float_usage),
        payload("langchain_core.messages.ai", "AIMessage", float_detail),
        payload("langchain_core.messages.ai", "AIMessage", list_args),
        payload("langchain_core.messages.human", "HumanMessage", wrong_type),
        payload("langchain_core.messages.tool", "ToolMessage", tuple_content),
    ]


@pytest.mark.parametrize("stored", older_payloads(), ids=range(len(older_payloads())))
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # invalid args, as stored
def test_older_payloads_take_the_stock_path(stored: tuple[str, bytes]) -> None:
    expected = JsonPlusSerializer().loads_typed(stored)
    assert state(WardenSerializer().loads_typed(stored)) == state(expected)


def test_allowlist_clone_keeps_the_fast_path_and_the_allowlist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LangGraph's strict mode narrows the serializer with `with_msgpack_allowlist`."""
    strict = WardenSerializer(allowed_msgpack_modules=None)
    clone = strict.with_msgpack_allowlist([("tests.unit.test_serde", "Allowed")])
    assert isinstance(clone, WardenSerializer) and clone is not strict
    written = well_formed()
    stored = JsonPlusSerializer().dumps_typed([Allowed(x=1), Blocked(y=2), *written])
    validated = count_validations(monkeypatch)
    allowed, blocked, *messages = clone.loads_typed(stored)
    assert allowed == Allowed(x=1)
    assert blocked == {"y": 2}  # not on the allowlist: the raw fields, as stock
    assert len(messages) == len(written) and validated == []


class Allowed(BaseModel):
    x: int


class Blocked(BaseModel):
    y: int


def test_warden_saver_uses_it() -> None:
    assert isinstance(WardenSaver.serde, WardenSerializer)
