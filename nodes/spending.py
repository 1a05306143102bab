"""Hold a model call's estimated cost against the tenant's global caps, then settle it.

The glue between `plan` and `checkpoints.spend`: it finds the run's pool and thread,
estimates the call's cost, and turns a refusal into the `global_budget` halt. Without
Warden's pool (an in-memory checkpointer) there are no global caps and nothing is held.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from langgraph.config import get_config

from checkpoints.db import Pool, pool_of
from checkpoints.spend import Refusal, Reservation, reserve, settle
from graph.context import Context
from graph.pricing import cost_usd, lookup_price
from graph.state import Usage

T = TypeVar("T")

# Completion tokens assumed for a run's first call, before it has an average to go by.
FIRST_CALL_OUTPUT_TOKENS = 256


@dataclass(frozen=True)
class SpendHold:
    """A reservation for one model call, settled once the call's cost is known."""

    pool: Pool
    reservation: Reservation

    async def settle(self, actual_usd: float) -> None:
        """Release the hold and count what the call actually cost."""
        await settle(self.pool, self.reservation, actual_usd)


def estimate_call_usd(
    ctx: Context, usage: Usage, prompt_tokens: int, model_name: str | None
) -> float:
    """Estimate the next call's cost: the larger of the last and the projected prompt,
    and the run's average completion so far (or a first-call default)."""
    price = lookup_price(model_name or ctx.model or "", ctx.price_table)
    calls = usage["model_calls"]
    output = max(usage["output_tokens"] // calls if calls else 0, FIRST_CALL_OUTPUT_TOKENS)
    return cost_usd(price, max(usage.get("last_input_tokens", 0), prompt_tokens), output)


async def hold_spend(
    ctx: Context, usage: Usage, prompt_tokens: Callable[[], int], model_name: str | None
) -> SpendHold | Refusal | None:
    """Reserve the next call's estimated cost for the run's tenant.

    Returns the hold to settle, the refusal that must halt the run, or None when the
    graph runs without Warden's database or the call has no price.
    """
    config = get_config()
    pool = pool_of(config)
    if pool is None:
        return None
    estimate = estimate_call_usd(ctx, usage, prompt_tokens(), model_name)
    if estimate <= 0:
        return None  # a model with no price (or a free one) cannot spend a USD cap
    thread_id = str((config.get("configurable") or {}).get("thread_id"))
    held = await reserve(pool, tenant=ctx.tenant, thread_id=thread_id, estimate=estimate)
    return held if isinstance(held, Refusal) else SpendHold(pool, held)


async def metered(hold: SpendHold | None, call: Awaitable[T]) -> T:
    """Await the model call; if it fails or is cut off, release its hold unspent."""
    try:
        return await call
    except BaseException:
        if hold is not None:
            await hold.settle(0.0)
        raise
