"""Per-thread advisory locks: a second holder is refused at once, a dead holder frees it."""

from __future__ import annotations

import asyncio

import pytest

from checkpoints.locks import thread_is_busy, thread_lock
from checkpoints.pool import open_pool
from graph.errors import ThreadBusy


async def test_second_holder_is_refused_and_lock_is_released(database_url: str) -> None:
    async with open_pool(database_url) as a, open_pool(database_url) as b:
        async with thread_lock(a, "t-1"):
            assert await thread_is_busy(b, "t-1")
            with pytest.raises(ThreadBusy, match="thread t-1 is busy"):
                async with thread_lock(b, "t-1"):
                    pass
            async with thread_lock(b, "t-2"):  # other threads are not blocked
                pass
        assert not await thread_is_busy(b, "t-1")


async def test_closed_session_frees_the_lock(database_url: str) -> None:
    async with open_pool(database_url) as b:
        async with open_pool(database_url) as a:
            conn = await a.getconn()
            row = await (
                await conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended('warden-thread:' || %s, 0)) AS ok",
                    ("t-3",),
                )
            ).fetchone()
            assert row and row["ok"]
            assert await thread_is_busy(b, "t-3")
            await conn.close()  # the holder's session ends, as when its process is killed
            await a.putconn(conn)
        # The server ends the backend (and frees its locks) shortly after the socket closes.
        for _ in range(100):
            if not await thread_is_busy(b, "t-3"):
                break
            await asyncio.sleep(0.05)
        assert not await thread_is_busy(b, "t-3")
