"""What `warden prune` deletes besides checkpoints: one purge hook per Warden table.

Each hook deletes a set of threads' rows from one table, inside the prune's
transaction, and returns how many rows went. Tables added later (the idempotency
ledger, the audit log) register their hook here. A hook marked `opt_in` runs only when
the operator asks for it (`warden prune --audit`): the audit trail is kept by default.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from checkpoints.audit_store import purge_audit
from checkpoints.cancels import purge_cancel_requests
from checkpoints.ledger import purge_ledger
from checkpoints.spend import purge_reservations

Purge = Callable[[AsyncConnection[DictRow], Sequence[str]], Awaitable[int]]


@dataclass(frozen=True)
class RetentionHook:
    """A named purge of one table's rows for the threads being pruned."""

    name: str
    purge: Purge
    opt_in: bool = False


RETENTION_HOOKS: list[RetentionHook] = [
    RetentionHook("cancel_requests", purge_cancel_requests),
    RetentionHook("spend_reservations", purge_reservations),
    RetentionHook("ledger", purge_ledger),
    # The audit trail outlives its threads unless the operator asks (`prune --audit`);
    # what goes is recorded in warden_audit_retention.
    RetentionHook("audit", purge_audit, opt_in=True),
]


async def purge_threads(
    conn: AsyncConnection[DictRow],
    thread_ids: Sequence[str],
    *,
    hooks: Sequence[RetentionHook],
    opt_in: bool,
) -> dict[str, int]:
    """Run the hooks for `thread_ids` in one transaction; return rows deleted per hook.

    The transaction sets `warden.retention = 'on'`, which append-only tables (the audit
    log) check before they let a row be deleted.
    """
    counts: dict[str, int] = {}
    async with conn.transaction():
        await conn.execute("SET LOCAL warden.retention = 'on'")
        for hook in hooks:
            if hook.opt_in and not opt_in:
                continue
            counts[hook.name] = await hook.purge(conn, thread_ids)
        cur = await conn.execute(
            "DELETE FROM warden_threads WHERE thread_id = ANY(%s)", (list(thread_ids),)
        )
        counts["threads"] = cur.rowcount
    return counts
