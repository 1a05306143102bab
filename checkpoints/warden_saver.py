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
- A super-step is one statement: a task's ordinary writes wait in memory and go in
  with the step's checkpoint, in the same statement (`PUT_STEP_SQL`). Special writes
  (errors, interrupts, resumes) are stored at once, and take any held writes with
  them; every read (`aget_tuple`, `alist`, the DeltaChannel walk, `acopy_thread`)
  first stores what is held for its thread, so in-process callers see the stock
  saver's state. What changes is only the crash window between a task's end and its
  step's checkpoint (about a millisecond): a crash there loses the task's writes, so
  the task runs again on resume, as it would had the crash come a moment earlier.
  Warden's tools are safe to re-run (the ledger, `tools/ledger.py`).
- Shorter channel versions (`get_next_version`, `compact_version`): every checkpoint
  row lists a version per channel and per node, so 52-character versions were half of
  each row.
- Primitive channel values are stored once per change, as blobs, instead of inline in
  every checkpoint row (`aput`).
- A compact checkpoint row (`encode_checkpoint`, `decode_checkpoint`): most channels
  share a version, and every row repeats them all, so they are stored grouped by
  version; `versions_seen` and a metadata key are shortened too. Loading restores the
  stock dicts; the SQL that reads a row's versions reads both forms (`ROW_VERSIONS`);
  `aprune` puts rows back in the stock form before the stock prune reads them.
- The capabilities the stock saver lacks: `acopy_thread` (every checkpoint, blob and
  write of every namespace, so DeltaChannel history stays complete) and
  `adelete_for_runs` (the runs' checkpoints, their writes, and the blobs nothing else
  references), each one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from langgraph.constants import START
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from checkpoints.delta_history import DeltaHistorySaver
from checkpoints.pool import WardenPool, wait_for_connection
from checkpoints.serde import WardenSerializer
from graph.errors import BadInput
from graph.state import USAGE_SHORT, compact_usage

logger = logging.getLogger(__name__)

# A held write row: (task_id, task_path, idx, channel, type, blob).
HeldRow = tuple[str, str, int, str, str, bytes]
HeldKey = tuple[str, str, str]  # (thread_id, checkpoint_ns, checkpoint_id)

# LangGraph's metadata key for DeltaChannel counters, the longest key of every row, and
# the short one Warden stores it under (put back on load and before a stock prune).
COUNTERS = "counters_since_delta_snapshot"
COUNTERS_SHORT = "~deltas"

# Every (channel, version) a checkpoint row references, in either row form: the stock
# flat `channel_versions` object, and Warden's `grouped` one (version -> channels; see
# `encode_checkpoint`). `{row}` is the row's checkpoint column.
# In `grouped`, a trigger channel "branch:to:X" is listed as ">X" (`GROUPED_NAME` in SQL).
TRIGGER_PREFIX = "branch:to:"
SHORT_TRIGGER = ">"
GROUPED_NAME = (
    f"(CASE WHEN starts_with({{channel}}, '{TRIGGER_PREFIX}')"
    f" THEN '{SHORT_TRIGGER}' || substr({{channel}}, {len(TRIGGER_PREFIX) + 1}) ELSE {{channel}} END)"
)
ROW_VERSIONS = f"""(
    SELECT f.key AS channel, f.value AS version
    FROM jsonb_each_text({{row}} -> 'channel_versions') AS f
    UNION ALL
    SELECT CASE WHEN starts_with(c.name, '{SHORT_TRIGGER}')
                THEN '{TRIGGER_PREFIX}' || substr(c.name, {len(SHORT_TRIGGER) + 1}) ELSE c.name END,
           g.key
    FROM jsonb_each({{row}} -> 'grouped') AS g
    CROSS JOIN LATERAL jsonb_array_elements_text(g.value) AS c(name)
)"""

# The stock SELECT_SQL, with its blob join reading both row forms.
SELECT_SQL = f"""
select
    thread_id,
    checkpoint,
    checkpoint_ns,
    checkpoint_id,
    parent_checkpoint_id,
    metadata,
    (
        select array_agg(array[bl.channel::bytea, bl.type::bytea, bl.blob])
        from {ROW_VERSIONS.format(row="checkpoint")} AS rv
        inner join checkpoint_blobs bl
            on bl.thread_id = checkpoints.thread_id
            and bl.checkpoint_ns = checkpoints.checkpoint_ns
            and bl.channel = rv.channel
            and bl.version = rv.version
    ) as channel_values,
    (
        select
        array_agg(array[cw.task_id::text::bytea, cw.channel::bytea, cw.type::bytea, cw.blob, convert_to(cw.task_path, 'UTF8'), cw.idx::text::bytea])
        from checkpoint_writes cw
        where cw.thread_id = checkpoints.thread_id
            and cw.checkpoint_ns = checkpoints.checkpoint_ns
            and cw.checkpoint_id = checkpoints.checkpoint_id
    ) as pending_writes
from checkpoints """

# A row's version of the channel passed as the one parameter, in either row form: what
# the DeltaChannel history walk reads (`DeltaHistorySaver.version_sql`). A channel a
# graph now reads as a DeltaChannel may have had a plain value, stored grouped, in rows
# an earlier graph wrote; the walk back to its last whole value needs that version.
ROW_VERSION_OF = f"""(SELECT coalesce(
    checkpoint -> 'channel_versions' ->> p.channel,
    (SELECT g.key FROM jsonb_each(checkpoint -> 'grouped') AS g
     WHERE g.value ? {GROUPED_NAME.format(channel="p.channel")} LIMIT 1)
) FROM (SELECT %s::text AS channel) AS p)"""


# Rows of the given threads back in the stock form, for the stock prune's SQL (all but
# a compact `ts`, which that SQL does not read and `_load_checkpoint_tuple` reads).
STOCK_FORM_SQL = f"""
UPDATE checkpoints SET
    checkpoint = (checkpoint - 'grouped' - 'seen')
        || jsonb_build_object(
            'channel_versions',
            (SELECT coalesce(jsonb_object_agg(rv.channel, rv.version), '{{}}'::jsonb)
             FROM {ROW_VERSIONS.format(row="checkpoint")} AS rv),
            'versions_seen',
            coalesce(checkpoint -> 'versions_seen', (
                SELECT jsonb_object_agg(
                    s.key,
                    CASE WHEN jsonb_typeof(s.value) = 'string'
                         THEN jsonb_build_object(
                             CASE WHEN s.key = '__start__' THEN s.key ELSE 'branch:to:' || s.key END,
                             s.value)
                         ELSE s.value END)
                FROM jsonb_each(checkpoint -> 'seen') AS s
            ), '{{}}'::jsonb)),
    metadata = CASE WHEN metadata ? '{COUNTERS_SHORT}'
        THEN (metadata - '{COUNTERS_SHORT}')
            || jsonb_build_object('{COUNTERS}', metadata -> '{COUNTERS_SHORT}')
        ELSE metadata END
WHERE thread_id = ANY(%s) AND (checkpoint ? 'grouped' OR checkpoint ? 'seen' OR metadata ? '{COUNTERS_SHORT}')
"""

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
    RETURNING thread_id, checkpoint_ns, checkpoint_id, checkpoint
), writes AS (
    DELETE FROM checkpoint_writes w USING gone
    WHERE w.thread_id = gone.thread_id AND w.checkpoint_ns = gone.checkpoint_ns
      AND w.checkpoint_id = gone.checkpoint_id
)
SELECT DISTINCT gone.thread_id, gone.checkpoint_ns, v.channel, v.version
FROM gone CROSS JOIN LATERAL {versions} AS v
""".format(versions=ROW_VERSIONS.format(row="gone.checkpoint"))

# Blobs freed by the deletion that no remaining checkpoint of their thread references.
DELETE_UNREFERENCED_BLOBS_SQL = f"""
DELETE FROM checkpoint_blobs b
USING unnest(%b::text[], %b::text[], %b::text[], %b::text[]) AS f(thread_id, ns, channel, version)
WHERE b.thread_id = f.thread_id AND b.checkpoint_ns = f.ns
  AND b.channel = f.channel AND b.version = f.version
  AND NOT EXISTS (
      SELECT 1 FROM checkpoints c
      WHERE c.thread_id = f.thread_id AND c.checkpoint_ns = f.ns
        AND (c.checkpoint -> 'channel_versions' ->> f.channel = f.version
             OR c.checkpoint -> 'grouped' -> f.version ? {GROUPED_NAME.format(channel="f.channel")})
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
    FROM unnest(%(channels)b::text[], %(versions)b::text[], %(types)b::text[], %(blobs)b::bytea[])
        AS b(channel, version, type, blob)
    ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING
)
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
VALUES (%(thread_id)s, %(ns)s, %(checkpoint_id)s, %(parent_id)s, %(checkpoint)s, %(metadata)s)
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
"""

# A step's checkpoint with the writes its tasks made since the previous one (held in
# memory by `aput_writes`), as one statement: the writes ride in a second CTE. The writes
# belong to the parent checkpoint (the one the tasks ran from), as LangGraph keys them.
PUT_STEP_SQL = PUT_CHECKPOINT_SQL.replace(
    "\n)\nINSERT INTO checkpoints",
    """
), writes AS (
    INSERT INTO checkpoint_writes
        (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
    SELECT %(thread_id)s, %(ns)s, %(parent_id)s, w.task_id, w.task_path, w.idx, w.channel,
           w.type, w.blob
    FROM unnest(%(w_tasks)b::text[], %(w_paths)b::text[], %(w_idx)b::int[],
                %(w_channels)b::text[], %(w_types)b::text[], %(w_blobs)b::bytea[])
        AS w(task_id, task_path, idx, channel, type, blob)
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO NOTHING
)
INSERT INTO checkpoints""",
    1,
)

PUT_WRITES_SQL = """
INSERT INTO checkpoint_writes
    (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
SELECT %(thread_id)s, %(ns)s, %(checkpoint_id)s, %(task_id)s, %(task_path)s,
       w.idx, w.channel, w.type, w.blob
FROM unnest(%(idx)b::int[], %(channels)b::text[], %(types)b::text[], %(blobs)b::bytea[])
    AS w(idx, channel, type, blob)
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO {action}
"""
# As the stock saver: special writes (errors, interrupts, resumes) replace an earlier
# one at their fixed index; ordinary writes are never overwritten.
UPSERT_WRITES_SQL = PUT_WRITES_SQL.format(
    action="UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob"
)
INSERT_WRITES_SQL = PUT_WRITES_SQL.format(action="NOTHING")
# Held writes stored without a checkpoint (`WardenSaver.flush_held`).
PUT_HELD_SQL = PUT_STEP_SQL[
    PUT_STEP_SQL.index("INSERT INTO checkpoint_writes") : PUT_STEP_SQL.index("\n)\nINSERT INTO checkpoints")
]


def _held_params(held: list[HeldRow]) -> dict[str, list[Any]]:
    """The arrays PUT_STEP_SQL and PUT_HELD_SQL unnest into write rows."""
    tasks, paths, idx, channels, types, blobs = zip(*held, strict=True)
    return {
        "w_tasks": list(tasks),
        "w_paths": list(paths),
        "w_idx": list(idx),
        "w_channels": list(channels),
        "w_types": list(types),
        "w_blobs": list(blobs),
    }

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


def _trigger(node: str) -> str:
    """Return the channel that triggers `node` (LangGraph's naming)."""
    return START if node == START else f"{TRIGGER_PREFIX}{node}"


def _grouped_name(channel: str) -> str:
    if channel.startswith(TRIGGER_PREFIX):
        return SHORT_TRIGGER + channel[len(TRIGGER_PREFIX) :]
    return channel


def _channel_of(name: str) -> str:
    if name.startswith(SHORT_TRIGGER):
        return TRIGGER_PREFIX + name[len(SHORT_TRIGGER) :]
    return name


UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UUID_EPOCH_TICKS = 0x01B21DD213814000  # 100-ns intervals from 1582-10-15 to 1970-01-01

# A row's `ts` as a timestamptz, in either row form (see `encode_ts`): the ISO string, or
# microseconds from the time in its uuid6 checkpoint id. `{row}` names the table.
ROW_TS = """(CASE WHEN jsonb_typeof({row}.checkpoint -> 'ts') = 'number'
    THEN to_timestamp(0) + (
        (('x' || substr({row}.checkpoint_id, 1, 8) || substr({row}.checkpoint_id, 10, 4)
               || substr({row}.checkpoint_id, 16, 3))::bit(60)::bigint - 122192928000000000) / 10
        + ({row}.checkpoint ->> 'ts')::bigint) * interval '1 microsecond'
    ELSE ({row}.checkpoint ->> 'ts')::timestamptz END)"""


def _id_micros(checkpoint_id: str) -> int | None:
    """Return the time in a uuid6 checkpoint id (LangGraph's), in Unix microseconds."""
    try:
        parsed = uuid.UUID(checkpoint_id)
    except (ValueError, TypeError, AttributeError):
        return None
    if parsed.version != 6 or str(parsed) != checkpoint_id:
        return None
    return (int(parsed.hex[0:12] + parsed.hex[13:16], 16) - UUID_EPOCH_TICKS) // 10


def _iso(micros: int) -> str:
    return (UNIX_EPOCH + timedelta(microseconds=micros)).isoformat()


def encode_ts(ts: Any, checkpoint_id: str) -> Any:
    """Return `ts` as stored: microseconds after the time in the checkpoint id when that
    gives back exactly the same string (LangGraph takes both at once), else as is.

    A timestamp of 32 characters per row, which the id holds to a few microseconds."""
    base = _id_micros(checkpoint_id)
    if base is None or not isinstance(ts, str):
        return ts
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return ts
    if moment.tzinfo is None:
        return ts
    offset = (moment - UNIX_EPOCH) // timedelta(microseconds=1) - base
    return offset if _iso(base + offset) == ts else ts


def decode_ts(ts: Any, checkpoint_id: str) -> Any:
    """Return a stored `ts` as LangGraph wrote it (see `encode_ts`)."""
    if isinstance(ts, int) and not isinstance(ts, bool):
        base = _id_micros(checkpoint_id)
        if base is not None:
            return _iso(base + ts)
    return ts


def encode_checkpoint(stored: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Return the row form of a checkpoint (already without its values and id).

    A row lists a version per channel, and most channels share one (every channel a
    super-step wrote gets the same version), so channel names with their version
    repeated were half of each row. Here:

    - `grouped`: version -> the channels at it, for channels with a plain value
      (`values`) and LangGraph's trigger channels ("branch:to:X" listed as ">X"). The others (DeltaChannels, whose
      value is a `_DeltaSnapshot` or rebuilt from writes) stay in `channel_versions`:
      the DeltaChannel history walk (`ROW_VERSION_OF`) reads their version in
      every row of a thread, and a flat key is the cheaper lookup.
    - `seen`: `versions_seen`, with a node's usual entry (its trigger channel alone)
      as just the version.
    - `ts`: as `encode_ts` stores it (`stored` holds the checkpoint's `id` for it).

    `decode_checkpoint` is the inverse.
    """
    flat: dict[str, Any] = {}
    grouped: dict[str, list[str]] = {}
    for channel, version in stored["channel_versions"].items():
        # No value: a DeltaChannel between snapshots (or a consumed trigger).
        plain = channel in values and not isinstance(values[channel], _DeltaSnapshot)
        trigger = channel == START or channel.startswith(TRIGGER_PREFIX)
        # A channel named like a short trigger name stays flat: the name means one thing.
        if isinstance(version, str) and (plain or trigger) and not channel.startswith(SHORT_TRIGGER):
            grouped.setdefault(version, []).append(_grouped_name(channel))
        else:
            flat[channel] = version
    seen = {
        node: next(iter(channels.values()))
        if len(channels) == 1 and _trigger(node) in channels
        and isinstance(channels[_trigger(node)], str)
        else channels
        for node, channels in stored["versions_seen"].items()
    }
    row = {
        k: v for k, v in stored.items() if k not in ("channel_versions", "versions_seen", "id")
    }
    if "ts" in row and "id" in stored:
        row["ts"] = encode_ts(row["ts"], stored["id"])
    row["channel_versions"] = flat
    if grouped:
        row["grouped"] = grouped
    row["seen"] = seen
    return row


def decode_checkpoint(row: dict[str, Any], checkpoint_id: str) -> dict[str, Any]:
    """Return a row's checkpoint in LangGraph's form (rows in the stock form pass through)."""
    if "grouped" not in row and "seen" not in row and not isinstance(row.get("ts"), int):
        return row
    checkpoint = {k: v for k, v in row.items() if k not in ("grouped", "seen")}
    if "ts" in row:
        checkpoint["ts"] = decode_ts(row["ts"], checkpoint_id)
    versions = dict(row.get("channel_versions") or {})
    for version, channels in (row.get("grouped") or {}).items():
        versions.update(dict.fromkeys(map(_channel_of, channels), version))
    checkpoint["channel_versions"] = versions
    if "seen" in row:
        checkpoint["versions_seen"] = {
            node: {_trigger(node): seen} if isinstance(seen, str) else seen
            for node, seen in row["seen"].items()
        }
    return checkpoint


def stored_write(channel: str, value: Any) -> Any:
    """Return a write as it is stored: Warden's usage deltas compact (`compact_usage`).

    Every super-step writes one usage delta; stored with long keys it was ~470 bytes a
    tool call. Nodes write, and streams show, the long form; loading reads both (the
    channel's reducer expands the compact one). Only a dict of usage counters with a
    step is compacted, so another graph's `usage` channel is stored as it is.
    """
    if (
        channel == "usage"
        and type(value) is dict
        and "steps" in value
        and value.keys() <= USAGE_SHORT.keys()
    ):
        return compact_usage(value)
    return value


class WardenSaver(DeltaHistorySaver):
    """AsyncPostgresSaver without the instance lock over a pool, with atomic pipelined
    writes, compact versions, `acopy_thread` and `adelete_for_runs`."""

    SELECT_SQL = SELECT_SQL
    version_sql = ROW_VERSION_OF
    serde = WardenSerializer()  # messages load without re-validation (checkpoints/serde.py)

    checkout_timeout: float = WardenPool.busy_timeout
    checkout_slice: float = WardenPool.wait_slice
    """How long a query waits for a busy pool that is not a `WardenPool` (an embedder's
    own), and in what slices (`checkpoints.pool.wait_for_connection`)."""

    hold_at_most: float = 0.5
    """Seconds a task's writes may wait for their step's checkpoint before they are
    stored on their own (a step that never checkpoints: a cancelled run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Writes waiting for their step's checkpoint (see the module docstring).
        self._held: dict[HeldKey, list[HeldRow]] = {}
        self._flushes: set[asyncio.Task[None]] = set()

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
        held = (
            self._held.pop((thread_id, checkpoint_ns, checkpoint_id), None)
            if self._held and checkpoint_id
            else None
        )
        async with self._cursor() as cur:
            await cur.execute(
                PUT_STEP_SQL if held else PUT_CHECKPOINT_SQL,
                {
                    **(_held_params(held) if held else {}),
                    "thread_id": thread_id,
                    "ns": checkpoint_ns,
                    "channels": [r[2] for r in rows],
                    "versions": [r[3] for r in rows],
                    "types": [r[4] for r in rows],
                    "blobs": [r[5] for r in rows],
                    "checkpoint_id": checkpoint["id"],
                    "parent_id": checkpoint_id,
                    "checkpoint": Jsonb(
                        encode_checkpoint({**stored, "id": checkpoint["id"]}, checkpoint["channel_values"])
                    ),
                    "metadata": Jsonb(self._stored_metadata(config, metadata)),
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
        key: HeldKey = (
            configurable["thread_id"], configurable["checkpoint_ns"], configurable["checkpoint_id"]
        )
        if task_path and not any(channel in WRITES_IDX_MAP for channel, _ in writes):
            # A running task's ordinary writes: its step's checkpoint takes them along.
            new: list[HeldRow] = [
                (task_id, task_path, idx, channel, *self.serde.dumps_typed(stored_write(channel, value)))
                for idx, (channel, value) in enumerate(writes)
            ]
            held = self._held.get(key)
            if held is None:
                self._held[key] = held = []
                self.loop.call_later(self.hold_at_most, self._expire, key, held)
            held += new
            return
        if self._held:
            await self._store_held(self._held.pop(key, None), key)  # keep the stock order
        upsert = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        # One row per index, the one the stock saver's row-by-row statements would
        # leave: the last when they upsert, the first when they skip conflicts (and
        # within one statement a second update of the same row is an error).
        ordered = list(enumerate(writes))
        if not upsert:
            ordered.reverse()  # the first write at an index is assigned last, and kept
        rows = {
            WRITES_IDX_MAP.get(channel, idx): (
                channel,
                *self.serde.dumps_typed(stored_write(channel, value)),
            )
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

    async def _store_held(self, held: list[HeldRow] | None, key: HeldKey) -> None:
        """Store held writes on their own (no checkpoint takes them)."""
        if not held:
            return
        async with self._cursor() as cur:
            await cur.execute(
                PUT_HELD_SQL,
                {"thread_id": key[0], "ns": key[1], "parent_id": key[2], **_held_params(held)},
            )

    async def flush_held(self, thread_id: str | None = None) -> None:
        """Store the writes still waiting for a checkpoint: the thread's, or all."""
        keys = [k for k in self._held if thread_id is None or k[0] == thread_id]
        for key in keys:
            await self._store_held(self._held.pop(key, None), key)

    def _expire(self, key: HeldKey, held: list[HeldRow]) -> None:
        """Store writes that waited `hold_at_most` for a checkpoint that did not come."""
        if self._held.get(key) is not held:
            return  # taken by their checkpoint, or stored already
        del self._held[key]
        task = self.loop.create_task(self._store_held(held, key))
        self._flushes.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("storing held checkpoint writes failed: %s", exc)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Load a checkpoint as the stock saver does, after storing held writes."""
        if self._held:
            await self.flush_held(config["configurable"]["thread_id"])
        return await super().aget_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """List checkpoints as the stock saver does, after storing held writes."""
        if self._held:
            await self.flush_held(config["configurable"]["thread_id"] if config else None)
        async for item in super().alist(config, filter=filter, before=before, limit=limit):
            yield item

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """Walk DeltaChannel history (`DeltaHistorySaver`), after storing held writes."""
        if self._held:
            await self.flush_held(config["configurable"]["thread_id"])
        return await super().aget_delta_channel_history(config=config, channels=channels)

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread as the stock saver does, with the writes it holds."""
        for key in [k for k in self._held if k[0] == str(thread_id)]:
            del self._held[key]
        await super().adelete_thread(thread_id)

    @staticmethod
    def _stored_metadata(config: RunnableConfig, metadata: CheckpointMetadata) -> dict[str, Any]:
        """Return the metadata to store: LangGraph's, with its longest key shortened.

        Only that LangGraph-internal key changes, so `alist(filter=...)` on any other
        key (the ones users and LangGraph filter on) still matches the stored row.
        """
        stored = dict(get_serializable_checkpoint_metadata(config, metadata))
        if COUNTERS in stored and COUNTERS_SHORT not in stored:
            stored[COUNTERS_SHORT] = stored.pop(COUNTERS)
        return stored

    async def _load_checkpoint_tuple(self, value: DictRow) -> CheckpointTuple:
        """Load a row as the stock saver does, from either row form, putting back the
        id `aput` left out."""
        value = {**value, "checkpoint": decode_checkpoint(value["checkpoint"], value["checkpoint_id"])}
        metadata = value["metadata"]
        if isinstance(metadata, dict) and COUNTERS_SHORT in metadata and COUNTERS not in metadata:
            metadata = dict(metadata)
            metadata[COUNTERS] = metadata.pop(COUNTERS_SHORT)
            value["metadata"] = metadata
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

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune as the stock saver does, after putting the threads' rows back in the
        stock form, which its SQL reads (which blobs a row references, whether a thread
        uses a DeltaChannel). The kept rows stay in that form; both load."""
        if self._held:
            await self.flush_held()
        if strategy == "keep_latest" and not isinstance(thread_ids, str) and thread_ids:
            async with self._cursor() as cur:
                await cur.execute(STOCK_FORM_SQL, ([str(t) for t in thread_ids],), prepare=False)
        await super().aprune(thread_ids, strategy=strategy)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, blob and write of a thread to a new thread.

        Raises BadInput when the target thread already has checkpoints: merging two
        histories would interleave unrelated parent chains.
        """
        src, dst = str(source_thread_id), str(target_thread_id)
        if self._held:
            await self.flush_held(src)
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
        if self._held:
            await self.flush_held()
        async with self._cursor() as cur, cur.connection.transaction():
            await cur.execute(DELETE_RUNS_SQL, {"runs": runs}, prepare=False)
            freed = await cur.fetchall()
            if freed:
                columns: list[list[Any]] = [
                    [r[k] for r in freed] for k in ("thread_id", "checkpoint_ns", "channel", "version")
                ]
                await cur.execute(DELETE_UNREFERENCED_BLOBS_SQL, columns, prepare=False)
