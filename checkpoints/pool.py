"""The psycopg connection pool every Warden component shares."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from time import monotonic
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import ConnStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from checkpoints.cancels import unwatch_cancels, watch_cancels
from checkpoints.db import has_unread_input

FRESH_SECONDS = 2.0
"""How long after a checkout a connection is trusted again without a query."""


class RecentlyUsedCheck:
    """The pool's `check` callback: ask the server only about connections that sat idle.

    psycopg_pool's stock `check_connection` sends an empty query on every checkout: a
    round trip per checkout, ~15 per tool call. What it protects against is a pooled
    connection whose server session is gone (database restarted, backend terminated).
    Such a session's socket has the server's FATAL message or end-of-file waiting on
    it, which a zero-timeout `poll` sees with no round trip; so a connection handed
    out less than `fresh_for` seconds ago is given out again unless libpq already marks
    it bad or its socket is readable. Anything older gets the stock empty query.

    The trade-off: a session that dies without the server saying so yet (a network
    partition, a vanished host, or a backend signalled to terminate a moment ago whose
    notice is still on its way) within `fresh_for` seconds of the last checkout is found
    by the caller's query instead, which fails with an OperationalError, as it would if
    the session had died just after a stock check. The failure is reported, not
    hidden, and the pool replaces the connection.

    The time kept is that of the last checkout, not of the return (which would need a
    `reset` callback, and psycopg_pool returns connections through a worker task when
    one is set): a connection in use for longer than `fresh_for` is checked again.
    """

    def __init__(self, fresh_for: float = FRESH_SECONDS) -> None:
        self.fresh_for = fresh_for
        self._handed_out: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, conn: AsyncConnection[Any]) -> None:
        """Return quietly if the connection is usable; raise if it is not."""
        now = monotonic()
        last = self._handed_out.get(conn)
        if last is None or now - last >= self.fresh_for or not _looks_alive(conn):
            await AsyncConnectionPool.check_connection(conn)
        self._handed_out[conn] = now


def _looks_alive(conn: AsyncConnection[Any]) -> bool:
    """Tell, without a round trip, that nothing says the session is gone."""
    pgconn = conn.pgconn
    if conn.closed or pgconn.status != ConnStatus.OK:
        return False
    # Anything to read (a FATAL notice, EOF) needs the real check, which reads it and
    # fails if the session ended.
    return not has_unread_input(conn)


async def wait_for_connection(
    pool: AsyncConnectionPool[Any],
    getconn: Callable[[float], Awaitable[AsyncConnection[Any]]],
    *,
    busy_timeout: float,
    wait_slice: float,
) -> AsyncConnection[Any]:
    """Take a connection with `getconn`, waiting up to `busy_timeout` for a busy pool,
    in slices of `wait_slice`; give up (PoolTimeout) after a slice in which connecting
    failed and, on a `WardenPool`, no working connection came back (the database is
    gone, not busy). Other pools count no returns: a failed connect decides there."""
    waited = 0.0
    while True:
        errors = pool.get_stats().get("connections_errors", 0)
        returns = getattr(pool, "healthy_returns", None)
        try:
            return await getconn(wait_slice)
        except PoolTimeout:
            waited += wait_slice
            down = pool.get_stats().get("connections_errors", 0) > errors and (
                getattr(pool, "healthy_returns", None) == returns
            )
            if down or waited >= busy_timeout:
                raise


class WardenPool(AsyncConnectionPool[AsyncConnection[DictRow]]):
    """A pool whose callers wait long for a busy pool but fail fast when the database is gone.

    psycopg_pool has one `timeout` for both, and neither value fits: hundreds of runs
    on a small pool queue for connections for many seconds (they queued as long for
    the stock saver's lock, which has no limit), while a dead database should fail a
    run at once. A wait without an explicit timeout is taken in slices: it fails after
    a slice in which connecting failed and no caller handed back a working connection
    (the database is down, not busy), else it goes on for up to `busy_timeout`.
    psycopg_pool exposes no such policy, hence this subclass.
    """

    busy_timeout: float = 120.0
    wait_slice: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.healthy_returns = 0
        """Connections handed back in a working state: a busy pool that is alive."""

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[DictRow]:  # noqa: ASYNC109 (the pool API)
        if timeout is not None:
            return await super().getconn(timeout)
        return await wait_for_connection(
            self, super().getconn, busy_timeout=self.busy_timeout, wait_slice=self.wait_slice
        )

    async def putconn(self, conn: AsyncConnection[DictRow]) -> None:
        if not conn.closed and conn.pgconn.status == ConnStatus.OK:
            self.healthy_returns += 1
        await super().putconn(conn)


@asynccontextmanager
async def open_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    prepare_threshold: int | None = 5,
    connect_timeout: float = 10.0,
) -> AsyncIterator[WardenPool]:
    """Open a health-checked pool: autocommit, dict rows, recycled connections, and a
    cancel watch.

    `prepare_threshold=None` disables server-side prepared statements, which
    transaction-mode PgBouncer requires.
    """
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "row_factory": dict_row,
        "prepare_threshold": prepare_threshold,
    }
    pool = WardenPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        check=RecentlyUsedCheck(),
        max_idle=300,
        max_lifetime=1800,
        timeout=connect_timeout,
        open=False,
    )
    await pool.open(wait=True, timeout=connect_timeout)
    watch_cancels(pool)  # listens from the first cancel check on (checkpoints.cancels)
    try:
        yield pool
    finally:
        await unwatch_cancels(pool)
        await pool.close()
