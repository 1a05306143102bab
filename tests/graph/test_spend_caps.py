"""Global per-tenant spend caps on real Postgres: reserve, refuse, settle, isolation."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from checkpoints.pool import open_pool
from checkpoints.spend import Refusal, Reservation, reserve, set_caps, settle, spend_report
from graph.context import Context
from graph.models import make_model_factory
from graph.pricing import DEFAULT_PRICES, cost_usd
from graph.runtime import Warden
from nodes.spending import FIRST_CALL_OUTPUT_TOKENS, estimate_call_usd
from tests.conftest import call, turn

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
NEXT_MONTH = datetime(2026, 4, 1, 0, 30, tzinfo=UTC)


def totals(url: str, tenant: str) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT period, period_start, reserved_usd, spent_usd FROM warden_spend "
            "WHERE tenant = %s",
            (tenant,),
        ).fetchall()
    return {(p, str(s)): (r, sp) for p, s, r, sp in rows}


async def test_reserve_refuse_settle(database_url: str) -> None:
    async with open_pool(database_url) as pool:
        await set_caps(pool, "t-basic", {"day": 1.0, "month": 1.2})
        first = await reserve(pool, tenant="t-basic", thread_id="a", estimate=0.6, now=NOON)
        assert isinstance(first, Reservation)
        refused = await reserve(pool, tenant="t-basic", thread_id="b", estimate=0.5, now=NOON)
        assert isinstance(refused, Refusal)
        assert (refused.period, refused.cap, refused.used) == ("day", Decimal("1"), Decimal("0.6"))
        assert "daily spend cap $1" in refused.detail
        # A refusal holds nothing, in either period.
        assert totals(database_url, "t-basic")[("month", "2026-03-01")] == (Decimal("0.6"), 0)

        await settle(pool, first, 0.3)  # the call cost less than estimated
        assert totals(database_url, "t-basic")[("day", "2026-03-14")] == (0, Decimal("0.3"))
        await settle(pool, first, 0.3)  # settling twice counts once
        assert totals(database_url, "t-basic")[("day", "2026-03-14")] == (0, Decimal("0.3"))

        second = await reserve(pool, tenant="t-basic", thread_id="b", estimate=0.5, now=NOON)
        assert isinstance(second, Reservation)
        await settle(pool, second, 0.5)
        # The next day has room but the month does not (0.8 + 0.5 > 1.2).
        next_day = NOON.replace(day=15)
        monthly = await reserve(pool, tenant="t-basic", thread_id="c", estimate=0.5, now=next_day)
        assert isinstance(monthly, Refusal) and monthly.period == "month"
        assert (monthly.cap, monthly.used) == (Decimal("1.2"), Decimal("0.8"))
        # The day had room, yet holds nothing: a refusal writes no row at all.
        assert ("day", "2026-03-15") not in totals(database_url, "t-basic")
        # A new month starts afresh.
        assert isinstance(
            await reserve(pool, tenant="t-basic", thread_id="c", estimate=0.8, now=NEXT_MONTH),
            Reservation,
        )
        # Uncapped tenants are tracked, never refused.
        big = await reserve(pool, tenant="t-free", thread_id="d", estimate=1e6, now=NOON)
        assert isinstance(big, Reservation)
        report = {(r["tenant"], r["period"]): r for r in await spend_report(pool, now=NOON)}
        assert report[("t-basic", "day")]["spent_usd"] == pytest.approx(0.8)
        assert report[("t-basic", "month")]["cap_usd"] == 1.2
        assert report[("t-free", "day")]["reserved_usd"] == 1e6
        assert report[("t-free", "day")]["cap_usd"] is None


async def test_tenants_do_not_block_each_other(database_url: str) -> None:
    """While one tenant's row is locked, that tenant waits and any other goes ahead."""
    params = conninfo_to_dict(database_url) | {"options": "-c lock_timeout=3000"}
    url = make_conninfo(**params)
    async with open_pool(url) as pool:
        await set_caps(pool, "t-locked", {"day": 10.0})
        for tenant in ("t-locked", "t-other"):
            held = await reserve(pool, tenant=tenant, thread_id="x", estimate=0.1, now=NOON)
            assert isinstance(held, Reservation)
        async with await psycopg.AsyncConnection.connect(database_url) as blocker:
            async with blocker.transaction():
                await blocker.execute(
                    "SELECT * FROM warden_spend WHERE tenant = 't-locked' FOR UPDATE"
                )
                other = await reserve(pool, tenant="t-other", thread_id="y", estimate=0.1, now=NOON)
                assert isinstance(other, Reservation)
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    await reserve(pool, tenant="t-locked", thread_id="y", estimate=0.1, now=NOON)


def test_estimate_projects_prompt_and_output() -> None:
    ctx = Context(model="openai:gpt-4o")
    usage = {"model_calls": 0, "output_tokens": 0, "last_input_tokens": 0}
    first = estimate_call_usd(ctx, usage, 1000, None)  # type: ignore[arg-type]
    assert first == cost_usd(DEFAULT_PRICES["gpt-4o"], 1000, FIRST_CALL_OUTPUT_TOKENS)
    later = {"model_calls": 2, "output_tokens": 2000, "last_input_tokens": 5000}
    assert estimate_call_usd(ctx, later, 1000, "gpt-4o-mini") == cost_usd(  # type: ignore[arg-type]
        DEFAULT_PRICES["gpt-4o-mini"], 5000, 1000
    )


async def test_a_run_that_cannot_reserve_halts_global_budget(
    saver, outbox: Path, write_script, workspace: Path, database_url: str
) -> None:
    for i in range(8):
        (workspace / f"part{i}.txt").write_text(f"part {i}\n")
    turns = [
        turn(f"step {i}", call("read_file", path=f"part{i}.txt"), tokens=None) for i in range(8)
    ]
    script = write_script([*turns, turn("done")], model="gpt-4o")
    warden = Warden(saver, outbox=outbox, model_factory=make_model_factory())
    ctx = Context(model=f"scripted:{script}", tenant="t-run")
    async with open_pool(database_url) as pool:
        one_call = estimate_call_usd(
            ctx, {"model_calls": 0, "output_tokens": 0, "last_input_tokens": 0}, 400, "gpt-4o"
        )  # type: ignore[arg-type]
        await set_caps(pool, "t-run", {"day": 3 * one_call})
        outcome = await warden.run("read", context=ctx, workspace=workspace)
        assert (outcome.status, outcome.halt_reason) == ("halted", "global_budget"), (
            outcome.halt_detail
        )
        assert "tenant 't-run' daily spend cap" in (outcome.halt_detail or "")
        assert 1 <= outcome.usage["model_calls"] < 8
        [day] = [r for r in await spend_report(pool, "t-run") if r["period"] == "day"]
    assert day["reserved_usd"] == 0  # every hold was settled
    assert day["spent_usd"] == pytest.approx(outcome.usage["cost_usd"])
    assert day["spent_usd"] <= day["cap_usd"]


async def test_many_concurrent_holds_of_one_tenant_do_not_deadlock(database_url: str) -> None:
    """Reserve and settle from many tasks at once (as 200 concurrent runs of one tenant do).

    Settle updates the day and month rows in the order its plan scans them; without the
    per-tenant lock taken first, this deadlocked against reserve's day-then-month order.
    """
    import asyncio

    async def one(pool: Any, i: int) -> None:
        held = await reserve(pool, tenant="t-busy", thread_id=f"busy-{i}", estimate=0.001)
        assert isinstance(held, Reservation)
        await settle(pool, held, 0.001)

    async with open_pool(database_url, max_size=10) as pool:
        for _ in range(5):
            await asyncio.gather(*(one(pool, i) for i in range(60)))
    spent = totals(database_url, "t-busy")
    assert {v for v in spent.values()} == {(0, Decimal("0.300"))}
