"""Schema migrations: LangGraph's checkpoint tables plus Warden's own."""

from __future__ import annotations

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from graph.errors import ConfigError

# Warden's own tables, applied in order; the index is the version. Later issues
# (idempotency ledger, audit log, spend ledger) append here.
WARDEN_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS warden_migrations (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS warden_threads (
        thread_id text PRIMARY KEY,
        task text NOT NULL,
        context jsonb NOT NULL,
        workspace text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "ALTER TABLE warden_threads ADD COLUMN IF NOT EXISTS config_path text",
    # WardenSaver.adelete_for_runs finds a run's checkpoints by metadata run_id.
    "CREATE INDEX IF NOT EXISTS checkpoints_run_id_idx ON checkpoints ((metadata ->> 'run_id'))",
]


async def migrate(pool: AsyncConnectionPool[AsyncConnection[DictRow]]) -> int:
    """Apply every pending migration; return how many Warden migrations ran."""
    await AsyncPostgresSaver(pool).setup()  # type: ignore[arg-type]
    async with pool.connection() as conn:
        await conn.execute(WARDEN_MIGRATIONS[0])
        # One migrator at a time, even when several workers start together.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('warden_migrations'))")
            rows = await (await conn.execute("SELECT version FROM warden_migrations")).fetchall()
            done = {r["version"] for r in rows}
            applied = 0
            for version, sql in enumerate(WARDEN_MIGRATIONS):
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO warden_migrations (version) VALUES (%s)", (version,)
                )
                applied += 1
    return applied


async def ensure_migrated(pool: AsyncConnectionPool[AsyncConnection[DictRow]]) -> None:
    """Refuse to run against a database that `warden db migrate` has not prepared."""
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT to_regclass('checkpoint_migrations') AS cp, "
                "to_regclass('warden_migrations') AS wm"
            )
        ).fetchone()
        if not row or row["cp"] is None or row["wm"] is None:
            raise ConfigError("database is not migrated: run `warden db migrate` first")
        latest = await (
            await conn.execute("SELECT coalesce(max(version), -1) AS v FROM warden_migrations")
        ).fetchone()
        if latest is None or latest["v"] < len(WARDEN_MIGRATIONS) - 1:
            raise ConfigError("database schema is out of date: run `warden db migrate`")
