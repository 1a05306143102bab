"""A fresh database per bench run, and the storage measurement."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from checkpoints.embedded import embedded_url


def server_url() -> tuple[str, str]:
    """Return (url of an existing database to administer from, description)."""
    url = os.environ.get("WARDEN_BENCH_DATABASE_URL")
    if url:
        return url, "WARDEN_BENCH_DATABASE_URL"
    data_dir = Path(tempfile.gettempdir()) / "warden-bench-pg"
    return embedded_url(data_dir), f"embedded Postgres in {data_dir}"


@asynccontextmanager
async def fresh_database() -> AsyncIterator[tuple[str, str]]:
    """Create a uniquely named database, yield (its URL, description), drop it after."""
    admin, where = server_url()
    name = f"warden_bench_{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(admin, dbname=name), f"{where}, database {name}"
    finally:
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


STORAGE_SQL = """
SELECT
  (SELECT coalesce(sum(length(blob)), 0) FROM checkpoint_blobs WHERE thread_id = %(t)s) AS blobs,
  (SELECT coalesce(sum(length(blob)), 0) FROM checkpoint_writes WHERE thread_id = %(t)s) AS writes,
  (SELECT coalesce(sum(length(checkpoint::text) + length(coalesce(metadata::text, ''))), 0)
     FROM checkpoints WHERE thread_id = %(t)s) AS checkpoints,
  (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s) AS n_checkpoints
"""


async def thread_storage(url: str, thread_id: str) -> dict[str, int]:
    """Checkpoint bytes stored for one thread, by table."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(STORAGE_SQL, {"t": thread_id})
        row = await cur.fetchone()
    assert row is not None
    blobs, writes, cps, n = (int(v) for v in row)
    return {
        "checkpoint_blobs": blobs,
        "checkpoint_writes": writes,
        "checkpoints_jsonb": cps,
        "total": blobs + writes + cps,
        "n_checkpoints": n,
    }
