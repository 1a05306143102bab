"""Run tracing: LangSmith when configured, OpenTelemetry (OTLP/HTTP) as an option.

LangSmith is off unless tracing is requested (`LANGSMITH_TRACING=true`) AND there is
somewhere to send it (`LANGSMITH_API_KEY` or `LANGSMITH_ENDPOINT`). A request with
neither is switched off for Warden's runs, so an offline machine gets no warnings and
no retries against a service it cannot reach. When on, each run is one root trace
(LangGraph's graph run, its id the run id) with the node runs under it, carrying
metadata and tags (thread id, run id, model, budgets, tenant); the `halt` node's
summary span adds the halt reason and cost. Inputs and outputs pass through
`graph.redaction` (every kind) in the LangSmith client's `hide_inputs`/`hide_outputs`.

OpenTelemetry: with `WARDEN_OTEL_ENDPOINT` set (an OTLP/HTTP traces URL, e.g.
http://collector:4318/v1/traces), a callback handler turns the same runs into spans:
one per run, node, model call and tool call, with the same attributes and no inputs
or outputs (nothing to redact). It is a LangChain callback handler, not langsmith's
own OTel mode, because that mode needs LangSmith tracing itself switched on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tracers.langchain import LangChainTracer
from langsmith import Client
from langsmith.run_helpers import tracing_context

from graph.context import Context
from graph.redaction import redact_obj


def _jsonable(value: Any) -> Any:
    """Return a JSON-shaped copy of run inputs/outputs (messages and models as dicts)."""

    def default(obj: Any) -> Any:
        dump = getattr(obj, "model_dump", None)
        return dump(mode="json") if callable(dump) else str(obj)

    return json.loads(json.dumps(value, default=default))


def redact_run_data(data: dict[str, Any]) -> dict[str, Any]:
    """Redact secrets and personal data in a run's inputs or outputs before they leave."""
    redacted: dict[str, Any] = redact_obj(_jsonable(data))
    return redacted


def run_metadata(thread_id: str, run_id: str, ctx: Context) -> dict[str, Any]:
    """Return the metadata every traced run carries."""
    return {
        "warden_thread_id": thread_id,
        "warden_run_id": run_id,
        "warden_model": ctx.model,
        "warden_tenant": ctx.tenant,
        "warden_budgets": ctx.budgets(),
    }


def run_tags(ctx: Context) -> list[str]:
    """Return the tags every traced run carries."""
    return ["warden", f"model:{ctx.model}", f"tenant:{ctx.tenant}"]


async def mark_halt(report: Mapping[str, Any]) -> None:
    """Record the halt in the trace: a `warden.halt` span whose metadata has the outcome.

    Runs are traced as they start, so the root's metadata cannot learn how the run
    ended; this child span (inside the `halt` node) carries it. Without tracing it is
    a no-op runnable call.
    """
    usage = report.get("usage") or {}
    summary = {
        "warden_halt_reason": report.get("halt_reason"),
        "warden_cost_usd": usage.get("cost_usd", 0.0),
        "warden_model_calls": usage.get("model_calls", 0),
        "warden_tool_calls": usage.get("tool_calls", 0),
    }
    config: RunnableConfig = {
        "run_name": "warden.halt",
        "metadata": summary,
        "tags": [f"halt:{report.get('halt_reason')}"],
    }
    await RunnableLambda(_identity).ainvoke(summary, config)


async def _identity(value: dict[str, Any]) -> dict[str, Any]:
    # Async so the runnable does not hop to a worker thread to return its input.
    return value


@dataclass
class Tracing:
    """How this process traces runs; built once at the entry point from settings."""

    langsmith: bool = False
    """Send runs to LangSmith (through `client`)."""
    requested_offline: bool = False
    """Tracing was requested with nowhere to send it: keep it off for Warden's runs."""
    client: Client | None = None
    project: str | None = None
    otel_endpoint: str | None = None
    _otel: OtelHandler | None = field(default=None, init=False, repr=False)

    @classmethod
    def configure(
        cls,
        *,
        requested: bool,
        api_key: str | None,
        endpoint: str | None,
        project: str | None,
        otel_endpoint: str | None,
    ) -> Tracing:
        """Decide what to trace from the settings; LangSmith needs a key or an endpoint."""
        on = requested and bool(api_key or endpoint)
        client = (
            Client(
                api_url=endpoint,
                api_key=api_key,
                hide_inputs=redact_run_data,
                hide_outputs=redact_run_data,
            )
            if on
            else None
        )
        return cls(
            langsmith=on,
            requested_offline=requested and not on,
            client=client,
            project=project,
            otel_endpoint=otel_endpoint,
        )

    def run_config(self, config: RunnableConfig, thread_id: str, ctx: Context) -> RunnableConfig:
        """Return `config` for one run: its id, metadata, tags and tracing handlers."""
        run_id = uuid.uuid4()
        callbacks: list[BaseCallbackHandler] = []
        if self.langsmith:
            callbacks.append(LangChainTracer(client=self.client, project_name=self.project))
        if self.otel_endpoint:
            if self._otel is None:
                self._otel = OtelHandler(self.otel_endpoint)
            callbacks.append(self._otel)
        return {
            **config,
            "run_id": run_id,
            "run_name": "warden",
            "metadata": {**config.get("metadata", {}), **run_metadata(thread_id, str(run_id), ctx)},
            "tags": [*config.get("tags", []), *run_tags(ctx)],
            "callbacks": callbacks,
        }

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Run inside this: switches env-requested tracing off when it cannot be sent."""
        if self.requested_offline:
            with tracing_context(enabled=False):
                yield
        else:
            yield

    def flush(self) -> None:
        """Send what is buffered (the CLI exits right after a run)."""
        if self.client is not None:
            self.client.flush()
        if self._otel is not None:
            self._otel.flush()


class OtelHandler(BaseCallbackHandler):
    """Turn LangChain runs (graph, nodes, model and tool calls) into OpenTelemetry spans."""

    def __init__(self, endpoint: str) -> None:
        # Imported here: OpenTelemetry is the optional `otel` extra.
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import Status, StatusCode

        self._in_span = trace.set_span_in_context
        self._error = lambda exc: Status(StatusCode.ERROR, type(exc).__name__)
        self.provider = TracerProvider(resource=Resource.create({"service.name": "warden"}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self.tracer = self.provider.get_tracer("warden")
        self.spans: dict[UUID, Any] = {}

    def _start(
        self, kind: str, name: str, run_id: UUID, parent_run_id: UUID | None, metadata: Mapping[str, Any] | None
    ) -> None:
        parent = self.spans.get(parent_run_id) if parent_run_id else None
        context = self._in_span(parent) if parent is not None else None
        attributes: dict[str, Any] = {"warden.kind": kind, "langchain.run_id": str(run_id)}
        for key, value in (metadata or {}).items():
            if key.startswith("warden_") and value is not None:
                attributes[f"warden.{key.removeprefix('warden_')}"] = (
                    value if isinstance(value, str | int | float | bool) else json.dumps(value)
                )
            elif key == "langgraph_node":
                attributes["langgraph.node"] = str(value)
        self.spans[run_id] = self.tracer.start_span(name, context=context, attributes=attributes)

    def _end(self, run_id: UUID, error: BaseException | None = None) -> None:
        span = self.spans.pop(run_id, None)
        if span is None:
            return
        if error is not None:
            span.set_status(self._error(error))
        span.end()

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
                       name: str | None = None, **kwargs: Any) -> None:
        """Start a span for the graph run or a node."""
        self._start("chain", name or "chain", run_id, parent_run_id, metadata)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """End a graph or node span."""
        self._end(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """End a span with an error status (an approval interrupt ends a run this way)."""
        self._end(run_id, error)

    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
                            name: str | None = None, **kwargs: Any) -> None:
        """Start a span for a model call."""
        self._start("model", name or "model", run_id, parent_run_id, metadata)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """End a model call span."""
        self._end(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """End a model call span with an error status."""
        self._end(run_id, error)

    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
                      parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
                      name: str | None = None, **kwargs: Any) -> None:
        """Start a span for a tool call."""
        self._start("tool", name or (serialized or {}).get("name") or "tool", run_id, parent_run_id, metadata)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """End a tool call span."""
        self._end(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """End a tool call span with an error status."""
        self._end(run_id, error)

    def flush(self) -> None:
        """Export every finished span now."""
        self.provider.force_flush()
