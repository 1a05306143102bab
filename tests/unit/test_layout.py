"""The project's packages are the ones in this repository, and layers point one way."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["graph", "nodes", "tools", "checkpoints"])
def test_top_level_packages_come_from_this_repository(package: str) -> None:
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().parent == REPO / package


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("nodes.plan", "graph.builder"),
        ("nodes.act", "graph.cli"),
        ("nodes.approve", "graph.runtime"),
        ("tools.builtin", "nodes"),
        ("checkpoints.saver", "nodes"),
        ("graph.state", "nodes"),
        ("graph.routing", "tools"),
        ("nodes.halt", "graph.runtime"),
        ("graph.metrics", "nodes"),
        ("graph.logs", "nodes"),
        ("graph.tracing", "nodes"),
    ],
)
def test_lower_layers_do_not_import_the_assembly(module: str, forbidden: str) -> None:
    code = (
        f"import sys, {module}; "
        f"bad = [m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden!r} + '.')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"{module} pulled in {result.stdout.strip()}"


def test_server_recursion_limit_matches_the_largest_step_budget() -> None:
    import json

    from graph.context import MAX_STEPS_CEILING, recursion_limit_for

    config = json.loads((REPO / "langgraph.json").read_text())
    assert int(config["env"]["LANGGRAPH_DEFAULT_RECURSION_LIMIT"]) == recursion_limit_for(
        MAX_STEPS_CEILING
    )
    assert config["graphs"]["warden"] == "./graph/app.py:graph"
    assert config["checkpointer"]["path"] == "./graph/app.py:checkpointer"


def test_server_graph_is_compiled_without_a_checkpointer() -> None:
    from graph.app import graph

    # `langgraph dev` refuses graphs that bring their own checkpointer.
    assert graph.checkpointer is None
    assert set(graph.nodes) >= {"plan", "approve", "act", "observe", "halt"}
