"""Client-side rate limits for model calls: requests and tokens per minute, per process.

Runs that share a process share a provider account, and so its limits. `plan` takes a
request and an estimate of the prompt's tokens from the limiter of its model before
each call, and settles the estimate against the usage the provider reported after it.

langchain-core's `InMemoryRateLimiter` (the `rate_limiter=` of chat models) counts
requests only, and always one per call; token limits need a cost per acquisition and a
correction after the call, so this is a small token bucket of its own, written as
GCRA (the "virtual scheduling" form of a token bucket): each bucket keeps the time at
which it would be full again, an acquisition pushes that time forward by its cost, and
the caller sleeps until the bucket holds what it took. No loop polls, waits are exact,
and concurrent callers queue up fairly in the order they reserved.

- Requests are spaced evenly (a burst of one, as `InMemoryRateLimiter` does by default):
  at 60 requests a minute, one a second. Parallel runs are what trip a provider's
  limit, and spacing them costs a single run nothing it would not wait anyway.
- Tokens may burst up to one minute's worth, as a provider's own per-minute window
  allows: one large prompt in an idle process does not wait, a sustained flow is held to
  the rate. A prompt larger than the whole minute still goes through, after paying its
  excess in time.

Time spent waiting here is real wall-clock time while the run is active, so it counts
against the run's `max_seconds`; a wait that would pass the budget is not started.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class RateLimitExceedsBudget(Exception):
    """Raised when the limiter's wait would not fit in the time the run has left."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the model rate limit needs a {wait:.2f}s wait")
        self.wait = wait


@dataclass
class TokenBucket:
    """A GCRA token bucket: `per_minute` units a minute, holding at most `burst` units."""

    per_minute: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _full_at: float = 0.0

    @property
    def interval(self) -> float:
        """Seconds it takes to refill one unit."""
        return 60.0 / self.per_minute

    def wait_for(self, cost: float, now: float) -> float:
        """Return how long a caller taking `cost` units at `now` must wait (no change)."""
        full_at = max(self._full_at, now)
        return max(full_at + cost * self.interval - self.burst * self.interval - now, 0.0)

    def take(self, cost: float, now: float) -> None:
        """Commit `cost` units (after `wait_for` said how long to wait for them)."""
        self._full_at = max(self._full_at, now) + cost * self.interval

    def settle(self, correction: float) -> None:
        """Add (or give back, when negative) units once the real cost is known."""
        self._full_at += correction * self.interval


@dataclass
class ModelRateLimiter:
    """The request and token buckets of one model in this process."""

    requests_per_minute: float | None
    tokens_per_minute: float | None
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        self.requests = None if rpm is None else TokenBucket(rpm, burst=1.0)
        self.tokens = None if tpm is None else TokenBucket(tpm, burst=tpm)

    async def acquire(self, tokens: int, *, max_wait: float) -> float:
        """Take one request and `tokens` tokens, sleeping as needed; return the wait.

        The reservation is made under a lock and only if its wait fits in `max_wait`
        (else `RateLimitExceedsBudget`, nothing taken); the sleep happens outside it.
        """
        with self._lock:
            now = self.clock()
            wait = max(
                self.requests.wait_for(1, now) if self.requests else 0.0,
                self.tokens.wait_for(tokens, now) if self.tokens else 0.0,
            )
            if wait > max_wait:
                raise RateLimitExceedsBudget(wait)
            if self.requests:
                self.requests.take(1, now)
            if self.tokens:
                self.tokens.take(tokens, now)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the provider reported the call's real usage."""
        if self.tokens and actual != estimated:
            with self._lock:
                self.tokens.settle(actual - estimated)


_LIMITERS: dict[tuple[str, float | None, float | None], ModelRateLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def limiter_for(
    model: str, requests_per_minute: float | None, tokens_per_minute: float | None
) -> ModelRateLimiter | None:
    """Return this process's limiter for a model and limits (None when no limit is set).

    Runs of the same model with the same limits share one limiter; a run that sets other
    limits gets its own, since two different answers to "what is this account's limit"
    cannot both be enforced.
    """
    if requests_per_minute is None and tokens_per_minute is None:
        return None
    key = (model, requests_per_minute, tokens_per_minute)
    with _REGISTRY_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = ModelRateLimiter(requests_per_minute, tokens_per_minute)
        return limiter
