"""Copy a thread's history up to one checkpoint into a new thread (time travel).

LangGraph's own time travel forks *within* a thread; Warden's `fork` starts a new
thread so the original stays exactly as it was. AsyncPostgresSaver has no
`acopy_thread`, and copying only the chosen checkpoint is not enough: Warden's
messages use a `DeltaChannel`, whose value is rebuilt by replaying ancestor writes
(see `BaseCheckpointSaver.copy_thread`). So the whole ancestor chain (checkpoints,
the blobs they reference and the writes between them) is copied, in one transaction,
with the saver's own table layout. The chosen checkpoint's own pending writes are
not: the fork re-runs from that point instead of replaying what the original did
next (an approval point is asked again on `warden resume`).
"""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from checkpoints.warden_saver import ROW_VERSIONS

CHAIN = """
WITH RECURSIVE chain AS (
    SELECT * FROM checkpoints
    WHERE thread_id = %(src)s AND checkpoint_ns = '' AND checkpoint_id = %(at)s
    UNION ALL
    SELECT c.* FROM checkpoints c JOIN chain ON c.checkpoint_id = chain.parent_checkpoint_id
    WHERE c.thread_id = %(src)s AND c.checkpoint_ns = ''
)
"""

COPY_CHECKPOINTS = (
    CHAIN
    + """
INSERT INTO checkpoints
    (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
SELECT %(dst)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata
FROM chain
"""
)

# The versions a row references, in either row form (`ROW_VERSIONS`).
COPY_BLOBS = (
    CHAIN
    + f"""
INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
SELECT DISTINCT %(dst)s, b.checkpoint_ns, b.channel, b.version, b.type, b.blob
FROM checkpoint_blobs b
JOIN chain ON true
JOIN LATERAL {ROW_VERSIONS.format(row="chain.checkpoint")} v
    ON v.channel = b.channel AND v.version = b.version
WHERE b.thread_id = %(src)s AND b.checkpoint_ns = ''
"""
)

COPY_WRITES = (
    CHAIN
    + """
INSERT INTO checkpoint_writes
    (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
SELECT %(dst)s, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.task_path, w.idx, w.channel,
       w.type, w.blob
FROM checkpoint_writes w JOIN chain ON w.checkpoint_id = chain.checkpoint_id
WHERE w.thread_id = %(src)s AND w.checkpoint_ns = '' AND w.checkpoint_id <> %(at)s
"""
)


async def copy_thread_until(
    conn: AsyncConnection[DictRow], source: str, target: str, checkpoint_id: str
) -> int:
    """Copy `source`'s checkpoint `checkpoint_id` and its ancestors into `target`.

    Returns how many checkpoints were copied (0: no such checkpoint; nothing written).
    The caller runs it inside a transaction and makes sure `target` is unused.
    """
    params = {"src": source, "dst": target, "at": checkpoint_id}
    copied = (await conn.execute(COPY_CHECKPOINTS, params)).rowcount
    if copied:
        await conn.execute(COPY_BLOBS, params)
        await conn.execute(COPY_WRITES, params)
    return copied
