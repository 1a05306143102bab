"""The pool's health check: no round trip for a connection just used, a real check otherwise."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from checkpoints.pool import RecentlyUsedCheck, WardenPool
from tests.support.net import free_port

pytestmark = pytest.mark.postgres


async def _last_query(url: str, pid: int) -> str:
    """Return the last statement the backend `pid` received (pg_stat_activity)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
        row = await (
            await other.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
        ).fetchone()
    assert row is not None
    return str(row[0])


async def _connect(url: str) -> psycopg.AsyncConnection[dict[str, object]]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)


@pytest.mark.parametrize(("fresh_for", "queried"), [(60.0, False), (0.0, True)])
async def test_a_connection_checked_out_moments_ago_is_not_queried_again(
    database_url: str, fresh_for: float, queried: bool
) -> None:
    check = RecentlyUsedCheck(fresh_for=fresh_for)
    async with await _connect(database_url) as conn:
        await check(conn)  # first sight: the stock empty query
        await conn.execute("SELECT 'marker'")
        await check(conn)
        last = await _last_query(database_url, conn.info.backend_pid)
    assert last == ("" if queried else "SELECT 'marker'")


async def test_a_terminated_session_fails_the_check_even_when_fresh(database_url: str) -> None:
    check = RecentlyUsedCheck(fresh_for=60.0)
    async with await _connect(database_url) as conn:
        await check(conn)
        async with await _connect(database_url) as admin:
            # With a timeout, pg_terminate_backend waits until the session has ended.
            await admin.execute(
                "SELECT pg_terminate_backend(%s, 10000)", (conn.info.backend_pid,)
            )
        with pytest.raises(psycopg.OperationalError):
            await check(conn)


async def test_a_busy_pool_that_cannot_grow_makes_callers_wait_not_fail(database_url: str) -> None:
    # The database refuses a second connection (the role's limit, as a server at
    # max_connections would), so every attempt to grow the pool fails, while the one
    # connection keeps serving callers. A caller queued behind them waits several
    # slices and gets its turn: failed connects alone do not mean the database is down.
    role = f"warden_one_{uuid.uuid4().hex[:8]}"
    async with await _connect(database_url) as admin:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    params = conninfo_to_dict(database_url)
    params["user"] = role
    pool = WardenPool(make_conninfo(**params), min_size=1, max_size=2, open=False)
    # Slices ten times a hold: a slice with no return needs a half-second stall.
    pool.wait_slice = 0.5
    await pool.open(wait=True, timeout=10)
    try:

        async def holder() -> None:
            for _ in range(6):
                async with pool.connection() as conn:
                    await conn.execute("SELECT pg_sleep(0.05)")

        holders = [asyncio.create_task(holder()) for _ in range(20)]
        await asyncio.sleep(0.1)
        async with pool.connection() as conn:  # queued behind ~2 s of work, several slices
            assert (await (await conn.execute("SELECT 1")).fetchone()) is not None
        await asyncio.gather(*holders)
        assert pool.get_stats().get("connections_errors", 0) >= 1  # growth was refused
    finally:
        await pool.close()
        async with await _connect(database_url) as admin:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')


async def test_a_pool_whose_database_is_gone_fails_after_one_slice(database_url: str) -> None:
    # Nothing answers on the port: connects fail and nothing is handed back, so the
    # caller gets PoolTimeout after one slice, not after the busy timeout.
    params = conninfo_to_dict(database_url)
    params["port"] = str(free_port())
    params["connect_timeout"] = "1"
    pool = WardenPool(make_conninfo(**params), min_size=0, max_size=1, open=False)
    pool.wait_slice, pool.busy_timeout = 0.5, 600.0
    await pool.open(wait=False)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(PoolTimeout):
            async with pool.connection():
                pass
        assert asyncio.get_running_loop().time() - started < 60  # one slice, not the 600 s a busy pool may wait
    finally:
        await pool.close()
