"""The idempotency key of the tool call being run, for tools that can pass it on.

`act` runs every call under a stable key, `thread_id:turn_id:tool_call_id` (see
`checkpoints.ledger`): it survives a crash and a resume, unlike LangGraph's task ids. A tool that talks to a
system able to drop duplicates reads it here and forwards it (SMTP `Message-ID`, an
HTTP `Idempotency-Key` header, a unique column on a SQL write), so even a call that
Warden must repeat takes effect once. A ContextVar rather than an argument: the
model-facing schemas stay unchanged, and `asyncio.to_thread` and tasks copy it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_KEY: ContextVar[str | None] = ContextVar("warden_idempotency_key", default=None)


def current_idempotency_key() -> str | None:
    """Return the key of the tool call running now, or None outside a ledgered call."""
    return _KEY.get()


@contextmanager
def idempotency_key(key: str | None) -> Iterator[None]:
    """Make `key` the current idempotency key for the duration."""
    token = _KEY.set(key)
    try:
        yield
    finally:
        _KEY.reset(token)
