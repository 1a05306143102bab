"""Warden's checkpoint serializer: LangGraph's, with a fast way back to messages.

Loading a long thread deserialises every message of its history (about 1000 on a
500-call thread). `JsonPlusSerializer` stores a message as its `model_dump()` and
revives it with `cls(**fields)`: full pydantic validation plus LangChain's `before`
validators (`AIMessage._backwards_compat_tool_calls` rebuilds every tool call,
`ToolMessage.coerce_args` copies the content), 6-16 us a message, most of a
load's CPU time once the rows are read.

A message that Warden or LangChain wrote from a valid object needs none of that: its
fields are what validation would produce. `WardenSerializer` recognises exactly
that case and builds the object from those fields directly (about 1-2 us). Anything
else takes the stock path unchanged:

- only the plain message classes (`MESSAGE_CLASSES`: no chunks, no subclasses);
- only when the stored fields are exactly the class's fields (an older LangChain's
  message, or one with extra attributes, differs) and each has the shape validation
  leaves: `type` its literal, content a string or a list of strings and dicts, tool
  calls exactly `{name, args, id, type}` (what `_backwards_compat_tool_calls` makes
  of them), and so on (`_fast_fields`).

Security is unchanged: these classes are in LangGraph's always-allowed
`SAFE_MSGPACK_TYPES`, so the stock hook would build them under any allowlist, and
every other type (nested values included) goes through the stock hook, built by
`JsonPlusSerializer` from its allowlist as before (`with_msgpack_allowlist` too).
Tests check that both paths give equal objects, state and field order included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import ormsgpack
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.checkpoint.serde._msgpack import SAFE_MSGPACK_TYPES
from langgraph.checkpoint.serde.jsonplus import (
    EXT_DELTA_SNAPSHOT,
    EXT_PYDANTIC_V2,
    JsonPlusSerializer,
)
from langgraph.checkpoint.serde.types import _DeltaSnapshot

MESSAGE_CLASSES: tuple[type[BaseMessage], ...] = (AIMessage, HumanMessage, SystemMessage, ToolMessage)
TOOL_CALL_KEYS = frozenset({"name", "args", "id", "type"})
INVALID_TOOL_CALL_KEYS = frozenset({"name", "args", "id", "error", "type"})
USAGE_COUNTS = ("input_tokens", "output_tokens", "total_tokens")
_UNPACK_OPTIONS = ormsgpack.OPT_NON_STR_KEYS


def _ext_prefix(cls: type[BaseMessage]) -> bytes:
    """The bytes an EXT_PYDANTIC_V2 payload of `cls` starts with.

    `_msgpack_default` packs `(module, name, fields, method)`: a 4-array whose first
    two items are short strings. Matching the prefix tells the class before anything
    is unpacked, so a payload of any other class is handed to the stock hook intact
    (decoded once, not twice).
    """
    key = (cls.__module__, cls.__name__)
    assert key in SAFE_MSGPACK_TYPES, key
    return ormsgpack.packb((*key, None, None))[:-2]


_PREFIXES: dict[bytes, type[BaseMessage]] = {_ext_prefix(c): c for c in MESSAGE_CLASSES}
_FIELDS: dict[type[BaseMessage], frozenset[str]] = {
    c: frozenset(c.model_fields) for c in MESSAGE_CLASSES
}
_TYPES: dict[type[BaseMessage], str] = {c: c.model_fields["type"].default for c in MESSAGE_CLASSES}


# The checks below test exact builtin types (`type(x) is str`): the values come from
# ormsgpack, which builds plain str, int, list and dict, never subclasses.
_OPTIONAL_STR = (str, type(None))


def _calls_ok(calls: Any, keys: frozenset[str], kind: str, args_types: tuple[type, ...]) -> bool:
    if type(calls) is not list:
        return False
    for call in calls:
        if not (
            type(call) is dict
            and call.keys() == keys
            and call["type"] == kind
            and type(call["name"]) in _OPTIONAL_STR
            and type(call["id"]) in _OPTIONAL_STR
            and type(call["args"]) in args_types
        ):
            return False
    return True


def _usage_ok(usage: Any) -> bool:
    """Token counts as validation leaves them: ints (a float would become one)."""
    if usage is None:
        return True
    if type(usage) is not dict:
        return False
    for key in USAGE_COUNTS:
        if type(usage.get(key)) is not int:
            return False
    for value in usage.values():
        if type(value) is dict:  # input/output token details
            for count in value.values():
                if type(count) is not int:
                    return False
        elif type(value) is not int:
            return False
    return True


def _fast_fields(cls: type[BaseMessage], fields: Any) -> bool:
    """Tell whether `fields` are exactly what validating them would leave."""
    if not (type(fields) is dict and fields.keys() == _FIELDS[cls]):
        return False
    content = fields["content"]
    if type(content) is not str:
        if type(content) is not list:
            return False
        for block in content:
            if type(block) is not str and type(block) is not dict:
                return False
    if not (
        fields["type"] == _TYPES[cls]
        and type(fields["additional_kwargs"]) is dict
        and type(fields["response_metadata"]) is dict
        and type(fields["name"]) in _OPTIONAL_STR
        and type(fields["id"]) in _OPTIONAL_STR
    ):
        return False
    if cls is AIMessage:
        return (
            _calls_ok(fields["tool_calls"], TOOL_CALL_KEYS, "tool_call", (dict,))
            and _calls_ok(
                fields["invalid_tool_calls"], INVALID_TOOL_CALL_KEYS, "invalid_tool_call", _OPTIONAL_STR
            )
            and _usage_ok(fields["usage_metadata"])
        )
    if cls is ToolMessage:
        return type(fields["tool_call_id"]) is str and fields["status"] in ("success", "error")
    return True


def _build(cls: type[BaseMessage], fields: dict[str, Any]) -> BaseMessage:
    """Build a message from fields that need no validation.

    The object state `cls(**fields)` leaves: the fields (in field order, as
    `model_dump` wrote them), all of them set, no extras, no private attributes.
    Written out because pydantic's own `model_construct` walks every field's
    definition in Python and is no faster than validating (measured).
    """
    message = cls.__new__(cls)
    object.__setattr__(message, "__dict__", fields)
    object.__setattr__(message, "__pydantic_fields_set__", set(fields))
    object.__setattr__(message, "__pydantic_extra__", {})
    object.__setattr__(message, "__pydantic_private__", None)
    return message


def fast_message_hook(stock: Callable[[int, bytes], Any]) -> Callable[[int, bytes], Any]:
    """Wrap a JsonPlusSerializer ext hook with the fast path for messages."""

    def hook(code: int, data: bytes) -> Any:
        if code == EXT_PYDANTIC_V2:
            for prefix, cls in _PREFIXES.items():
                if data.startswith(prefix):
                    tup = ormsgpack.unpackb(data, ext_hook=hook, option=_UNPACK_OPTIONS)
                    if _fast_fields(cls, tup[2]):
                        return _build(cls, tup[2])
                    break  # unusual: the stock hook decodes it again, its own way
        elif code == EXT_DELTA_SNAPSHOT:
            # As the stock hook, with this hook for what the snapshot holds.
            return _DeltaSnapshot(ormsgpack.unpackb(data, ext_hook=hook, option=_UNPACK_OPTIONS))
        return stock(code, data)

    return hook


class WardenSerializer(JsonPlusSerializer):
    """JsonPlusSerializer that revives well-formed LangChain messages without validation."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._unpack_ext_hook = fast_message_hook(self._unpack_ext_hook)

    def with_msgpack_allowlist(self, extra_allowlist: Iterable[tuple[str, ...] | type]) -> JsonPlusSerializer:
        """As the stock method; the clone's rebuilt hook gets the fast path again."""
        clone = super().with_msgpack_allowlist(extra_allowlist)
        if clone is not self and not clone._custom_unpack_ext_hook:
            clone._unpack_ext_hook = fast_message_hook(clone._unpack_ext_hook)
        return clone
