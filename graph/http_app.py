"""Custom HTTP routes for the LangGraph server (`langgraph.json` → `http.app`).

langgraph-api mounts this Starlette app beside its own API, in the process that runs
the graph. It reserves `/metrics` for itself (an "unshadowable" route serving
prometheus_client's default registry, into which Warden's metrics are forwarded, so
Warden's counts appear there too, next to the server's own); this app serves
Warden's families alone at `/warden/metrics`.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from graph.metrics import WARDEN_REGISTRY


async def warden_metrics(_: Request) -> Response:
    """Return Warden's Prometheus metrics for this server process."""
    return Response(generate_latest(WARDEN_REGISTRY), media_type=CONTENT_TYPE_LATEST)


app = Starlette(routes=[Route("/warden/metrics", warden_metrics)])
