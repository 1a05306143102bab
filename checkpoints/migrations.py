"""Schema migrations: LangGraph's checkpoint tables plus Warden's own."""

from __future__ import annotations

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.store.postgres.aio import AsyncPostgresStore
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
    # The idempotency ledger (checkpoints/ledger.py): one row per tool call.
    """
    CREATE TABLE IF NOT EXISTS warden_ledger (
        key text PRIMARY KEY,
        thread_id text NOT NULL,
        tool_call_id text NOT NULL,
        tool text NOT NULL,
        args_hash text NOT NULL,
        status text NOT NULL CHECK (status IN ('started', 'succeeded', 'failed')),
        result jsonb,
        error text,
        attempts integer NOT NULL DEFAULT 1,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
    )
    """,
    "CREATE INDEX IF NOT EXISTS warden_ledger_thread_id ON warden_ledger (thread_id)",
    # Operator control (#4): a cancel asked for a run that another process is running.
    """
    CREATE TABLE IF NOT EXISTS warden_cancel_requests (
        thread_id text PRIMARY KEY,
        requested_at timestamptz NOT NULL DEFAULT now(),
        requested_by text NOT NULL,
        reason text NOT NULL
    )
    """,
    # Global spend caps (#4): per-tenant caps, per-period totals, in-flight reservations.
    """
    CREATE TABLE IF NOT EXISTS warden_spend_caps (
        tenant text NOT NULL,
        period text NOT NULL CHECK (period IN ('day', 'month')),
        cap_usd numeric NOT NULL CHECK (cap_usd >= 0),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant, period)
    );
    CREATE TABLE IF NOT EXISTS warden_spend (
        tenant text NOT NULL,
        period text NOT NULL CHECK (period IN ('day', 'month')),
        period_start date NOT NULL,
        reserved_usd numeric NOT NULL DEFAULT 0,
        spent_usd numeric NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, period, period_start)
    );
    CREATE TABLE IF NOT EXISTS warden_spend_reservations (
        id uuid PRIMARY KEY,
        thread_id text NOT NULL,
        tenant text NOT NULL,
        day_start date NOT NULL,
        month_start date NOT NULL,
        amount_usd numeric NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS warden_spend_reservations_thread
        ON warden_spend_reservations (thread_id)
    """,
    # --- audit log (issue #5): append-only, hash-chained per thread -----------------
    """
    CREATE TABLE IF NOT EXISTS warden_audit (
        id bigserial PRIMARY KEY,
        thread_id text NOT NULL,
        run_id text NOT NULL,
        seq bigint NOT NULL,
        at timestamptz NOT NULL,
        node text NOT NULL,
        kind text NOT NULL,
        payload jsonb NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        UNIQUE (thread_id, seq)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS warden_audit_retention (
        id bigserial PRIMARY KEY,
        thread_id text NOT NULL,
        events bigint NOT NULL,
        head_seq bigint NOT NULL,
        head_hash text NOT NULL,
        removed_at timestamptz NOT NULL DEFAULT now(),
        by text NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS warden_audit_retention_thread "
    "ON warden_audit_retention (thread_id, id)",
    # Refuse UPDATE, DELETE and TRUNCATE; only the retention job may DELETE, in a
    # transaction that did `SET LOCAL warden.retention = 'on'` (checkpoints.audit_store).
    """
    CREATE OR REPLACE FUNCTION warden_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND current_setting('warden.retention', true) = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE OR REPLACE TRIGGER warden_audit_append_only
    BEFORE UPDATE OR DELETE ON warden_audit
    FOR EACH ROW EXECUTE FUNCTION warden_audit_append_only()
    """,
    """
    CREATE OR REPLACE TRIGGER warden_audit_no_truncate
    BEFORE TRUNCATE ON warden_audit
    FOR EACH STATEMENT EXECUTE FUNCTION warden_audit_append_only()
    """,
    """
    CREATE OR REPLACE TRIGGER warden_audit_retention_append_only
    BEFORE UPDATE OR DELETE ON warden_audit_retention
    FOR EACH ROW EXECUTE FUNCTION warden_audit_append_only()
    """,
    """
    CREATE OR REPLACE TRIGGER warden_audit_retention_no_truncate
    BEFORE TRUNCATE ON warden_audit_retention
    FOR EACH STATEMENT EXECUTE FUNCTION warden_audit_append_only()
    """,
    # Keyword recall of long-term memory (tools/memory.py) over LangGraph's store table,
    # which `AsyncPostgresStore.setup()` creates before these migrations run.
    """
    CREATE INDEX IF NOT EXISTS warden_memory_text_idx ON store
        USING gin (to_tsvector('simple', value->>'text'))
        WHERE prefix LIKE 'warden_memory.%'
    """,
    # WardenSaver.adelete_for_runs finds a run's checkpoints by metadata run_id.
    "CREATE INDEX IF NOT EXISTS checkpoints_run_id_idx ON checkpoints ((metadata ->> 'run_id'))",
]


async def migrate(pool: AsyncConnectionPool[AsyncConnection[DictRow]]) -> int:
    """Apply every pending migration; return how many Warden migrations ran."""
    await AsyncPostgresSaver(pool).setup()  # type: ignore[arg-type]
    # Long-term memory's tables (its vector table is set up on first use with embeddings).
    await AsyncPostgresStore(pool).setup()  # type: ignore[arg-type]
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
