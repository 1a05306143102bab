"""Custom HTTP routes for the LangGraph server (`langgraph.json` → `http.app`).

langgraph-api mounts this Starlette app beside its own API, in the process that runs
the graph, so `/metrics` shows the counts of the runs that server executed.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import graph.metrics  # noqa: F401  registers Warden's metric families on REGISTRY


async def metrics(_: Request) -> Response:
    """Return this process's Prometheus metrics in the text exposition format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


app = Starlette(routes=[Route("/metrics", metrics)])
