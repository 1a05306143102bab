"""Tool resilience: retries for transient failures and a per-tool circuit breaker.

Retries use tenacity (exponential backoff with jitter), only for the exception types a
tool declares transient (`ToolSpec.transient`), at most `ToolSpec.retries` times, and
never past the run's remaining time budget. A timeout is transient only for idempotent
tools: a non-idempotent tool that timed out may already have had its side effect (an
email handed to the server, a sync function still running in its worker thread), so
running it again could do it twice.

The circuit breaker stops calling a tool that keeps failing: after
`ToolSpec.breaker_threshold` consecutive failed attempts it opens, and calls are answered
"temporarily unavailable" without running the tool; after `ToolSpec.breaker_cooldown`
seconds it half-opens and lets one trial call through, whose success closes it again and
whose failure reopens it. Only failures that say something about the tool's health count
(transient errors, timeouts, unexpected exceptions); an expected `ToolError` such as
"no such file" is a healthy answer and resets the count.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from tools.errors import ToolError

BreakerState = Literal["closed", "open", "half_open"]

DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_COOLDOWN_S = 30.0
# Backoff between attempts: 0.2 s, 0.4 s, 0.8 s ... (+ up to 0.2 s jitter), at most 5 s.
# A model is waiting on the answer, so the waits stay short; the budget bounds them too.
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0
BACKOFF_JITTER_S = 0.2

T = TypeVar("T")


class CircuitOpenError(Exception):
    """Raised instead of calling a tool whose circuit is open."""


@dataclass
class _Circuit:
    failures: int = 0
    state: BreakerState = "closed"
    opened_at: float = 0.0
    trial_in_flight: bool = False


@dataclass
class CircuitBreakers:
    """Circuit breakers for a set of tools, keyed by tool name.

    State changes are short and never span an await, so a plain lock makes them safe for
    runs on several event loops or threads of one process.
    """

    clock: Callable[[], float] = time.monotonic
    _circuits: dict[str, _Circuit] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def state(self, name: str, *, cooldown: float = DEFAULT_BREAKER_COOLDOWN_S) -> BreakerState:
        """Return the circuit's state as a caller would see it now."""
        with self._lock:
            circuit = self._circuits.get(name)
            if circuit is None:
                return "closed"
            if circuit.state == "open" and self.clock() - circuit.opened_at >= cooldown:
                return "half_open"
            return circuit.state

    def admit(self, name: str, *, cooldown: float = DEFAULT_BREAKER_COOLDOWN_S) -> bool:
        """Tell whether a call may run now; a half-open circuit admits one trial at a time."""
        with self._lock:
            circuit = self._circuits.setdefault(name, _Circuit())
            if circuit.state == "open":
                if self.clock() - circuit.opened_at < cooldown:
                    return False
                circuit.state = "half_open"
                circuit.trial_in_flight = False
            if circuit.state == "half_open":
                if circuit.trial_in_flight:
                    return False
                circuit.trial_in_flight = True
            return True

    def succeeded(self, name: str) -> None:
        """Record a healthy answer: the circuit closes and the failure count resets."""
        with self._lock:
            self._circuits[name] = _Circuit()

    def failed(self, name: str, *, threshold: int = DEFAULT_BREAKER_THRESHOLD) -> None:
        """Record a failed attempt; the threshold-th in a row (or a failed trial) opens it."""
        with self._lock:
            circuit = self._circuits.setdefault(name, _Circuit())
            circuit.failures += 1
            if circuit.state == "half_open" or circuit.failures >= threshold:
                circuit.state = "open"
                circuit.opened_at = self.clock()
            circuit.trial_in_flight = False

    def abandoned(self, name: str) -> None:
        """A call was cancelled before it said anything about the tool: free the trial slot."""
        with self._lock:
            circuit = self._circuits.get(name)
            if circuit is not None:
                circuit.trial_in_flight = False


@dataclass
class Outcome:
    """How a resilient call ended: its result or final exception, and what it took."""

    result: Any = None
    error: BaseException | None = None
    attempts: int = 0
    breaker: BreakerState = "closed"


async def call_resiliently(
    name: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    attempt_timeout: float,
    budget_s: float,
    transient: tuple[type[BaseException], ...],
    retries: int,
    idempotent: bool,
    breakers: CircuitBreakers,
    threshold: int = DEFAULT_BREAKER_THRESHOLD,
    cooldown: float = DEFAULT_BREAKER_COOLDOWN_S,
) -> Outcome:
    """Run `attempt()` with retries and the tool's circuit breaker.

    Each attempt gets the tool's timeout, cut to what is left of `budget_s`; tenacity
    stops before a backoff would pass the budget. Expected failures end up in
    `Outcome.error` (a `ToolError`, a declared transient exception, a timeout or
    `CircuitOpenError`); anything else is a bug and propagates.
    """
    deadline = time.monotonic() + budget_s

    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, TimeoutError) and not idempotent:
            return False
        # A circuit that opened meanwhile (this call's failures or another run's) ends it.
        return isinstance(exc, transient) and breakers.state(name, cooldown=cooldown) == "closed"

    async def one_attempt() -> T:
        if not breakers.admit(name, cooldown=cooldown):
            raise CircuitOpenError(name)
        left = deadline - time.monotonic()
        try:
            result = await asyncio.wait_for(
                attempt(), timeout=max(min(attempt_timeout, left), 0.001)
            )
        except asyncio.CancelledError:
            breakers.abandoned(name)
            raise
        except ToolError as exc:
            if isinstance(exc, transient):
                breakers.failed(name, threshold=threshold)
            else:
                breakers.succeeded(name)  # the tool answered; the failure is the request's
            raise
        except BaseException:
            breakers.failed(name, threshold=threshold)
            raise
        breakers.succeeded(name)
        return result

    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1) | stop_before_delay(max(budget_s, 0.0)),
        wait=wait_exponential(multiplier=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S)
        + wait_random(0, BACKOFF_JITTER_S),
        retry=retry_if_exception(retryable),
        reraise=True,
    )
    expected: tuple[type[BaseException], ...] = (
        ToolError,
        TimeoutError,
        CircuitOpenError,
        *transient,
    )
    outcome = Outcome()
    try:
        outcome.result = await retrying(one_attempt)
    except expected as exc:
        outcome.error = exc
    outcome.attempts = int(retrying.statistics.get("attempt_number", 1))
    if isinstance(outcome.error, CircuitOpenError):
        outcome.attempts -= 1  # the refused attempt never ran
    outcome.breaker = breakers.state(name, cooldown=cooldown)
    return outcome
