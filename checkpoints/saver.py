"""Open Warden's Postgres checkpoint saver: the one the CLI, embedding and the server use."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection, Error
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from checkpoints.embedded import embedded_url
from checkpoints.migrations import ensure_migrated, migrate
from checkpoints.pool import open_pool
from checkpoints.warden_saver import WardenSaver

logger = logging.getLogger(__name__)


def resolve_database_url(database_url: str | None, data_dir: Path) -> tuple[str, bool]:
    """Return the database URL and whether it is the embedded server."""
    if database_url:
        return database_url, False
    return embedded_url(data_dir), True


def saver_pool(saver: AsyncPostgresSaver) -> AsyncConnectionPool[AsyncConnection[DictRow]]:
    """Return the pool behind a saver opened by `open_saver`."""
    pool = saver.conn
    if not isinstance(pool, AsyncConnectionPool):
        raise TypeError("expected a saver opened over a connection pool by open_saver()")
    return pool


@asynccontextmanager
async def open_saver(
    url: str,
    *,
    auto_migrate: bool,
    prepare_threshold: int | None = 5,
    max_size: int = 10,
) -> AsyncIterator[WardenSaver]:
    """Yield a WardenSaver over a pool; migrate first or check it was migrated."""
    async with open_pool(url, prepare_threshold=prepare_threshold, max_size=max_size) as pool:
        if auto_migrate:
            await migrate(pool)
        else:
            await ensure_migrated(pool)
        saver = WardenSaver(pool)  # type: ignore[arg-type]
        try:
            yield saver
        finally:
            # A cancelled run's last writes, before the pool closes. With the database
            # gone they are lost, as in a crash a moment earlier: said, not raised over
            # whatever ended the block.
            try:
                await saver.flush_held()
            except Error as exc:
                logger.warning("held checkpoint writes not stored: %s", exc)
