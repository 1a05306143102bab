"""Warden's assembly layer: the graph builder, runtime API, CLI and server entry.

The shared types (`graph.state`, `graph.context`, `graph.policy`, ...) sit at the
bottom and import nothing of the project; `nodes`, `tools` and `checkpoints` import
them. The assembly names below are loaded lazily, so importing a bottom module never
pulls in the builder (and the layers never import each other in a circle).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graph.builder import build_graph, compile_graph
    from graph.context import Context
    from graph.embed import warden_graph
    from graph.state import State

__all__ = ["Context", "State", "build_graph", "compile_graph", "warden_graph"]

_EXPORTS = {
    "build_graph": "graph.builder",
    "compile_graph": "graph.builder",
    "warden_graph": "graph.embed",
    "Context": "graph.context",
    "State": "graph.state",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'graph' has no attribute {name!r}")
