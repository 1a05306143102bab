"""Cancel requests in Postgres: how an operator stops a run that another process runs.

`warden cancel` cannot reach into the process running a thread, but that process
asks the database at every node boundary (`nodes.cancellable`). A request stays
pending until the run's `halt` node consumes it: it names the thread, not a run, and
is stored only while some process holds the thread's lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from checkpoints.db import Pool


class CancelRequest(TypedDict):
    """A pending request to stop a thread's run."""

    requested_by: str
    reason: str


async def request_cancel(pool: Pool, thread_id: str, *, requested_by: str, reason: str) -> None:
    """Store (or refresh) the request to cancel the thread's running run."""
    async with pool.connection() as conn:
        await conn.execute(
            """
            INSERT INTO warden_cancel_requests (thread_id, requested_by, reason)
            VALUES (%s, %s, %s)
            ON CONFLICT (thread_id) DO UPDATE
            SET requested_at = now(), requested_by = EXCLUDED.requested_by,
                reason = EXCLUDED.reason
            """,
            (thread_id, requested_by, reason),
        )


async def _one_request(pool: Pool, sql: str, thread_id: str) -> CancelRequest | None:
    """Run a statement returning at most one request row for the thread."""
    async with pool.connection() as conn:
        row = await (await conn.execute(sql, (thread_id,))).fetchone()
    return (
        None
        if row is None
        else CancelRequest(requested_by=row["requested_by"], reason=row["reason"])
    )


async def pending_cancel(pool: Pool, thread_id: str) -> CancelRequest | None:
    """Return the thread's pending cancel request, if any (one indexed lookup)."""
    return await _one_request(
        pool,
        "SELECT requested_by, reason FROM warden_cancel_requests WHERE thread_id = %s",
        thread_id,
    )


async def consume_cancel(pool: Pool, thread_id: str) -> CancelRequest | None:
    """Delete the thread's pending request and return it: the run has honoured it."""
    return await _one_request(
        pool,
        "DELETE FROM warden_cancel_requests WHERE thread_id = %s RETURNING requested_by, reason",
        thread_id,
    )


async def purge_cancel_requests(conn: AsyncConnection[DictRow], thread_ids: Sequence[str]) -> int:
    """Delete the cancel requests of pruned threads (a retention hook)."""
    cur = await conn.execute(
        "DELETE FROM warden_cancel_requests WHERE thread_id = ANY(%s)", (list(thread_ids),)
    )
    return cur.rowcount
