"""Resolve a model string into a chat model: `scripted:PATH` or any `init_chat_model` string."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from langchain_core.language_models import BaseChatModel

from graph.errors import ConfigError
from graph.scripted import ScriptedChatModel

SCRIPTED_PREFIX = "scripted:"


def make_model_factory(
    *, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0
):  # type: ignore[no-untyped-def]
    """Return a cached resolver from model strings (and a retry count) to chat models.

    `base_url` points langchain-openai at an OpenAI-compatible server (vLLM, llama.cpp,
    Ollama); such servers often need no key, so a placeholder is sent when none is set.
    `timeout` bounds each HTTP request to the provider.

    `retries` (a run's `Context.model_retries`) goes to the provider SDK's own retry
    loop (`max_retries`): the openai SDK retries 429, 408, 409, 5xx, connection errors
    and timeouts with exponential backoff and jitter, and honours `Retry-After` /
    `retry-after-ms`. The SDK client is built with the model, so the retry count is part
    of the cache key: runs asking for different counts get different (cached) models.
    None leaves the provider's default.
    """

    @lru_cache(maxsize=32)
    def resolve(spec: str, retries: int | None = None) -> BaseChatModel:
        if spec.startswith(SCRIPTED_PREFIX):
            return ScriptedChatModel.from_file(spec.removeprefix(SCRIPTED_PREFIX))
        from langchain.chat_models import init_chat_model

        kwargs: dict[str, Any] = {"timeout": timeout}
        if retries is not None:
            kwargs["max_retries"] = retries
        provider = spec.split(":", 1)[0] if ":" in spec else None
        if provider in (None, "openai"):
            if base_url:
                kwargs["base_url"] = base_url
            if api_key or base_url:
                kwargs["api_key"] = api_key or "not-needed"
        try:
            return init_chat_model(spec, **kwargs)
        except ImportError as exc:
            raise ConfigError(f"model {spec!r} needs a provider package that is not installed: {exc}") from None
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"unknown or unusable model {spec!r}: {first}") from None

    return resolve
