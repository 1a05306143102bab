"""Capture what a chat model is given: a LangChain callback handler (`on_chat_model_start`)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage


class PromptRecorder(BaseCallbackHandler):
    """Keep every prompt a chat model is started with, and the call's metadata."""

    run_inline = True

    def __init__(self) -> None:
        self.prompts: list[list[BaseMessage]] = []
        self.metadata: list[dict[str, Any]] = []

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.prompts.append(list(messages[0]))
        self.metadata.append(dict(kwargs.get("metadata") or {}))
