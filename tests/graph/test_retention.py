"""Retention on real Postgres: which threads `prune` picks and what goes with them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from checkpoints.cancels import request_cancel
from checkpoints.retention import RETENTION_HOOKS, RetentionHook
from checkpoints.spend import Reservation, reserve
from graph.context import Context
from graph.models import make_model_factory
from graph.retention import prune, select_by_rule
from graph.runtime import Warden
from tests.conftest import turn

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ROWS = [{"thread_id": f"t{i}", "last_activity": NOW - timedelta(days=10 * i)} for i in range(4)]


@pytest.mark.parametrize(
    ("older_than", "keep_latest", "chosen"),
    [
        (None, None, []),
        (None, 0, ["t0", "t1", "t2", "t3"]),
        (None, 2, ["t2", "t3"]),
        (timedelta(days=15), None, ["t2", "t3"]),
        (timedelta(days=25), 3, ["t3"]),  # both rules must hold
        (timedelta(days=5), 9, []),
    ],
)
def test_select_by_rule(
    older_than: timedelta | None, keep_latest: int | None, chosen: list[str]
) -> None:
    picked = select_by_rule(ROWS, now=NOW, older_than=older_than, keep_latest=keep_latest)
    assert [r["thread_id"] for r in picked] == chosen


def count(url: str, table: str, thread_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE thread_id = %s", (thread_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_prune_runs_the_hooks_and_keeps_opt_in_data_unless_asked(
    saver, outbox: Path, write_script, workspace: Path, database_url: str
) -> None:
    warden = Warden(saver, outbox=outbox, model_factory=make_model_factory())
    ctx = Context(model=f"scripted:{write_script([turn('done')])}", tenant="t-prune")
    seen: list[tuple[str, tuple[str, ...]]] = []

    def recorder(name: str) -> RetentionHook:
        async def purge(conn: AsyncConnection[DictRow], thread_ids: Sequence[str]) -> int:
            row = await (
                await conn.execute("SELECT current_setting('warden.retention') AS on")
            ).fetchone()
            assert row is not None and row["on"] == "on"  # append-only tables can tell
            seen.append((name, tuple(thread_ids)))
            return len(thread_ids)

        return RetentionHook(name, purge, opt_in=name == "audit")

    hooks = [*[h for h in RETENTION_HOOKS if h.opt_in is False], recorder("audit")]
    first = (await warden.run("a", context=ctx, workspace=workspace)).thread_id
    second = (await warden.run("b", context=ctx, workspace=workspace)).thread_id
    await request_cancel(warden.pool, first, requested_by="ann", reason="stale")
    held = await reserve(warden.pool, tenant="t-prune", thread_id=first, estimate=0.5)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO warden_ledger (key, thread_id, tool_call_id, tool, args_hash, status) "
            "VALUES (%s, %s, 'c1', 'write_file', 'h', 'succeeded')",
            (f"{first}:c1", first),
        )
    assert isinstance(held, Reservation)

    later = datetime.now(UTC) + timedelta(days=31)
    dry = await prune(warden, now=later, older_than=timedelta(days=30), hooks=hooks)
    assert {first, second} <= {c.thread_id for c in dry.threads}
    assert seen == [] and dry.deleted == {}
    assert count(database_url, "checkpoints", first) > 0

    done = await prune(warden, now=later, older_than=timedelta(days=30), delete=True, hooks=hooks)
    assert [name for name, _ in seen].count("audit") == 0
    assert done.deleted["cancel_requests"] == 1
    assert done.deleted["spend_reservations"] == 1
    assert done.deleted["ledger"] == 1
    for thread in (first, second):
        for table in (
            "checkpoints", "checkpoint_writes", "checkpoint_blobs", "warden_threads", "warden_ledger"
        ):
            assert count(database_url, table, thread) == 0, table
    with psycopg.connect(database_url) as conn:
        reserved = conn.execute(
            "SELECT reserved_usd FROM warden_spend WHERE tenant = 't-prune' AND period = 'day'"
        ).fetchone()
    assert reserved is not None and reserved[0] == 0  # the dead hold no longer counts

    third = (await warden.run("c", context=ctx, workspace=workspace)).thread_id
    await prune(warden, now=later, keep_latest=0, delete=True, audit=True, hooks=hooks)
    assert ("audit", (third,)) in seen


async def test_prune_with_audit_removes_the_trail_and_records_it(
    saver, outbox: Path, write_script, workspace: Path, database_url: str
) -> None:
    warden = Warden(saver, outbox=outbox, model_factory=make_model_factory())
    ctx = Context(model=f"scripted:{write_script([turn('done')])}", tenant="t-audit")
    kept = (await warden.run("a", context=ctx, workspace=workspace)).thread_id
    later = datetime.now(UTC) + timedelta(days=31)
    await prune(warden, now=later, older_than=timedelta(days=30), delete=True)
    assert count(database_url, "warden_audit", kept) > 0  # kept by default

    gone = (await warden.run("b", context=ctx, workspace=workspace)).thread_id
    events = count(database_url, "warden_audit", gone)
    assert events > 0
    done = await prune(warden, now=later, keep_latest=0, delete=True, audit=True)
    assert done.deleted["audit"] >= events
    assert count(database_url, "warden_audit", gone) == 0
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT events FROM warden_audit_retention WHERE thread_id = %s", (gone,)
        ).fetchone()
    assert row is not None and row[0] == events
