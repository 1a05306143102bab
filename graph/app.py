"""Server entry for `langgraph dev` / LangGraph Studio / the LangGraph server.

`langgraph.json` points at `graph` (compiled WITHOUT a checkpointer: the server owns
persistence) and at `checkpointer`, which yields Warden's Postgres saver. Environment
variables are read here, once, at the entry point.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from checkpoints.saver import open_saver, resolve_database_url
from graph.builder import build_graph, compile_graph
from graph.context import MAX_STEPS_CEILING, recursion_limit_for
from graph.models import make_model_factory
from graph.settings import load_settings
from tools.builtin import default_tools

_settings = load_settings()
_factory = make_model_factory(
    base_url=_settings.openai_base_url, api_key=_settings.openai_api_key
)
_workspace = Path(os.environ.get("WARDEN_WORKSPACE") or Path.cwd()).resolve()

# The server sets no recursion limit per run, so it is derived from the largest step
# budget a run may ask for; the step budget itself always stops a run first.
graph = compile_graph(
    build_graph(
        model=_factory(_settings.model) if _settings.model else None,
        tools=default_tools(_workspace, _settings.data_dir / "outbox"),
        model_factory=_factory,
    ),
    checkpointer=None,
).with_config(recursion_limit=recursion_limit_for(MAX_STEPS_CEILING))


@asynccontextmanager
async def checkpointer() -> AsyncIterator[AsyncPostgresSaver]:
    """Yield Warden's Postgres saver for the LangGraph server (migrating it first)."""
    url, _ = await asyncio.to_thread(
        resolve_database_url, _settings.database_url, _settings.data_dir
    )
    async with open_saver(
        url, auto_migrate=True, prepare_threshold=_settings.prepare_threshold
    ) as saver:
        yield saver
