"""Per-node accounting shared by the nodes: steps and active time."""

from __future__ import annotations

import time
from typing import Any

from graph.state import Usage, add_usage


class NodeClock:
    """Measure one node execution; its time counts as active run time."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def usage(self, base: Usage | None, **delta: Any) -> Usage:
        """Return `base` usage with this node's step, time and `delta` added."""
        return add_usage(
            base,
            {"steps": 1, "active_seconds": time.perf_counter() - self.started, **delta},
        )
