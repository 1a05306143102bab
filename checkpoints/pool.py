"""The psycopg connection pool every Warden component shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool


@asynccontextmanager
async def open_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    prepare_threshold: int | None = 5,
    connect_timeout: float = 10.0,
) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[DictRow]]]:
    """Open a health-checked pool: autocommit, dict rows, recycled connections.

    `prepare_threshold=None` disables server-side prepared statements, which
    transaction-mode PgBouncer requires.
    """
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "row_factory": dict_row,
        "prepare_threshold": prepare_threshold,
    }
    pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        check=AsyncConnectionPool.check_connection,
        max_idle=300,
        max_lifetime=1800,
        timeout=connect_timeout,
        open=False,
    )
    await pool.open(wait=True, timeout=connect_timeout)
    try:
        yield pool
    finally:
        await pool.close()
