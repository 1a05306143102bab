"""Server entry for `langgraph dev` / LangGraph Studio / the LangGraph server.

`langgraph.json` points at `graph` (compiled WITHOUT a checkpointer: the server owns
persistence) and at `checkpointer`, which yields Warden's Postgres saver. Environment
variables are read here, once, at the entry point: `WARDEN_CONFIG` names the same TOML
config file the CLI takes (tools, policy file and profile, email/SQL/HTTP settings).

The approval policy is pinned at build time from that config: API callers choose
budgets through the run's context, but cannot loosen the policy with it.
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
from graph.logs import configure_logging
from graph.models import make_model_factory
from graph.settings import ConfigFile, load_config_file, load_settings, operator_policy
from graph.toolset import build_toolset

_settings = load_settings()
configure_logging(_settings.log_format, _settings.log_level)
_config_path = os.environ.get("WARDEN_CONFIG")
_config = load_config_file(Path(_config_path)) if _config_path else ConfigFile()
_factory = make_model_factory(
    base_url=_settings.openai_base_url or _config.base_url, api_key=_settings.openai_api_key
)
_workspace = Path(
    os.environ.get("WARDEN_WORKSPACE") or _config.workspace or Path.cwd()
).resolve()
_tools = build_toolset(_workspace, _settings.data_dir, _config)
_model = _settings.model or _config.model

# The server sets no recursion limit per run, so it is derived from the largest step
# budget a run may ask for; the step budget itself always stops a run first.
graph = compile_graph(
    build_graph(
        model=_factory(_model) if _model else None,
        tools=_tools,
        model_factory=_factory,
        policy=operator_policy(_config, [t.name for t in _tools]),
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
