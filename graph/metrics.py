"""Prometheus metrics for Warden runs, counted by a composable node wrapper.

`observed(name, node)` wraps a graph node: it times the node (step latency) and
derives every count from the node's *update* (and the state it started from), so the
nodes themselves carry no metrics code and other wrappers (audit, retention) compose
with it freely.

The metrics live in one `WardenMetrics` per process (`METRICS`, on `WARDEN_REGISTRY`,
which is also forwarded into prometheus_client's default registry): a Prometheus
scrape reads one process, so process-wide counters are the model prometheus_client is
built for. An embedding app exposes them with any prometheus_client server or ASGI
app; tests that want isolation pass their own `WardenMetrics(CollectorRegistry())`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from langchain_core.messages import ToolMessage
from langgraph.errors import GraphInterrupt
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Metric
from prometheus_client.registry import Collector

from graph.state import usage_spent

S = TypeVar("S")
R = TypeVar("R")

STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
PROMPT_BUCKETS = (256, 1024, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 1048576)


def outcome_of_halt(reason: str) -> str:
    """Return the run outcome (`completed`, `error` or `halted`) for a halt reason."""
    return reason if reason in ("completed", "error") else "halted"


class WardenMetrics:
    """The Warden metric families, on one Prometheus registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.runs = Counter("warden_runs", "Runs ended, by outcome.", ["outcome"], registry=registry)
        self.halts = Counter("warden_halts", "Runs ended, by halt reason.", ["reason"], registry=registry)
        self.model_calls = Counter(
            "warden_model_calls", "Model calls, by model.", ["model"], registry=registry
        )
        self.tokens = Counter(
            "warden_tokens", "Tokens, by model and kind (input/output).", ["model", "kind"],
            registry=registry,
        )
        self.cost = Counter("warden_cost_usd", "Cost in USD, by model.", ["model"], registry=registry)
        self.tool_calls = Counter(
            "warden_tool_calls",
            "Tool results, by tool and status (success, error; refused: by policy, loop, reviewer or halt).",
            ["tool", "status"],
            registry=registry,
        )
        self.approvals_requested = Counter(
            "warden_approvals_requested", "Tool calls put to a human, by tool.", ["tool"],
            registry=registry,
        )
        self.approvals_decided = Counter(
            "warden_approvals_decided", "Human decisions, by decision.", ["decision"],
            registry=registry,
        )
        self.loops = Counter(
            "warden_loop_detections",
            "Loop strikes recorded (a run then halted for a loop counts in warden_halts{reason=loop}).",
            registry=registry,
        )
        self.flags = Counter(
            "warden_injection_flags", "Injection flags, by source (task or tool).", ["source"],
            registry=registry,
        )
        self.step_seconds = Histogram(
            "warden_step_seconds", "Node execution time, by node.", ["node"],
            buckets=STEP_BUCKETS, registry=registry,
        )
        self.tool_seconds = Histogram(
            "warden_tool_seconds", "Tool execution time, by tool.", ["tool"],
            buckets=STEP_BUCKETS, registry=registry,
        )

        self.prompt_tokens = Histogram(
            "warden_prompt_tokens", "Size of each prompt Warden assembled for a model call.",
            buckets=PROMPT_BUCKETS, registry=registry,
        )

    def record(self, node: str, state: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        """Count what one node did, from the state it started from and its update.

        Label values are passed by position: prometheus_client's keyword form costs a
        validation per call, and this runs after every node.
        """
        # A node writes what it added to usage (a new run: its counters from zero), so
        # per-model totals are counted from the write alone; only `plan` adds to them.
        spent = usage_spent(update.get("usage"))
        if spent.get("by_model"):
            self._count_models(spent["by_model"])
            if spent.get("model_calls", 0) > 0:
                self.prompt_tokens.observe(spent.get("last_prompt_tokens", 0))
        for message in _tool_messages(update.get("messages")):
            meta = message.response_metadata.get("warden", {})
            status = "refused" if meta.get("refused") else message.status
            tool = message.name or "unknown"
            self.tool_calls.labels(tool, status).inc()
            if not meta.get("refused") and "duration_ms" in meta:
                self.tool_seconds.labels(tool).observe(meta["duration_ms"] / 1000)
        for record in update.get("approvals") or []:
            self.approvals_decided.labels(record["decision"]).inc()
        loop = update.get("loop")
        if isinstance(loop, Mapping):
            strikes = int((state.get("loop") or {}).get("strikes", 0))
            if loop.get("strikes", 0) > strikes:
                self.loops.inc(loop["strikes"] - strikes)
        for flag in update.get("flags") or []:
            self.flags.labels(str(flag.get("source", "unknown"))).inc()
        reason = update.get("halt_reason")
        if node == "halt" and reason:
            self.halts.labels(reason).inc()
            self.runs.labels(outcome_of_halt(reason)).inc()

    def record_interrupt(self, interrupt: GraphInterrupt) -> None:
        """Count the tool calls an approval request puts to a human."""
        for item in interrupt.args[0] if interrupt.args else ():
            value = getattr(item, "value", None)
            for action in (value or {}).get("action_requests", []) if isinstance(value, dict) else []:
                self.approvals_requested.labels(str(action.get("name", "unknown"))).inc()

    def _count_models(self, added: Mapping[str, Mapping[str, float]]) -> None:
        for model, totals in added.items():
            calls = totals.get("calls", 0)
            if calls <= 0:
                continue
            self.model_calls.labels(model).inc(calls)
            for kind in ("input", "output"):
                self.tokens.labels(model, kind).inc(max(totals.get(f"{kind}_tokens", 0), 0))
            self.cost.labels(model).inc(max(totals.get("cost_usd", 0.0), 0.0))


def _tool_messages(messages: Any) -> list[ToolMessage]:
    if not isinstance(messages, Sequence):
        return []
    return [m for m in messages if isinstance(m, ToolMessage)]


WARDEN_REGISTRY = CollectorRegistry()
"""Warden's metric families alone (served at /warden/metrics by graph/http_app.py)."""
METRICS = WardenMetrics(WARDEN_REGISTRY)
"""This process's metrics."""


class _Forward(Collector):
    """Expose Warden's registry through the default one, which every /metrics serves."""

    def collect(self) -> Iterable[Metric]:
        """Yield Warden's metric families."""
        return WARDEN_REGISTRY.collect()


REGISTRY.register(_Forward())


def observed(
    name: str,
    node: Callable[[S, R], Awaitable[Any]],
    metrics: WardenMetrics | None = None,
) -> Callable[[S, R], Awaitable[Any]]:
    """Wrap an `async (state, runtime)` node so that its work is counted and timed."""
    sink = metrics or METRICS

    async def wrapped(state: S, runtime: R) -> Any:
        started = time.perf_counter()
        try:
            update = await node(state, runtime)
        except GraphInterrupt as exc:
            sink.record_interrupt(exc)
            raise
        finally:
            sink.step_seconds.labels(name).observe(time.perf_counter() - started)
        if isinstance(update, Mapping) and isinstance(state, Mapping):
            sink.record(name, state, update)
        return update

    wrapped.__name__ = name
    wrapped.__doc__ = node.__doc__
    return wrapped
