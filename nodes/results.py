"""Tool result messages as `act` writes them, whether a call ran, replayed or was refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import ToolMessage


def tool_message(
    call: Mapping[str, Any], content: str, *, status: str = "success", **meta: Any
) -> ToolMessage:
    """Build the result message for one call (a tool call or a pending one: its `id` and
    `name` are used), with Warden's metadata beside it."""
    return ToolMessage(
        content=content,
        tool_call_id=call["id"],
        name=call["name"],
        status=status,  # type: ignore[arg-type]
        response_metadata={"warden": meta},
    )
