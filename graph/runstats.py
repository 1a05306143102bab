"""Summaries of stored runs, for `warden report` and `warden metrics serve`.

A run is the latest run of a thread started through Warden's runtime (the CLI, the
demo, an embedding app): one row of `warden_threads` and the thread's latest
checkpoint. Threads created through the LangGraph server API are not in
`warden_threads` and are not counted here (its `/metrics` counts them live).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from graph.errors import BadInput
from graph.runtime import Warden

SINCE_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> timedelta:
    """Parse a look-back window such as `30m`, `12h`, `7d` or `2w`."""
    text = text.strip().lower()
    unit = SINCE_UNITS.get(text[-1:]) if text else None
    try:
        amount = float(text[:-1])
    except ValueError:
        amount = -1.0
    if unit is None or not math.isfinite(amount) or amount <= 0:
        raise BadInput(f"--since {text!r}: use a positive number with m, h, d or w (e.g. 7d)")
    return timedelta(**{unit: amount})


@dataclass(frozen=True)
class RunSummary:
    """What one stored run did and how it ended."""

    thread_id: str
    started_at: datetime
    status: str
    halt_reason: str | None
    active_seconds: float
    cost_usd: float
    model_calls: int
    input_tokens: int
    output_tokens: int
    tool_calls: dict[str, int] = field(default_factory=dict)
    """Tool results per tool name (every run on the thread)."""
    tool_errors: dict[str, int] = field(default_factory=dict)
    """Error results per tool name (every run on the thread)."""
    decisions: dict[str, int] = field(default_factory=dict)
    """Human decisions by kind (every run on the thread)."""


def summarize(
    thread_id: str, started_at: datetime, outcome: dict[str, Any], history: dict[str, Any]
) -> RunSummary:
    """Build a run's summary from its outcome (`RunOutcome.as_json`) and `Warden.history`."""
    usage = outcome["usage"]
    tools = [m for m in history["messages"] if m["type"] == "tool"]
    return RunSummary(
        thread_id=thread_id,
        started_at=started_at,
        status=outcome["status"],
        halt_reason=outcome["halt_reason"],
        active_seconds=float(usage.get("active_seconds", 0.0)),
        cost_usd=float(usage.get("cost_usd", 0.0)),
        model_calls=int(usage.get("model_calls", 0)),
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        tool_calls=dict(Counter(str(m["name"]) for m in tools)),
        tool_errors=dict(Counter(str(m["name"]) for m in tools if m["status"] == "error")),
        decisions=dict(Counter(str(a["decision"]) for a in history["approvals"])),
    )


async def load_summaries(
    warden: Warden, *, since: timedelta | None = None, limit: int = 10_000
) -> list[RunSummary]:
    """Summarise the latest run of every thread updated within `since`, oldest first."""
    async with warden.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT thread_id, updated_at FROM warden_threads "
                "WHERE %s::interval IS NULL OR updated_at >= now() - %s::interval "
                "ORDER BY updated_at LIMIT %s",
                (since, since, limit),
            )
        ).fetchall()
    summaries = []
    for row in rows:
        outcome = await warden.status(row["thread_id"])
        history = await warden.history(row["thread_id"])
        summaries.append(summarize(row["thread_id"], row["updated_at"], outcome.as_json(), history))
    return summaries


def percentile(values: Sequence[float], q: float) -> float | None:
    """Return the q-th percentile (0-100) by linear interpolation, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _sum_counts(maps: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for m in maps:
        total.update(m)
    return dict(sorted(total.items()))


def aggregate(runs: Sequence[RunSummary]) -> dict[str, Any]:
    """Return the report over many runs: outcomes, halts, durations, cost, tool errors."""
    ended = [r for r in runs if r.halt_reason is not None]
    durations = [r.active_seconds for r in ended]
    calls = _sum_counts(r.tool_calls for r in runs)
    errors = _sum_counts(r.tool_errors for r in runs)
    cost = sum(r.cost_usd for r in runs)
    return {
        "runs": len(runs),
        "ended": len(ended),
        "by_status": _sum_counts({r.status: 1} for r in runs),
        "success_rate": (
            sum(r.halt_reason == "completed" for r in ended) / len(ended) if ended else None
        ),
        "halts_by_reason": _sum_counts({r.halt_reason: 1} for r in ended if r.halt_reason),
        "duration_seconds": {"p50": percentile(durations, 50), "p95": percentile(durations, 95)},
        "cost_usd": {"total": cost, "per_run": cost / len(runs) if runs else None},
        "tokens": {
            "input": sum(r.input_tokens for r in runs),
            "output": sum(r.output_tokens for r in runs),
        },
        "model_calls": sum(r.model_calls for r in runs),
        "tools": {
            name: {
                "calls": count,
                "errors": errors.get(name, 0),
                "error_rate": errors.get(name, 0) / count,
            }
            for name, count in calls.items()
        },
        "decisions": _sum_counts(r.decisions for r in runs),
    }
