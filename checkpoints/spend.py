"""Global spend caps: per-tenant USD caps per day and per month, shared by every worker.

A run's own `max_cost` cannot stop ten workers from spending ten times a tenant's
money; these caps can, because they live in Postgres. Before each model call a run
reserves the call's estimated cost; the reservation succeeds only if, for the
current UTC day and month, reserved + spent + estimate stays within the tenant's cap.
The check and the increment are one statement, run after a per-tenant transaction lock
in the same round trip, so concurrent reservers for one tenant queue on that lock and
each checks the latest committed totals, while other tenants are never waited for.
After the call the reservation is settled: released, and the actual cost added.

Every tenant's spend is tracked, capped or not, so a cap set mid-month counts what
was already spent. Each reservation is also a row (with its thread), so one whose
process died before settling can be found and released (`release_stale`) or pruned.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from checkpoints.db import Pool

Period = Literal["day", "month"]
# Amounts are numeric in Postgres; 1e-10 USD keeps sums exact at any realistic price.
QUANTUM = Decimal("0.0000000001")


def usd(amount: float) -> Decimal:
    """Return a USD amount as the exact decimal stored in Postgres."""
    return Decimal(str(amount)).quantize(QUANTUM)


def dollars(amount: Decimal) -> str:
    """Format a stored amount for people: `$0.25`, not `$0.2500000000`."""
    return f"${amount.normalize():f}"


def period_starts(now: datetime) -> dict[Period, date]:
    """Return the UTC day and month that `now` falls in."""
    today = now.astimezone(UTC).date()
    return {"day": today, "month": today.replace(day=1)}


@dataclass(frozen=True)
class Reservation:
    """Money held for one model call until it is settled."""

    id: uuid.UUID
    tenant: str
    starts: dict[Period, date]
    amount: Decimal


@dataclass(frozen=True)
class Refusal:
    """Why a reservation was refused: the cap it would cross."""

    tenant: str
    period: Period
    cap: Decimal
    used: Decimal
    estimate: Decimal

    @property
    def detail(self) -> str:
        """Explain the refusal in one line (the run's halt detail)."""
        period = "daily" if self.period == "day" else "monthly"
        return (
            f"tenant {self.tenant!r} {period} spend cap {dollars(self.cap)} reached: "
            f"{dollars(self.used)} spent or reserved, the next model call needs about "
            f"{dollars(self.estimate)}"
        )


# Hold `amount` in both periods at once, or in neither. Run after the tenant's lock
# (TENANT_LOCK_SQL, same transaction): every other change to the tenant's rows waits for
# that lock, so this statement's snapshot, taken after it, reads the latest committed
# totals, and checking the caps before writing is exact. The first period (day before
# month) whose reserved + spent + amount would cross its cap is returned as the refusal,
# and then nothing is written; else both period rows take the amount and the
# reservation row is inserted.
HOLD_SQL = """
WITH p(period, start) AS (VALUES ('day', %(day)s::date), ('month', %(month)s::date)),
usage AS (
    SELECT p.period, p.start, coalesce(s.reserved_usd + s.spent_usd, 0) AS used, c.cap_usd AS cap
    FROM p
    LEFT JOIN warden_spend s
        ON s.tenant = %(tenant)s AND s.period = p.period AND s.period_start = p.start
    LEFT JOIN warden_spend_caps c ON c.tenant = %(tenant)s AND c.period = p.period
),
refused AS (
    SELECT period, used, cap FROM usage
    WHERE cap IS NOT NULL AND used + %(amount)s > cap
    ORDER BY period = 'month' LIMIT 1
),
held AS (
    INSERT INTO warden_spend AS s (tenant, period, period_start, reserved_usd)
    SELECT %(tenant)s, period, start, %(amount)s FROM usage
    WHERE NOT EXISTS (SELECT 1 FROM refused)
    ORDER BY period = 'month'
    ON CONFLICT (tenant, period, period_start) DO UPDATE
    SET reserved_usd = s.reserved_usd + EXCLUDED.reserved_usd
    RETURNING 1
),
reservation AS (
    INSERT INTO warden_spend_reservations
        (id, thread_id, tenant, day_start, month_start, amount_usd)
    SELECT %(id)s, %(thread)s, %(tenant)s, %(day)s, %(month)s, %(amount)s
    WHERE NOT EXISTS (SELECT 1 FROM refused)
    RETURNING 1
)
SELECT r.period, r.used, r.cap,
       (SELECT count(*) FROM held) + (SELECT count(*) FROM reservation) AS written
FROM (SELECT 1) AS one LEFT JOIN refused AS r ON true
"""

# Every change to a tenant's spend rows first takes this transaction lock. Reserve locks
# the day row then the month row, but an UPDATE that touches both (settle) visits them
# in whatever order its plan scans them; under many concurrent runs of one tenant the
# two orders deadlocked (found by `make bench`: 200 runs on one tenant). One lock per
# tenant, taken first, gives one order; other tenants' locks are never waited for.
TENANT_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('warden-spend:' || %s, 0))"

# Release a reservation and count the actual cost, in one statement.
SETTLE_SQL = """
WITH held AS (
    DELETE FROM warden_spend_reservations WHERE id = %(id)s
    RETURNING tenant, day_start, month_start, amount_usd
)
UPDATE warden_spend s
SET reserved_usd = s.reserved_usd - held.amount_usd, spent_usd = s.spent_usd + %(actual)s
FROM held
WHERE s.tenant = held.tenant
  AND ((s.period = 'day' AND s.period_start = held.day_start)
    OR (s.period = 'month' AND s.period_start = held.month_start))
"""


async def reserve(
    pool: Pool, *, tenant: str, thread_id: str, estimate: float, now: datetime | None = None
) -> Reservation | Refusal:
    """Hold `estimate` USD of the tenant's day and month caps, or say which cap refuses.

    One round trip: the tenant's lock and HOLD_SQL go as one pipeline, which Postgres
    runs as one implicit transaction (the lock is released when it commits).
    """
    amount = usd(estimate)
    starts = period_starts(now or datetime.now(UTC))
    reservation = Reservation(uuid.uuid4(), tenant, starts, amount)
    params = {
        "tenant": tenant, "day": starts["day"], "month": starts["month"], "amount": amount,
        "id": reservation.id, "thread": thread_id,
    }  # fmt: skip
    async with pool.connection() as conn:
        async with conn.pipeline():
            await conn.execute(TENANT_LOCK_SQL, (tenant,))
            cur = await conn.execute(HOLD_SQL, params)
        row = await cur.fetchone()
    if row is None or row["period"] is None:
        return reservation
    return Refusal(tenant, row["period"], row["cap"], row["used"], amount)


async def settle(pool: Pool, reservation: Reservation, actual: float) -> None:
    """Release a reservation and add the call's actual cost (0 if it never happened).

    A reservation already released (by `release_stale`, or pruned with its thread) is
    left alone, so settling twice counts once.
    """
    async with pool.connection() as conn, conn.pipeline():  # one round trip, one transaction
        await conn.execute(TENANT_LOCK_SQL, (reservation.tenant,))
        await conn.execute(SETTLE_SQL, {"id": reservation.id, "actual": usd(actual)})


async def release_reservations(
    conn: AsyncConnection[DictRow], where: str, params: Sequence[object]
) -> int:
    """Release the reservations matching `where` (nothing is counted as spent).

    Runs inside the caller's transaction; each tenant's lock is taken (in tenant order)
    before its rows are touched, as reserve and settle do.
    """
    tenants = await (
        await conn.execute(
            f"SELECT DISTINCT tenant FROM warden_spend_reservations WHERE {where} ORDER BY tenant",
            params,
        )
    ).fetchall()
    for tenant in tenants:
        await conn.execute(TENANT_LOCK_SQL, (tenant["tenant"],))
    rows = await (
        await conn.execute(
            f"DELETE FROM warden_spend_reservations WHERE {where} "
            "RETURNING tenant, day_start, month_start, amount_usd",
            params,
        )
    ).fetchall()
    for row in rows:
        for period, start in (("day", row["day_start"]), ("month", row["month_start"])):
            await conn.execute(
                "UPDATE warden_spend SET reserved_usd = reserved_usd - %s "
                "WHERE tenant = %s AND period = %s AND period_start = %s",
                (row["amount_usd"], row["tenant"], period, start),
            )
    return len(rows)


async def release_stale(pool: Pool, older_than: timedelta) -> int:
    """Release reservations left by processes that died before settling them."""
    async with pool.connection() as conn, conn.transaction():
        return await release_reservations(conn, "created_at < now() - %s", (older_than,))


async def purge_reservations(conn: AsyncConnection[DictRow], thread_ids: Sequence[str]) -> int:
    """Release the open reservations of pruned threads (a retention hook)."""
    return await release_reservations(conn, "thread_id = ANY(%s)", (list(thread_ids),))


async def set_caps(pool: Pool, tenant: str, caps: dict[Period, float | None]) -> None:
    """Set (a number) or remove (None) the tenant's caps for the given periods."""
    async with pool.connection() as conn, conn.transaction():
        for period, cap in caps.items():
            if cap is None:
                await conn.execute(
                    "DELETE FROM warden_spend_caps WHERE tenant = %s AND period = %s",
                    (tenant, period),
                )
            else:
                await conn.execute(
                    "INSERT INTO warden_spend_caps (tenant, period, cap_usd) VALUES (%s, %s, %s) "
                    "ON CONFLICT (tenant, period) DO UPDATE "
                    "SET cap_usd = EXCLUDED.cap_usd, updated_at = now()",
                    (tenant, period, usd(cap)),
                )


async def spend_report(
    pool: Pool, tenant: str | None = None, now: datetime | None = None
) -> list[dict[str, object]]:
    """Return each tenant's caps and its current day's and month's spend and reservations."""
    starts = period_starts(now or datetime.now(UTC))
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                """
                WITH tenants AS (
                    SELECT tenant FROM warden_spend_caps
                    UNION SELECT tenant FROM warden_spend
                    WHERE (period = 'day' AND period_start = %(day)s)
                       OR (period = 'month' AND period_start = %(month)s)
                )
                SELECT t.tenant, p.period, c.cap_usd,
                       coalesce(s.spent_usd, 0) AS spent_usd,
                       coalesce(s.reserved_usd, 0) AS reserved_usd
                FROM tenants t CROSS JOIN (VALUES ('day'), ('month')) AS p(period)
                LEFT JOIN warden_spend_caps c ON c.tenant = t.tenant AND c.period = p.period
                LEFT JOIN warden_spend s ON s.tenant = t.tenant AND s.period = p.period
                    AND s.period_start = CASE p.period WHEN 'day' THEN %(day)s::date
                                                       ELSE %(month)s::date END
                WHERE %(tenant)s::text IS NULL OR t.tenant = %(tenant)s
                ORDER BY t.tenant, p.period
                """,
                {"day": starts["day"], "month": starts["month"], "tenant": tenant},
            )
        ).fetchall()
    return [
        {
            "tenant": r["tenant"],
            "period": r["period"],
            "period_start": str(starts[r["period"]]),
            "cap_usd": None if r["cap_usd"] is None else float(r["cap_usd"]),
            "spent_usd": float(r["spent_usd"]),
            "reserved_usd": float(r["reserved_usd"]),
        }
        for r in rows
    ]
