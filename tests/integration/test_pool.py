"""The pool's health check: no round trip for a connection just used, a real check otherwise."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from checkpoints.pool import RecentlyUsedCheck

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
