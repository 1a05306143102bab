"""Per-thread locks in Postgres: one process at a time runs a given thread.

Two processes resuming the same approval would otherwise both execute the approved
call (LangGraph forks the thread; each fork gets new task ids). A session-level
advisory lock, held on its own pooled connection for as long as the run goes on,
makes the second process fail fast with `ThreadBusy` instead. Postgres releases the
lock when the holding session ends, so a process killed with SIGKILL never leaves a
thread locked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from psycopg import AsyncConnection, OperationalError
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from graph.errors import ThreadBusy

LOCK_SQL = "SELECT pg_try_advisory_lock(hashtextextended('warden-thread:' || %s, 0)) AS ok"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtextextended('warden-thread:' || %s, 0))"


@asynccontextmanager
async def thread_lock(
    pool: AsyncConnectionPool[AsyncConnection[DictRow]], thread_id: str
) -> AsyncIterator[None]:
    """Hold the thread's lock for the duration, or raise ThreadBusy at once."""
    async with pool.connection() as conn:
        row = await (await conn.execute(LOCK_SQL, (thread_id,))).fetchone()
        if not row or not row["ok"]:
            raise ThreadBusy(
                f"thread {thread_id} is busy: another process is running it; "
                f"retry when it stops, or `warden cancel {thread_id}`"
            )
        try:
            yield
        finally:
            # A lost session (database restarted, backend terminated) took its lock
            # with it; failing to unlock must not turn a finished run into an error.
            with suppress(OperationalError):
                await conn.execute(UNLOCK_SQL, (thread_id,))


async def thread_is_busy(
    pool: AsyncConnectionPool[AsyncConnection[DictRow]], thread_id: str
) -> bool:
    """Tell whether some process holds the thread's lock right now."""
    try:
        async with thread_lock(pool, thread_id):
            return False
    except ThreadBusy:
        return True
