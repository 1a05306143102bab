"""Per-node accounting shared by the nodes: steps and active time."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from langgraph.config import get_config

from graph.state import Usage, add_usage


def current_node() -> str | None:
    """Return the name of the graph node being executed, or None outside a graph run."""
    try:
        return str(get_config()["metadata"]["langgraph_node"])
    except (RuntimeError, KeyError):  # called directly, as unit tests of a node do
        return None


def run_profile(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Return where a run's time and money went: per node, model vs tools, per model."""
    return {
        "active_seconds": round(float(usage.get("active_seconds", 0.0)), 6),
        "node_seconds": {k: round(v, 6) for k, v in (usage.get("node_seconds") or {}).items()},
        "model_seconds": round(float(usage.get("model_seconds", 0.0)), 6),
        "tool_seconds": round(float(usage.get("tool_seconds", 0.0)), 6),
        "by_model": dict(usage.get("by_model") or {}),
    }


class NodeClock:
    """Measure one node execution; its time counts as active run time, per node too."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.node = current_node()

    def delta(self, **delta: Any) -> dict[str, Any]:
        """Return this node's step and time so far, with `delta`: what it adds to usage."""
        elapsed = time.perf_counter() - self.started
        timing: dict[str, Any] = {"active_seconds": elapsed}
        if self.node is not None:
            timing["node_seconds"] = {self.node: elapsed}
        return {"steps": 1, **timing, **delta}

    def usage(self, base: Usage | None, **delta: Any) -> tuple[Usage, dict[str, Any]]:
        """Return `base` usage with this node's step, time and `delta` added, and the
        delta itself, which the node writes to the `usage` channel."""
        added = self.delta(**delta)
        return add_usage(base, added), added
