"""Retention: choose the threads `warden prune` removes, and remove them.

A thread's age is its last activity: the newest of its checkpoints' timestamps and its
`warden_threads` row, so threads started through the LangGraph server (checkpoints
only) are covered too. Unfinished threads (awaiting approval, stopped mid-way) are kept
unless asked for, and a thread some process is running right now is never touched.
Each thread is deleted under its lock; the order makes an interrupted prune safe to
re-run: Warden's own rows go in one transaction (`checkpoints.retention`), then the
checkpoints (`adelete_thread`), by which the thread is still found next time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from checkpoints.locks import thread_is_busy, thread_lock
from checkpoints.retention import RETENTION_HOOKS, RetentionHook, purge_threads
from checkpoints.warden_saver import ROW_TS
from graph.errors import BadInput, ThreadBusy
from graph.runtime import Warden

# A checkpoint's time, in either row form (`ROW_TS`).
ACTIVITY_SQL = f"""
WITH activity AS (
    SELECT thread_id, max({ROW_TS.format(row="checkpoints")}) AS last, count(*) AS checkpoints
    FROM checkpoints WHERE checkpoint_ns = '' GROUP BY thread_id
    UNION ALL
    SELECT thread_id, updated_at, 0 FROM warden_threads
)
SELECT thread_id, max(last) AS last_activity, sum(checkpoints)::int AS checkpoints
FROM activity GROUP BY thread_id ORDER BY max(last) DESC, thread_id
"""


@dataclass
class PruneCandidate:
    """A thread selected by the age/count rule."""

    thread_id: str
    last_activity: str
    status: str
    checkpoints: int


@dataclass
class PrunePlan:
    """What a prune removes (or, in a dry run, would remove), and what it keeps and why."""

    dry_run: bool
    threads: list[PruneCandidate] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """Return the JSON printed by `warden prune --json`."""
        return asdict(self)


def select_by_rule(
    rows: Sequence[dict[str, Any]],
    *,
    now: datetime,
    older_than: timedelta | None,
    keep_latest: int | None,
) -> list[dict[str, Any]]:
    """Return the rows (newest first) beyond the latest `keep_latest` and older than `older_than`.

    With both rules a thread must meet both; with neither, nothing is selected.
    """
    if older_than is None and keep_latest is None:
        return []
    chosen = list(rows[keep_latest:]) if keep_latest is not None else list(rows)
    if older_than is not None:
        chosen = [r for r in chosen if r["last_activity"] < now - older_than]
    return chosen


async def prune(
    warden: Warden,
    *,
    now: datetime,
    older_than: timedelta | None = None,
    keep_latest: int | None = None,
    delete: bool = False,
    include_unfinished: bool = False,
    audit: bool = False,
    hooks: Sequence[RetentionHook] = RETENTION_HOOKS,
) -> PrunePlan:
    """Select threads by age and/or count; delete them when `delete`, else only report."""
    if older_than is None and keep_latest is None:
        raise BadInput("give --older-than and/or --keep-latest")
    async with warden.pool.connection() as conn:
        rows = await (await conn.execute(ACTIVITY_SQL)).fetchall()
    plan = PrunePlan(dry_run=not delete)
    for row in select_by_rule(rows, now=now, older_than=older_than, keep_latest=keep_latest):
        thread_id = row["thread_id"]
        if await thread_is_busy(warden.pool, thread_id):
            plan.skipped.append({"thread_id": thread_id, "reason": "running in another process"})
            continue
        current = await warden.peek(thread_id)
        status = current.status if current is not None else "no checkpoints"
        if status in ("awaiting_approval", "in_progress") and not include_unfinished:
            plan.skipped.append({"thread_id": thread_id, "reason": status})
            continue
        plan.threads.append(
            PruneCandidate(thread_id, row["last_activity"].isoformat(), status, row["checkpoints"])
        )
    if delete:
        for candidate in list(plan.threads):
            try:
                # Under the thread's lock, so no run can start on it while it goes.
                async with thread_lock(warden.pool, candidate.thread_id):
                    async with warden.pool.connection() as conn:
                        counts = await purge_threads(
                            conn, [candidate.thread_id], hooks=hooks, opt_in=audit
                        )
                    await warden.saver.adelete_thread(candidate.thread_id)
            except ThreadBusy:
                plan.threads.remove(candidate)
                plan.skipped.append(
                    {"thread_id": candidate.thread_id, "reason": "running in another process"}
                )
                continue
            counts["checkpoints"] = candidate.checkpoints
            for name, count in counts.items():
                plan.deleted[name] = plan.deleted.get(name, 0) + count
    return plan
