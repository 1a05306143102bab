"""Find Warden's database from inside a running graph.

Nodes and tools that need Postgres (the idempotency ledger, the audit log, spend
reservations, cancel requests, memory) must use the same database as the run's
checkpoints, whichever way the graph was started: the CLI, an embedding app, or the
LangGraph server with `langgraph.json`'s `checkpointer.path`. All three run the graph
with Warden's saver, whose `conn` is the shared `psycopg_pool` pool, and LangGraph
puts the saver in every task's config. So the pool is read from there rather than
passed through every node factory.

Outside a graph run, or with a checkpointer that is not over a pool (tests with
`InMemorySaver`, the no-checkpointer benchmark), `current_pool()` returns None and
callers fall back to in-process behaviour.
"""

from __future__ import annotations

import select
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph._internal._constants import CONFIG_KEY_CHECKPOINTER
from langgraph.config import get_config
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]


def pool_of(config: RunnableConfig | None) -> Pool | None:
    """Return the connection pool behind the checkpointer in `config`, if any."""
    if not config:
        return None
    saver: Any = (config.get("configurable") or {}).get(CONFIG_KEY_CHECKPOINTER)
    pool = getattr(saver, "conn", None)
    return pool if isinstance(pool, AsyncConnectionPool) else None


def current_pool() -> Pool | None:
    """Return the running graph's connection pool, or None outside a Postgres-backed run."""
    try:
        config = get_config()
    except RuntimeError:
        return None
    return pool_of(config)


def has_unread_input(conn: AsyncConnection[Any]) -> bool:
    """Tell, without a round trip, whether the server sent something not read yet.

    An idle session has nothing to say; input there is a FATAL notice or end-of-file
    (the session ended) or a notification. `poll`, unlike `select`, takes any fd number.
    """
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))
