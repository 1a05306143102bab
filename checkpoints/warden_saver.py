"""Warden's checkpoint saver: the stock AsyncPostgresSaver, made concurrent and complete.

`langgraph-checkpoint-postgres`'s `AsyncPostgresSaver` does the hard parts well (the
schema, DeltaChannel history in two queries, `prune`), so Warden extends it rather than
replacing it. What it changes:

- No instance lock over a pool. The stock saver holds one `asyncio.Lock` around every
  query (upstream #7259). The lock is there for a single `AsyncConnection`, which one
  coroutine at a time may use; over a `psycopg_pool` pool every query takes its own
  connection, so the lock only serialises concurrent runs. Over a plain connection the
  stock behaviour (lock included) is kept.
- A write is one statement, so one round trip and all-or-nothing: `aput` inserts the
  checkpoint row with its blobs in a data-modifying CTE, `aput_writes` a task's write
  rows from arrays (`PUT_CHECKPOINT_SQL`, `PUT_WRITES_SQL`); a failure leaves nothing
  of the super-step behind (tested). Row-by-row statements in one pipeline, as
  before, were also one round trip, but psycopg's work per statement was the largest
  CPU cost of checkpointing. `adelete_thread` keeps the stock pipeline (one implicit
  transaction).
- Shorter channel versions (`get_next_version`, `compact_version`): every checkpoint
  row lists a version per channel and per node, so 52-character versions were half of
  each row.
- Primitive channel values are stored once per change, as blobs, instead of inline in
  every checkpoint row (`aput`).
- The capabilities the stock saver lacks: `acopy_thread` (every checkpoint, blob and
  write of every namespace, so DeltaChannel history stays complete) and
  `adelete_for_runs` (the runs' checkpoints, their writes, and the blobs nothing else
  references), each one transaction.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from checkpoints.pool import WardenPool, wait_for_connection
from graph.errors import BadInput

COPY_THREAD_SQL = (
    """
    INSERT INTO checkpoints
        (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
    SELECT %(dst)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata
    FROM checkpoints WHERE thread_id = %(src)s
    """,
    """
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT %(dst)s, checkpoint_ns, channel, version, type, blob
    FROM checkpoint_blobs WHERE thread_id = %(src)s
    """,
    """
    INSERT INTO checkpoint_writes
        (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
    SELECT %(dst)s, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
    FROM checkpoint_writes WHERE thread_id = %(src)s
    """,
)

TARGET_EXISTS_SQL = "SELECT EXISTS (SELECT 1 FROM checkpoints WHERE thread_id = %s) AS taken"

# One statement: delete the runs' checkpoints and their writes, and return the blob
# versions those checkpoints pointed at (candidates for garbage). The expression index
# `checkpoints_run_id_idx` (Warden migration) serves the lookup.
DELETE_RUNS_SQL = """
WITH gone AS (
    DELETE FROM checkpoints WHERE metadata ->> 'run_id' = ANY(%(runs)s)
    RETURNING thread_id, checkpoint_ns, checkpoint_id, checkpoint -> 'channel_versions' AS versions
), writes AS (
    DELETE FROM checkpoint_writes w USING gone
    WHERE w.thread_id = gone.thread_id AND w.checkpoint_ns = gone.checkpoint_ns
      AND w.checkpoint_id = gone.checkpoint_id
)
SELECT DISTINCT gone.thread_id, gone.checkpoint_ns, v.key AS channel, v.value AS version
FROM gone CROSS JOIN LATERAL jsonb_each_text(gone.versions) AS v
"""

# Blobs freed by the deletion that no remaining checkpoint of their thread references.
DELETE_UNREFERENCED_BLOBS_SQL = """
DELETE FROM checkpoint_blobs b
USING unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS f(thread_id, ns, channel, version)
WHERE b.thread_id = f.thread_id AND b.checkpoint_ns = f.ns
  AND b.channel = f.channel AND b.version = f.version
  AND NOT EXISTS (
      SELECT 1 FROM checkpoints c
      WHERE c.thread_id = f.thread_id AND c.checkpoint_ns = f.ns
        AND c.checkpoint -> 'channel_versions' ->> f.channel = f.version
  )
"""


# A super-step's rows go in as one statement each (arrays unnested server-side), not one
# statement per row: psycopg's per-statement work in pipeline mode was the largest CPU
# cost of checkpointing many concurrent runs. One statement is atomic without a
# pipeline or transaction. The blobs ride in a data-modifying CTE of the checkpoint
# insert, which Postgres runs whether or not the main query reads it.
PUT_CHECKPOINT_SQL = """
WITH blobs AS (
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT %(thread_id)s, %(ns)s, b.channel, b.version, b.type, b.blob
    FROM unnest(%(channels)s::text[], %(versions)s::text[], %(types)s::text[], %(blobs)s::bytea[])
        AS b(channel, version, type, blob)
    ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING
)
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
VALUES (%(thread_id)s, %(ns)s, %(checkpoint_id)s, %(parent_id)s, %(checkpoint)s, %(metadata)s)
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
"""

PUT_WRITES_SQL = """
INSERT INTO checkpoint_writes
    (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
SELECT %(thread_id)s, %(ns)s, %(checkpoint_id)s, %(task_id)s, %(task_path)s,
       w.idx, w.channel, w.type, w.blob
FROM unnest(%(idx)s::int[], %(channels)s::text[], %(types)s::text[], %(blobs)s::bytea[])
    AS w(idx, channel, type, blob)
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO {action}
"""
# As the stock saver: special writes (errors, interrupts, resumes) replace an earlier
# one at their fixed index; ordinary writes are never overwritten.
UPSERT_WRITES_SQL = PUT_WRITES_SQL.format(
    action="UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob"
)
INSERT_WRITES_SQL = PUT_WRITES_SQL.format(action="NOTHING")

# Version digits in ASCII order, so compact versions compare as strings in counter order.
DIGITS = string.digits + string.ascii_uppercase + string.ascii_lowercase
# A compact version's first letter gives its counter's length: "a" one digit, "b" two, ...
LENGTHS = string.ascii_lowercase
TAG_DIGITS = 5  # 62**5: about 30 random bits, as many as the 8 hex digits before
PRIMITIVES = (type(None), str, int, float, bool)
STORED_APART = frozenset({"id", "updated_channels", "channel_values"})


def _base62(number: int, width: int = 1) -> str:
    digits = ""
    while number or len(digits) < width:
        number, digit = divmod(number, len(DIGITS))
        digits = DIGITS[digit] + digits
    return digits


def compact_version(counter: int) -> str:
    """Return a version: a length letter, the counter in base 62, a random tag.

    E.g. "b1a" + "x7Kq2" for counter 98. Every channel and node of a checkpoint row
    carries a version, so their length is a good part of the row: 8 characters at up
    to 3843 super-steps instead of 19 (`0000000062.15f493aa`). Starting with a letter,
    every compact version compares above the digit-led forms written before (Warden's
    and the stock saver's), so a thread written by either continues in order, and
    stays all strings (LangGraph compares and `max()`es versions; ints would not mix).
    The random tag keeps the versions of two forks of a thread apart in
    `checkpoint_blobs`, whose rows are keyed by version and inserted ON CONFLICT DO
    NOTHING, as the stock random fraction does.
    """
    digits = _base62(counter)
    return LENGTHS[len(digits) - 1] + digits + _base62(secrets.randbelow(62**TAG_DIGITS), TAG_DIGITS)


def is_compact(version: Any) -> bool:
    """Tell whether a version is in the compact form (written by this saver)."""
    return isinstance(version, str) and version[:1] in LENGTHS and version[:1] != ""


def version_counter(version: str | int) -> int:
    """Return the counter of a version in any form: compact, Warden's older
    `NNNNNNNNNN.xxxxxxxx`, the stock `{32 digits}.{16 digits}`, or a plain int."""
    if isinstance(version, int):
        return version
    if is_compact(version):
        length = LENGTHS.index(version[0]) + 1
        counter = 0
        for char in version[1 : 1 + length]:
            counter = counter * len(DIGITS) + DIGITS.index(char)
        return counter
    return int(version.split(".")[0])


class WardenSaver(AsyncPostgresSaver):
    """AsyncPostgresSaver without the instance lock over a pool, with atomic pipelined
    writes, compact versions, `acopy_thread` and `adelete_for_runs`."""

    checkout_timeout: float = WardenPool.busy_timeout
    checkout_slice: float = WardenPool.wait_slice
    """How long a query waits for a busy pool that is not a `WardenPool` (an embedder's
    own), and in what slices (`checkpoints.pool.wait_for_connection`)."""

    def get_next_version(self, current: str | int | None, channel: None) -> str:
        """Return the next version in Warden's compact form (see `compact_version`)."""
        return compact_version(1 if current is None else version_counter(current) + 1)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Save a checkpoint as the stock saver does, except where primitive values go.

        The stock saver copies every `None`/str/int/float/bool value into each
        checkpoint row: on a Warden thread a dozen values (run id, task, nonce, nulls)
        repeated in every row. Here a primitive is stored once, as a blob, when its
        version changes, if that version is compact (written by this saver, which
        stores the blob with it). A value at an older version stays inline: the
        thread was written before, and that value exists only inline in older rows.
        """
        configurable = config["configurable"].copy()
        thread_id = configurable.pop("thread_id")
        checkpoint_ns = configurable.pop("checkpoint_ns")
        checkpoint_id = configurable.pop("checkpoint_id", None)
        inline: dict[str, Any] = {}
        blob_values: dict[str, Any] = {}
        versions = checkpoint["channel_versions"]
        for k, v in checkpoint["channel_values"].items():
            if isinstance(v, _DeltaSnapshot):
                blob_values[k] = v
                inline[k] = True  # the stock marker, which prune and history read
            elif isinstance(v, PRIMITIVES) and not is_compact(versions.get(k)):
                inline[k] = v
            else:
                blob_values[k] = v
        # Stored without what the row or LangGraph already has: the id is the row's
        # `checkpoint_id` (put back on load), and `updated_channels` only narrows which
        # nodes the first step after a load checks (without it, all five are).
        stored = {k: v for k, v in checkpoint.items() if k not in STORED_APART}
        if inline:
            stored["channel_values"] = inline
        next_config: RunnableConfig = {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": checkpoint_ns,
                "checkpoint_id": checkpoint["id"],
            }
        }
        blob_versions = {k: v for k, v in new_versions.items() if k in blob_values}
        rows = self._dump_blobs(thread_id, checkpoint_ns, blob_values, blob_versions)
        async with self._cursor() as cur:
            await cur.execute(
                PUT_CHECKPOINT_SQL,
                {
                    "thread_id": thread_id,
                    "ns": checkpoint_ns,
                    "channels": [r[2] for r in rows],
                    "versions": [r[3] for r in rows],
                    "types": [r[4] for r in rows],
                    "blobs": [r[5] for r in rows],
                    "checkpoint_id": checkpoint["id"],
                    "parent_id": checkpoint_id,
                    "checkpoint": Jsonb(stored),
                    "metadata": Jsonb(get_serializable_checkpoint_metadata(config, metadata)),
                },
            )
        return next_config

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes as the stock saver does, in one statement.

        The stock saver also serialises them in a worker thread (`asyncio.to_thread`);
        for the small writes of a step the thread hop costs more than it saves, and
        `aput` serialises its blobs on the loop already.
        """
        configurable = config["configurable"]
        upsert = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        # One row per index, the one the stock saver's row-by-row statements would
        # leave: the last when they upsert, the first when they skip conflicts (and
        # within one statement a second update of the same row is an error).
        ordered = list(enumerate(writes))
        if not upsert:
            ordered.reverse()  # the first write at an index is assigned last, and kept
        rows = {
            WRITES_IDX_MAP.get(channel, idx): (channel, *self.serde.dumps_typed(value))
            for idx, (channel, value) in ordered
        }
        if not rows:
            return
        async with self._cursor() as cur:
            await cur.execute(
                UPSERT_WRITES_SQL if upsert else INSERT_WRITES_SQL,
                {
                    "thread_id": configurable["thread_id"],
                    "ns": configurable["checkpoint_ns"],
                    "checkpoint_id": configurable["checkpoint_id"],
                    "task_id": task_id,
                    "task_path": task_path,
                    "idx": list(rows),
                    "channels": [r[0] for r in rows.values()],
                    "types": [r[1] for r in rows.values()],
                    "blobs": [r[2] for r in rows.values()],
                },
            )

    async def _load_checkpoint_tuple(self, value: DictRow) -> CheckpointTuple:
        """Load a row as the stock saver does, putting back the id `aput` left out."""
        loaded = await super()._load_checkpoint_tuple(value)
        loaded.checkpoint.setdefault("id", value["checkpoint_id"])
        return loaded

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        """Yield a cursor on a connection of its own; `pipeline=True` sends what it
        runs as one pipeline (one implicit transaction, one round trip)."""
        if not isinstance(self.conn, AsyncConnectionPool):
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        async with self._checkout(self.conn) as conn:
            if pipeline:
                # A libpq without pipeline mode (< 14) gets an explicit transaction.
                batch = conn.pipeline() if self.supports_pipeline else conn.transaction()
                async with batch, conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            else:
                async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur

    @asynccontextmanager
    async def _checkout(
        self, pool: AsyncConnectionPool[Any]
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """Take a pool connection as `pool.connection()` does, waiting long only while
        the pool is busy (`checkpoints.pool.WardenPool` says how). A pool that is not
        Warden's gets the same policy from here."""
        if isinstance(pool, WardenPool):
            conn = await pool.getconn()
        else:
            conn = await wait_for_connection(
                pool,
                pool.getconn,
                busy_timeout=self.checkout_timeout,
                wait_slice=self.checkout_slice,
            )
        try:
            async with conn:
                yield conn
        finally:
            await pool.putconn(conn)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, blob and write of a thread to a new thread.

        Raises BadInput when the target thread already has checkpoints: merging two
        histories would interleave unrelated parent chains.
        """
        src, dst = str(source_thread_id), str(target_thread_id)
        async with self._cursor() as cur, cur.connection.transaction():
            await cur.execute(TARGET_EXISTS_SQL, (dst,))
            row = await cur.fetchone()
            if row is not None and row["taken"]:
                raise BadInput(f"cannot copy thread {src!r}: thread {dst!r} already exists")
            for sql in COPY_THREAD_SQL:
                await cur.execute(sql, {"src": src, "dst": dst})

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints the given runs wrote, their writes and orphaned blobs.

        As upstream warns, deleting a run in the middle of a DeltaChannel thread leaves
        later checkpoints without that part of their history; LangGraph's server deletes
        a thread's latest run (rollback), which is safe.
        """
        if isinstance(run_ids, str):
            raise TypeError("run_ids must be a sequence of run IDs, not a str")
        runs = [str(r) for r in run_ids]
        if not runs:
            return
        async with self._cursor() as cur, cur.connection.transaction():
            await cur.execute(DELETE_RUNS_SQL, {"runs": runs}, prepare=False)
            freed = await cur.fetchall()
            if freed:
                columns: list[list[Any]] = [
                    [r[k] for r in freed] for k in ("thread_id", "checkpoint_ns", "channel", "version")
                ]
                await cur.execute(DELETE_UNREFERENCED_BLOBS_SQL, columns, prepare=False)
