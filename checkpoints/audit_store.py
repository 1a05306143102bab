"""The audit log in Postgres: append events to a thread's chain, read, purge, list heads.

Appending is one transaction per batch, and each batch links to the head the previous
one left: usually one round trip that inserts only if the head this process last left
is still the head (UNIQUE (thread_id, seq) settles races), else a transaction that
takes an advisory lock on the thread first, so concurrent writers of one thread (two
workers, a retry racing the original) queue behind each other. The table's trigger
refuses UPDATE, DELETE and TRUNCATE; `purge_audit` is the one sanctioned delete (the
retention job), and it records what it removed. A purged thread's chain continues
from the head it recorded, so later events still link up.
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, errors
from psycopg.rows import DictRow

from checkpoints.audit_chain import GENESIS_BASE, Base, event_hash, prepare_payload
from checkpoints.db import Pool

COLUMNS = "id, thread_id, run_id, seq, at, node, kind, payload, prev_hash, hash"


async def _base(conn: AsyncConnection[DictRow], thread_id: str) -> Base:
    """Return where the thread's stored chain starts (genesis, or its latest purge)."""
    row = await (
        await conn.execute(
            "SELECT head_seq, head_hash FROM warden_audit_retention WHERE thread_id = %s "
            "ORDER BY id DESC LIMIT 1",
            (thread_id,),
        )
    ).fetchone()
    return Base(int(row["head_seq"]), row["head_hash"]) if row else GENESIS_BASE


async def chain_base(pool: Pool, thread_id: str) -> Base:
    """Return where the thread's stored chain starts."""
    async with pool.connection() as conn:
        return await _base(conn, thread_id)


HEAD_SQL = """
SELECT seq, hash FROM (
    (SELECT seq, hash, 1 AS rank FROM warden_audit
     WHERE thread_id = %(t)s ORDER BY seq DESC LIMIT 1)
    UNION ALL
    (SELECT head_seq, head_hash, 2 FROM warden_audit_retention
     WHERE thread_id = %(t)s ORDER BY id DESC LIMIT 1)
) AS heads ORDER BY rank LIMIT 1
"""
"""The thread's latest event, or the head its latest purge recorded (one round trip)."""

# The batch's commit need not wait for its own WAL flush. Every audit batch is
# followed by the checkpoint write of the same step, which commits synchronously and so
# flushes this earlier WAL too; if the server dies before that, the step's checkpoint is
# lost as well and the node runs again, re-recording its events. This halves the
# fsyncs a step costs (measured: ~6.6 ms vs ~2 ms per commit on a loaded machine).
RELAX_SQL = "SELECT set_config('synchronous_commit', 'off', true)"
# The locked path's lock; its insert (APPEND_IF_HEAD_SQL) relaxes the commit itself.
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('warden-audit:' || %s, 0))"

# Insert a batch only if the thread's head is still the one its hashes were computed
# from (genesis: no event and no purge yet). Together with UNIQUE (thread_id, seq) this
# keeps one linear chain without a lock: a writer that raced ahead either committed
# first (the head moved: no row is inserted) or is in flight (its seq is taken: this
# insert waits for it, then fails with a unique violation).
APPEND_IF_HEAD_SQL = f"""
INSERT INTO warden_audit (thread_id, run_id, seq, at, node, kind, payload, prev_hash, hash)
SELECT %(t)s, %(run)s, e.seq, %(at)s, %(node)s, e.kind, e.payload::jsonb, e.prev_hash, e.hash
FROM unnest(%(seqs)b::bigint[], %(kinds)b::text[], %(payloads)b::text[],
            %(prevs)b::text[], %(hashes)b::text[]) AS e(seq, kind, payload, prev_hash, hash)
-- RELAX_SQL inside the statement: the setting only matters when the transaction
-- commits, and one statement outside a pipeline is half the client work of two in one.
CROSS JOIN ({RELAX_SQL}) AS relax
WHERE coalesce(
    (SELECT h.seq = %(head_seq)s AND h.hash = %(head_hash)s FROM ({HEAD_SQL}) AS h),
    %(head_seq)s = 0)
"""

HEAD_CACHE_SIZE = 10_000
"""Threads per pool whose chain head this process remembers."""

# The head each thread's last append in this process left, per pool (a pool is one
# database). It is only a guess that saves reading the head: APPEND_IF_HEAD_SQL checks
# it against the table, so a stale entry (another process appended, a purge, a
# restored database) costs a retry, never a broken chain. Keyed weakly by pool so it
# goes with the pool; module-level because `append_events` is called from inside graph
# nodes, which reach the pool but have no other per-process object to hang this on.
_heads: weakref.WeakKeyDictionary[Pool, OrderedDict[str, Base]] = weakref.WeakKeyDictionary()


def _cached_head(pool: Pool, thread_id: str) -> Base | None:
    heads = _heads.get(pool)
    return None if heads is None else heads.get(thread_id)


def _remember_head(pool: Pool, thread_id: str, head: Base | None) -> None:
    heads = _heads.setdefault(pool, OrderedDict())
    if head is None:
        heads.pop(thread_id, None)
        return
    heads[thread_id] = head
    heads.move_to_end(thread_id)
    while len(heads) > HEAD_CACHE_SIZE:
        heads.popitem(last=False)


async def _head(conn: AsyncConnection[DictRow], thread_id: str) -> Base:
    row = await (await conn.execute(HEAD_SQL, {"t": thread_id})).fetchone()
    return Base(int(row["seq"]), row["hash"]) if row else GENESIS_BASE


def _chain(
    head: Base, thread_id: str, run_id: str, node: str, at: datetime,
    events: Sequence[tuple[str, Mapping[str, Any]]],
) -> tuple[dict[str, Any], Base]:
    """Hash the events onto `head`; return APPEND_IF_HEAD_SQL's parameters and the new head."""
    seq, prev = head.seq, head.hash
    columns: dict[str, list[Any]] = {"seqs": [], "kinds": [], "payloads": [], "prevs": [], "hashes": []}
    for kind, payload in events:
        seq += 1
        event = {
            "thread_id": thread_id,
            "run_id": run_id,
            "seq": seq,
            "at": at,
            "node": node,
            "kind": kind,
            "payload": prepare_payload(payload),
            "prev_hash": prev,
        }
        columns["prevs"].append(prev)
        prev = event_hash(event)
        columns["seqs"].append(seq)
        columns["kinds"].append(kind)
        columns["payloads"].append(json.dumps(event["payload"]))
        columns["hashes"].append(prev)
    params = {
        "t": thread_id, "run": run_id, "at": at, "node": node,
        "head_seq": head.seq, "head_hash": head.hash, **columns,
    }
    return params, Base(seq, prev)


async def _append_fast(conn: AsyncConnection[DictRow], params: dict[str, Any]) -> bool:
    """Append onto an expected head in one round trip (one implicit transaction);
    False if the head moved or a racing writer took the seq."""
    try:
        cur = await conn.execute(APPEND_IF_HEAD_SQL, params)
    except errors.UniqueViolation:
        return False
    return cur.rowcount == len(params["seqs"])


MAX_APPEND_ATTEMPTS = 10
"""Locked appends that may lose to a lock-free one before `append_events` gives up."""


async def append_events(
    pool: Pool,
    *,
    thread_id: str,
    run_id: str,
    node: str,
    events: Sequence[tuple[str, Mapping[str, Any]]],
) -> int:
    """Append `(kind, payload)` events to the thread's chain atomically; return the last seq.

    The common case is one round trip: the events are hashed onto the head that this
    process's last append to the thread left, and inserted if that is still the head.
    Otherwise (the first append from this process, or another writer moved the head),
    the append takes the thread's advisory lock, reads the head and inserts, so that
    writers that keep missing queue behind each other instead of racing.
    """
    at = datetime.now(UTC)
    async with pool.connection() as conn:
        head = _cached_head(pool, thread_id)
        if head is not None and events:
            params, new_head = _chain(head, thread_id, run_id, node, at, events)
            if await _append_fast(conn, params):
                _remember_head(pool, thread_id, new_head)
                return new_head.seq
        for _ in range(MAX_APPEND_ATTEMPTS):
            inserted = None
            try:
                # Two round trips: BEGIN, lock and head read; then the insert and COMMIT.
                async with conn.pipeline(), conn.transaction():
                    await conn.execute(LOCK_SQL, (thread_id,))
                    head = await _head(conn, thread_id)
                    params, new_head = _chain(head, thread_id, run_id, node, at, events)
                    if events:
                        inserted = await conn.execute(APPEND_IF_HEAD_SQL, params)
            except errors.UniqueViolation:
                continue  # a lock-free append got in first
            if inserted is not None and inserted.rowcount != len(events):
                continue  # the head moved (nothing was inserted)
            _remember_head(pool, thread_id, new_head)
            return new_head.seq
    _remember_head(pool, thread_id, None)
    raise RuntimeError(
        f"audit append to thread {thread_id} lost the chain head {MAX_APPEND_ATTEMPTS} times"
    )


async def read_events(pool: Pool, thread_id: str | None = None) -> list[dict[str, Any]]:
    """Return a thread's events (or every thread's, when None) in chain order."""
    where, params = ("WHERE thread_id = %s", (thread_id,)) if thread_id is not None else ("", ())
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {COLUMNS} FROM warden_audit {where} ORDER BY thread_id, seq, id", params
        )
        return list(await cur.fetchall())


async def chain_heads(pool: Pool) -> list[dict[str, Any]]:
    """Return every thread's latest event (thread_id, seq, hash, at), by thread id."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT DISTINCT ON (thread_id) thread_id, seq, hash, at FROM warden_audit "
            "ORDER BY thread_id, seq DESC"
        )
        return list(await cur.fetchall())


async def retention_records(pool: Pool, thread_id: str) -> list[dict[str, Any]]:
    """Return what retention purges removed from a thread, oldest first."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT thread_id, events, head_seq, head_hash, removed_at, by "
            "FROM warden_audit_retention WHERE thread_id = %s ORDER BY id",
            (thread_id,),
        )
        return list(await cur.fetchall())


async def purge_audit(
    conn: AsyncConnection[DictRow], thread_ids: Iterable[str], *, by: str = "warden prune"
) -> int:
    """Delete the threads' audit events as the retention job; record each purge; return the count.

    Runs in one transaction (a savepoint inside the caller's) that sets
    `warden.retention` for itself only, which is what the append-only trigger lets
    through. Each purged thread gets a `warden_audit_retention` row with the number of
    events removed and the head (seq, hash) they ended at, so `warden audit verify`
    and later appends continue from it.
    """
    removed = 0
    async with conn.transaction():
        await conn.execute("SET LOCAL warden.retention = 'on'")
        for thread_id in dict.fromkeys(thread_ids):
            await conn.execute(LOCK_SQL, (thread_id,))
            head = await (
                await conn.execute(
                    "SELECT count(*) AS n, max(seq) AS seq, "
                    "(array_agg(hash ORDER BY seq DESC))[1] AS hash "
                    "FROM warden_audit WHERE thread_id = %s",
                    (thread_id,),
                )
            ).fetchone()
            if head is None or not head["n"]:
                continue
            await conn.execute("DELETE FROM warden_audit WHERE thread_id = %s", (thread_id,))
            await conn.execute(
                "INSERT INTO warden_audit_retention (thread_id, events, head_seq, head_hash, by) "
                "VALUES (%s, %s, %s, %s, %s)",
                (thread_id, head["n"], head["seq"], head["hash"], by),
            )
            removed += int(head["n"])
        await conn.execute("SET LOCAL warden.retention = 'off'")
    return removed
