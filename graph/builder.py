"""Assemble the Warden graph: five nodes, budget- and loop-aware routing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from graph.audit import audited
from graph.context import Context, run_context, with_policy
from graph.logs import logged
from graph.metrics import observed
from graph.models import make_model_factory
from graph.routing import route_after_approve, route_after_observe, route_after_plan
from graph.state import InputState, State
from nodes.act import make_act_node
from nodes.approve import make_approve_node
from nodes.cancellable import EXIT_NODE, cancellable
from nodes.context_window import forgets_history_on_exit
from nodes.halt import make_halt_node
from nodes.observe import observe
from nodes.plan import ModelFactory, make_plan_node
from tools.registry import ToolRegistry, ToolSpec

ToolLike = ToolSpec | BaseTool | Callable[..., Any]


def build_graph(
    *,
    model: BaseChatModel | None = None,
    tools: ToolRegistry | Iterable[ToolLike] = (),
    model_factory: ModelFactory | None = None,
    policy: Mapping[str, Any] | None = None,
) -> StateGraph[State, Context, InputState, State]:
    """Return the uncompiled Warden graph.

    `model` is used unless a run's context names another (`Context.model`), which
    `model_factory` resolves (default: `scripted:PATH` or `init_chat_model`). Budgets
    and loop thresholds come from the run's `Context`. `policy` pins the approval policy
    (Context policy fields, e.g. from a policy-file profile): a run's context cannot
    loosen it, which matters when API callers send the context. Without it, the run's
    context decides.
    """
    if policy is not None:
        with_policy(Context(), policy)  # refuse unknown or invalid fields at build time
    registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry.of(tools)
    tiers = registry.tiers()
    builder = StateGraph(State, context_schema=Context, input_schema=InputState)
    # Every node, innermost first: honours a pending `warden cancel` at its boundary
    # (nodes.cancellable); turns its state update, a cancelled one included, into
    # hash-chained audit events (graph.audit); logs one line (`logged`); and counts
    # into Prometheus metrics with its latency (`observed`). A run leaving the graph,
    # through `halt` or by an exception from any node (an approval pause, a cancelled
    # task, an unhandled error), drops its cached history grouping
    # (`forgets_history_on_exit`).
    nodes: dict[str, Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]] = {
        "plan": make_plan_node(
            model=model,
            model_factory=model_factory or make_model_factory(),
            tools=registry,
            locked_policy=policy,
        ),
        "approve": make_approve_node(registry),
        "act": make_act_node(registry),
        "observe": observe,
        "halt": make_halt_node(registry),
    }
    for name, node in nodes.items():
        inner = forgets_history_on_exit(cancellable(name, node), ends_run=name == EXIT_NODE)
        wrapped = observed(name, logged(name, audited(name, inner, tiers)))
        # LangGraph's add_node overloads cannot see through a Callable type.
        builder.add_node(name, wrapped)  # type: ignore[call-overload]

    # Async on purpose: LangGraph runs a sync router in a worker thread (one hop per
    # step). These check the latest turn and the usage counters, work far cheaper on
    # the event loop than the hop (tests/graph/test_event_loop.py).
    async def after_plan(
        state: State, runtime: Runtime[Context]
    ) -> Literal["act", "approve", "halt"]:
        return route_after_plan(state, run_context(state, runtime.context), tiers)

    async def after_approve(state: State, runtime: Runtime[Context]) -> Literal["act", "plan", "halt"]:
        return route_after_approve(state, run_context(state, runtime.context))

    async def after_observe(
        state: State, runtime: Runtime[Context]
    ) -> Literal["plan", "approve", "halt"]:
        return route_after_observe(state, run_context(state, runtime.context))

    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", after_plan)
    builder.add_conditional_edges("approve", after_approve)
    builder.add_edge("act", "observe")
    builder.add_conditional_edges("observe", after_observe)
    builder.add_edge("halt", END)
    return builder


def compile_graph(
    builder: StateGraph[State, Context, InputState, State],
    checkpointer: BaseCheckpointSaver[Any] | None,
) -> CompiledStateGraph[State, Context, InputState, State]:
    """Compile a Warden graph with a checkpointer (None for the LangGraph server)."""
    return builder.compile(checkpointer=checkpointer, name="warden")
