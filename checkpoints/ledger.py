"""The idempotency ledger: at most one execution of each side-effecting tool call.

One row per tool call, keyed `thread_id:turn_id:tool_call_id`, where the turn id is
the id of the model message that made the call. All three survive a crash and a
resume (LangGraph's task ids do not, and concurrent resumes fork a thread with new
ones); the turn id keeps keys apart when a later run on the same thread gets tool
call ids it has seen before (scripted and some local models number them per run). `act` claims the row before the tool runs and records the outcome after, in
the same database as the checkpoints:

- claim won: run the tool;
- `succeeded` / `failed`: the call already ran; replay its stored result;
- `started` with no outcome: the process died mid-call, or another process is running
  it right now. The call is *in doubt*; `nodes.exactly_once` decides what to do.

Every write is a single atomic statement, so two processes racing on one call
(without the per-thread lock, e.g. two embedded graph invocations) cannot both win:
the claim is `INSERT ... ON CONFLICT DO NOTHING RETURNING`, and taking over an in-doubt
call is an `UPDATE ... WHERE attempts = N` compare-and-set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from checkpoints.db import Pool

LedgerStatus = Literal["started", "succeeded", "failed"]
COLUMNS = "key, tool, args_hash, status, result, error, attempts, started_at, finished_at"


@dataclass(frozen=True)
class LedgerEntry:
    """One tool call as the ledger knows it."""

    key: str
    tool: str
    args_hash: str
    status: LedgerStatus
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    started_at: datetime
    finished_at: datetime | None


def ledger_key(thread_id: str, turn_id: str, tool_call_id: str) -> str:
    """Return the idempotency key of one tool call of one model turn in one thread."""
    return f"{thread_id}:{turn_id}:{tool_call_id}"


def _entry(row: DictRow) -> LedgerEntry:
    return LedgerEntry(**{k: row[k] for k in COLUMNS.split(", ")})


async def claim(
    pool: Pool, *, thread_id: str, turn_id: str, tool_call_id: str, tool: str, args_hash: str
) -> tuple[bool, LedgerEntry]:
    """Claim a call before running it: (True, new entry), or (False, the existing entry)."""
    key = ledger_key(thread_id, turn_id, tool_call_id)
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                f"""
                INSERT INTO warden_ledger (key, thread_id, tool_call_id, tool, args_hash, status)
                VALUES (%s, %s, %s, %s, %s, 'started')
                ON CONFLICT (key) DO NOTHING
                RETURNING {COLUMNS}
                """,
                (key, thread_id, tool_call_id, tool, args_hash),
            )
        ).fetchone()
        if row is not None:
            return True, _entry(row)
        existing = await (
            await conn.execute(f"SELECT {COLUMNS} FROM warden_ledger WHERE key = %s", (key,))
        ).fetchone()
    if existing is None:  # deleted between the two statements (prune): claim again
        return await claim(
            pool, thread_id=thread_id, turn_id=turn_id, tool_call_id=tool_call_id, tool=tool,
            args_hash=args_hash,
        )
    return False, _entry(existing)


async def take_over(pool: Pool, entry: LedgerEntry) -> LedgerEntry | None:
    """Claim an in-doubt call for another attempt; None if someone else changed it first."""
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                f"""
                UPDATE warden_ledger
                SET attempts = attempts + 1, started_at = now(), finished_at = NULL,
                    result = NULL, error = NULL
                WHERE key = %s AND status = 'started' AND attempts = %s
                RETURNING {COLUMNS}
                """,
                (entry.key, entry.attempts),
            )
        ).fetchone()
    return _entry(row) if row is not None else None


async def record_outcome(
    pool: Pool,
    entry: LedgerEntry,
    *,
    status: Literal["succeeded", "failed"],
    result: dict[str, Any],
    error: str | None = None,
) -> bool:
    """Record how the claimed attempt ended; False if the claim was lost meanwhile."""
    # The outcome's commit need not wait for its WAL flush (the claim's did, before the
    # side effect). The next synchronous commit (the act step's checkpoint) flushes this
    # WAL too; only a database crash before one loses the outcome, and then that
    # checkpoint as well: on resume the call is in doubt (reconciled, run again if
    # idempotent, or put to a human), never run twice. This saves an fsync per call.
    async with pool.connection() as conn, conn.pipeline():  # one round trip
        await conn.execute("SELECT set_config('synchronous_commit', 'off', true)")
        cur = await conn.execute(
            """
            UPDATE warden_ledger
            SET status = %s, result = %s, error = %s, finished_at = now()
            WHERE key = %s AND attempts = %s AND status = 'started'
            """,
            (status, json.dumps(result), error, entry.key, entry.attempts),
        )
    return cur.rowcount == 1


async def ledger_entries(pool: Pool, thread_id: str) -> list[LedgerEntry]:
    """Return a thread's ledger, oldest call first."""
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                f"SELECT {COLUMNS} FROM warden_ledger WHERE thread_id = %s ORDER BY started_at",
                (thread_id,),
            )
        ).fetchall()
    return [_entry(r) for r in rows]


async def purge_ledger(conn: AsyncConnection[Any], thread_ids: Sequence[str]) -> int:
    """Delete the ledger rows of these threads (for `warden prune`); return how many."""
    cur = await conn.execute(
        "DELETE FROM warden_ledger WHERE thread_id = ANY(%s)", (list(thread_ids),)
    )
    return cur.rowcount
