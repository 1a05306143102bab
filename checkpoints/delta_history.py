"""DeltaChannel history without a blob probe per checkpoint row.

Loading a thread rebuilds each `DeltaChannel` (Warden's `messages`, `usage`, `loop`)
by walking the checkpoint chain back to the channel's last stored value (a snapshot
blob or an inline primitive) and replaying the writes since. The stock saver's walk
(`AsyncPostgresSaver.aget_delta_channel_history`) reads the chain in pages of 1024
rows with one `EXISTS` probe into `checkpoint_blobs` per row and channel: on a
500-call Warden thread (1500 checkpoints, three delta channels) that is 4500 index
probes, about 22 ms of server time, the largest part of a load's database work.

Here the walk reads the chain without probes (about 3.5 ms for the same rows) and
learns which (channel, version) pairs have a blob from one query over the thread's
blobs for those channels: snapshots, and the plain values a thread migrated from an
older channel type left behind. Only `channel` and `version` come back, never a
blob. The second query reads a chain's writes by id range when the chain is every
checkpoint between its ends (always, unless a walk crosses a fork point), instead of
sending the chain's ids. The rest is the stock code: the same page walk
(`_ingest_stage1_page`, `_try_advance_walks`) and history assembly
(`_build_delta_channels_writes_history`), all in one pool checkout; the result is the
stock result (tested against it at every checkpoint of forked and stock-begun threads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import DeltaChannelHistory, get_checkpoint_id
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.postgres.base import _DELTA_PAGE_SIZE, _DeltaStage2Row
from psycopg.rows import DictRow, tuple_row

# The (channel, version) pairs of the thread that have a stored value, as the stock
# probe tests them (`type <> 'empty'`).
BLOB_VERSIONS_SQL = """
SELECT channel, version FROM checkpoint_blobs
WHERE thread_id = %s AND checkpoint_ns = %s AND channel = ANY(%s) AND type <> 'empty'
"""


STOCK_VERSION_OF = "checkpoint -> 'channel_versions' ->> %s"
"""A row's version of the channel passed as the one parameter (the stock row form)."""


def chain_page_sql(
    channels: Sequence[str], *, include_cursor: bool, version_of: str = STOCK_VERSION_OF
) -> str:
    """The stock stage-1 page query (`_build_delta_stage1_sql`) without its probes:
    per channel, the row's version (`ver_i`, by `version_of`) and its inline value
    (`inline_i`)."""
    cols = [
        f"{version_of} AS ver_{i}, "
        f"checkpoint -> 'channel_values' -> %s AS inline_{i}"
        for i in range(len(channels))
    ]
    return (
        "SELECT checkpoint_id, parent_checkpoint_id, "
        + ", ".join(cols)
        + " FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s"
        + f" AND checkpoint_id {'<=' if include_cursor else '<'} %s"
        + " ORDER BY checkpoint_id DESC LIMIT %s"
    )


# The stock second query (`_build_delta_stage2_sql`) is a UNION ALL of these branches:
# per channel the writes of its chain, per seeded channel its seed blob. A chain that
# is every checkpoint between its ends (no fork there) is read by id range instead of
# by its ids: psycopg's dumping of a 1500-id array parameter cost more client time
# than the rest of the query.
_COLUMNS = "checkpoint_id, channel, type, blob, task_id, task_path, idx, NULL::text AS version"
WRITES_BY_IDS_SQL = (
    f"SELECT 'w'::text AS _kind, {_COLUMNS} FROM checkpoint_writes "
    "WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND checkpoint_id = ANY(%s)"
)
WRITES_BY_RANGE_SQL = (
    f"SELECT 'w'::text AS _kind, {_COLUMNS} FROM checkpoint_writes "
    "WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s "
    "AND checkpoint_id BETWEEN %s AND %s"
)
SEED_SQL = (
    "SELECT 'b'::text AS _kind, NULL::text AS checkpoint_id, channel, type, blob, "
    "NULL::text AS task_id, NULL::text AS task_path, NULL::int AS idx, version "
    "FROM checkpoint_blobs "
    "WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND version = %s"
)


def writes_query(
    thread_id: str,
    checkpoint_ns: str,
    read: Mapping[str, str | None],
    chain_by_ch: Mapping[str, list[str]],
    seed_ver_by_ch: Mapping[str, str | None],
) -> tuple[str, list[Any]]:
    """Return the second query and its parameters (an empty query: nothing to read).

    `read` holds every checkpoint row the walk read: every row of the thread and
    namespace from the target down to the oldest one read. A chain is contiguous when
    it has as many ids as `read` has between its ends.
    """
    branches: list[str] = []
    params: list[Any] = []
    for ch, chain in chain_by_ch.items():
        if not chain:
            continue
        low, high = min(chain), max(chain)
        if sum(1 for cid in read if low <= cid <= high) == len(chain):
            branches.append(WRITES_BY_RANGE_SQL)
            params.extend([thread_id, checkpoint_ns, ch, low, high])
        else:
            branches.append(WRITES_BY_IDS_SQL)
            params.extend([thread_id, checkpoint_ns, ch, chain])
    for ch, version in seed_ver_by_ch.items():
        if version is not None:
            branches.append(SEED_SQL)
            params.extend([thread_id, checkpoint_ns, ch, version])
    return " UNION ALL ".join(branches), params


class DeltaHistorySaver(AsyncPostgresSaver):
    """AsyncPostgresSaver whose DeltaChannel history walk needs no per-row probes."""

    version_sql: str = STOCK_VERSION_OF
    """How the walk reads a row's version of a channel (one parameter: the channel);
    a subclass that stores rows in another form says how to read it."""

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """Return each channel's seed and writes since it, as the stock saver does."""
        if not channels:
            return {}
        channels = list(channels)
        thread_id = config["configurable"]["thread_id"]
        checkpoint_ns = config["configurable"].get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            target = await self.aget_tuple(config)
            if target is None:
                return {ch: {"writes": []} for ch in channels}
            checkpoint_id = target.config["configurable"]["checkpoint_id"]

        parent_of: dict[str, str | None] = {}
        ver_by_i_by_cid: list[dict[str, str | None]] = [{} for _ in channels]
        hb_by_i_by_cid: list[dict[str, bool]] = [{} for _ in channels]
        inline_by_i_by_cid: list[dict[str, Any]] = [{} for _ in channels]
        chain_by_ch: dict[str, list[str]] = {ch: [] for ch in channels}
        seed_ver_by_ch: dict[str, str | None] = {ch: None for ch in channels}
        seed_inline_by_ch: dict[str, Any] = {}
        walk_cursor_by_ch: dict[str, str | None] = {}
        seeded: set[str] = set()
        cursor: str | None = checkpoint_id
        # Rows are cheap without the probes, so pages are larger than the stock 1024:
        # `messages` snapshots every 2000 updates (about 3000 checkpoints), so most
        # walks read a few thousand rows; they take one or two round trips.
        page_size = 2 * _DELTA_PAGE_SIZE
        sql = chain_page_sql(channels, include_cursor=True, version_of=self.version_sql)
        per_channel = [p for ch in channels for p in (ch, ch)]

        async with self._cursor() as cur:
            # Tuple rows for the walk: the stock ingest (`_ingest_stage1_page`) reads
            # dict rows by formatted keys and casts per row and channel, which was a
            # third of a 1500-row walk's client time. It fills the same maps here.
            async with cur.connection.cursor(binary=True, row_factory=tuple_row) as walk:
                await walk.execute(BLOB_VERSIONS_SQL, (thread_id, checkpoint_ns, channels))
                stored = set(await walk.fetchall())
                indexed = list(enumerate(channels))
                while True:
                    await walk.execute(sql, [*per_channel, thread_id, checkpoint_ns, cursor, page_size])
                    page = await walk.fetchall()
                    if not page:
                        break
                    for row in page:
                        cid = row[0]
                        parent_of[cid] = row[1]
                        for i, ch in indexed:
                            version = row[2 + 2 * i]
                            ver_by_i_by_cid[i][cid] = version
                            hb_by_i_by_cid[i][cid] = (ch, version) in stored
                            inline_by_i_by_cid[i][cid] = row[3 + 2 * i]
                    oldest = page[-1][0]  # rows come newest first
                    self._try_advance_walks(
                        checkpoint_id,
                        channels,
                        parent_of,
                        ver_by_i_by_cid,
                        hb_by_i_by_cid,
                        inline_by_i_by_cid,
                        chain_by_ch,
                        seed_ver_by_ch,
                        seed_inline_by_ch,
                        walk_cursor_by_ch,
                        seeded,
                    )
                    if len(seeded) == len(channels) or len(page) < page_size:
                        break
                    cursor = oldest
                    sql = chain_page_sql(
                        channels, include_cursor=False, version_of=self.version_sql
                    )
                    page_size *= 2

            stage2_sql, params = writes_query(
                thread_id, checkpoint_ns, parent_of, chain_by_ch, seed_ver_by_ch
            )
            stage2_rows: list[DictRow] = []
            if stage2_sql:
                await cur.execute(stage2_sql, params)
                stage2_rows = await cur.fetchall()

        return self._build_delta_channels_writes_history(
            channels=channels,
            chain_by_ch=chain_by_ch,
            seed_ver_by_ch=seed_ver_by_ch,
            seed_inline_by_ch=seed_inline_by_ch,
            stage2_rows=cast("list[_DeltaStage2Row]", stage2_rows),
        )
