"""Embedding helper: compile the Warden graph with a Postgres saver in one call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.graph.state import CompiledStateGraph

from checkpoints.saver import open_saver, resolve_database_url
from graph.builder import ToolLike, build_graph, compile_graph
from graph.settings import Settings
from tools.registry import ToolRegistry


@asynccontextmanager
async def warden_graph(
    database_url: str | None = None,
    *,
    model: BaseChatModel | None = None,
    tools: ToolRegistry | Iterable[ToolLike] = (),
    data_dir: Path | None = None,
    migrate: bool = True,
    prepare_threshold: int | None = 5,
) -> AsyncIterator[CompiledStateGraph[Any, Any, Any, Any]]:
    """Yield the compiled graph on a Postgres saver (embedded when no URL is given).

    Run it with `context=Context(...)` for budgets and policy, and a `thread_id`.
    """
    url, _ = await asyncio.to_thread(
        resolve_database_url, database_url, data_dir or Settings().data_dir
    )
    async with open_saver(url, auto_migrate=migrate, prepare_threshold=prepare_threshold) as saver:
        yield compile_graph(build_graph(model=model, tools=tools), saver)
