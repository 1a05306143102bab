"""Honour `warden cancel` at every node boundary, from inside the graph.

The check lives in the graph, not in the CLI, so a run started by the CLI, by an
embedding app or by the LangGraph server stops the same way. Each wrapped node asks
Postgres once whether its thread has a pending cancel request; without Warden's pool
(an in-memory checkpointer) there is nothing to ask and the node runs as is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.config import get_config
from langgraph.runtime import Runtime

from checkpoints.cancels import consume_cancel, pending_cancel
from checkpoints.db import pool_of
from graph.context import Context
from graph.state import State, StopSignal

Node = Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]

EXIT_NODE = "halt"


def cancellable(name: str, node: Node) -> Node:
    """Wrap a node so a pending cancel request skips its work and stops the run.

    A skipped node returns only a `cancelled` stop signal, which every router sends
    to `halt`. `halt` itself always runs (it is how a run ends and is reported) and
    then consumes the request, so it is honoured once and never outlives the run.
    """

    async def wrapped(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        config = get_config()
        pool = pool_of(config)
        thread_id = (config.get("configurable") or {}).get("thread_id")
        if pool is None or thread_id is None:
            return await node(state, runtime)
        if name == EXIT_NODE:
            result = await node(state, runtime)
            await consume_cancel(pool, str(thread_id))
            return result
        stop = state.get("stop")
        if stop is not None and stop["reason"] == "cancelled":
            return {}  # an earlier node honoured the request: keep its record, skip on to halt
        request = await pending_cancel(pool, str(thread_id))
        if request is None:
            return await node(state, runtime)
        return {
            "stop": StopSignal(
                reason="cancelled",
                detail=f"cancelled by {request['requested_by']} before {name}: {request['reason']}",
            )
        }

    wrapped.__name__ = wrapped.__qualname__ = name
    wrapped.__doc__ = node.__doc__
    return wrapped
