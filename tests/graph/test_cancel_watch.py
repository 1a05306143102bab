"""The cancel watch: a node boundary asks the database about a thread only when needed.

Requests are stored here with plain SQL (no NOTIFY) to show when the database is asked:
a thread already checked while the watch listened is not asked again until a NOTIFY
for it arrives, or until the watch stops listening.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from checkpoints.cancels import (
    CHANNEL,
    CancelWatch,
    channel_key,
    consume_cancel,
    pending_cancel,
    request_cancel,
    watch_cancels,
)
from checkpoints.db import Pool
from checkpoints.pool import open_pool

pytestmark = pytest.mark.postgres

STORE_SILENTLY = (
    "INSERT INTO warden_cancel_requests (thread_id, requested_by, reason) VALUES (%s, 'ann', 'x')"
)


async def sql(url: str, query: str, *params: object) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(query, params)


async def listening(pool: Pool) -> CancelWatch:
    """Start the pool's watch and wait (an event, not a duration) until it listens."""
    watch = watch_cancels(pool)
    watch.start()
    for _ in range(1000):
        if watch.generation is not None:
            return watch
        await asyncio.sleep(0.01)
    raise AssertionError("the cancel watch never started listening")


async def eventually_pending(pool: Pool, thread_id: str) -> object:
    for _ in range(1000):
        if (request := await pending_cancel(pool, thread_id)) is not None:
            return request
        await asyncio.sleep(0.01)
    raise AssertionError("the request was never seen")


async def test_a_checked_thread_is_not_asked_again_until_a_notify(database_url: str) -> None:
    async with open_pool(database_url) as pool:
        await listening(pool)
        assert await pending_cancel(pool, "quiet") is None  # asked once, while listening
        await sql(database_url, STORE_SILENTLY, "quiet")
        assert await pending_cancel(pool, "quiet") is None  # not asked: nothing was notified
        await sql(database_url, "SELECT pg_notify(%s, %s)", CHANNEL, channel_key("quiet"))
        assert await eventually_pending(pool, "quiet") == {"requested_by": "ann", "reason": "x"}


async def stored(url: str, thread_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FROM warden_cancel_requests WHERE thread_id = %s", (thread_id,)
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_consuming_asks_the_database_only_when_a_request_may_exist(
    database_url: str,
) -> None:
    async with open_pool(database_url) as pool:
        await listening(pool)
        assert await consume_cancel(pool, "eat") is None  # asked once, while listening
        await sql(database_url, STORE_SILENTLY, "eat")
        assert await consume_cancel(pool, "eat") is None  # not asked: nothing was notified
        assert await stored(database_url, "eat") == 1
        await sql(database_url, "SELECT pg_notify(%s, %s)", CHANNEL, channel_key("eat"))
        assert await eventually_pending(pool, "eat") is not None
        # Found (and still stored): the consume that follows must ask, and delete it.
        assert await consume_cancel(pool, "eat") == {"requested_by": "ann", "reason": "x"}
        assert await stored(database_url, "eat") == 0
        assert await pending_cancel(pool, "eat") is None


async def test_a_request_from_another_process_is_notified(database_url: str) -> None:
    async with open_pool(database_url) as pool, open_pool(database_url) as other:
        await listening(pool)
        assert await pending_cancel(pool, "busy") is None
        await request_cancel(other, "busy", requested_by="bob", reason="stop")
        assert await eventually_pending(pool, "busy") == {"requested_by": "bob", "reason": "stop"}


async def test_a_request_from_this_process_is_seen_at_once(database_url: str) -> None:
    async with open_pool(database_url) as pool:
        await listening(pool)
        assert await pending_cancel(pool, "local") is None
        await request_cancel(pool, "local", requested_by="cy", reason="now")
        assert await pending_cancel(pool, "local") == {"requested_by": "cy", "reason": "now"}


async def test_without_its_listening_connection_every_check_asks_the_database(
    database_url: str,
) -> None:
    async with open_pool(database_url) as pool:
        watch = await listening(pool)
        assert await pending_cancel(pool, "lost") is None
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query = %s",
                (f"LISTEN {CHANNEL}",),
            )
            await admin.execute(STORE_SILENTLY, ("lost",))
        assert await pending_cancel(pool, "lost") == {"requested_by": "ann", "reason": "x"}
        for _ in range(3000):  # it reconnects (after a short pause)
            if (watch.generation or 0) > 1:
                break
            await asyncio.sleep(0.01)
        assert watch.generation == 2
        # A new generation checks every thread afresh.
        assert await pending_cancel(pool, "lost") == {"requested_by": "ann", "reason": "x"}


async def test_a_request_notified_during_the_first_check_is_not_lost(database_url: str) -> None:
    """The first database check of a thread misses a request committed after its snapshot;
    that request's NOTIFY, arriving while the check runs, must still count."""
    async with open_pool(database_url) as pool:
        watch = await listening(pool)

        async def snapshot_before_the_request(pool: Pool, thread_id: str) -> None:
            await sql(database_url, STORE_SILENTLY, thread_id)
            await sql(database_url, "SELECT pg_notify(%s, %s)", CHANNEL, channel_key(thread_id))
            # Let the watch read the NOTIFY before this returns (it notes it as heard).
            for _ in range(1000):
                if channel_key(thread_id) in watch._heard:
                    break
                await asyncio.sleep(0.01)
            return None  # as if read before the request committed

        assert await watch.lookup("racy", snapshot_before_the_request) is None
        assert await pending_cancel(pool, "racy") == {"requested_by": "ann", "reason": "x"}
