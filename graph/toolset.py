"""The tools a CLI or server run gets: built-ins configured by the config file, plus user tools."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from graph.errors import ConfigError
from graph.settings import ConfigFile
from tools.calc import calculator_tool
from tools.email import smtp_email_tool
from tools.files import file_tools
from tools.http import http_fetch_tool
from tools.loader import load_tools
from tools.memory import memory_tools
from tools.registry import ToolSpec
from tools.sql import sql_query_tool


def _env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{what}: environment variable {name} is not set")
    return value


def build_toolset(workspace: Path, data_dir: Path, config: ConfigFile) -> list[ToolSpec]:
    """Return the built-in tools as the config sets them up, then the user's own tools.

    Secrets (SMTP password, SQL DSN) are read from the environment variables the config
    names, never from the config file itself.
    """
    from tools.builtin import outbox_email_tool

    files = file_tools(workspace)
    if not config.workspace_writable:
        files = [spec for spec in files if spec.tier == "read"]
    specs: list[ToolSpec] = [*files, calculator_tool(), *memory_tools()]
    http = config.http
    specs.append(
        http_fetch_tool(
            allow_hosts=http.allow_hosts,
            allow_private=http.allow_private,
            max_bytes=http.max_bytes,
            timeout=http.timeout,
        )
    )
    if config.email is None:
        specs.append(outbox_email_tool(data_dir / "outbox"))
    else:
        email = config.email
        specs.append(
            smtp_email_tool(
                host=email.host,
                port=email.port,
                sender=email.sender,
                timeout=email.timeout,
                use_starttls=email.starttls,
                username=email.username,
                password=_env(email.password_env, "email") if email.password_env else None,
            )
        )
    if config.sql is not None:
        specs.append(
            sql_query_tool(
                _env(config.sql.dsn_env, "sql"),
                row_cap=config.sql.row_cap,
                statement_timeout_ms=config.sql.statement_timeout_ms,
            )
        )
    specs += load_tools(config.tool_entries, reserved={spec.name for spec in specs})
    mcp = load_mcp_tools(config)
    clash = {spec.name for spec in specs} & {spec.name for spec in mcp}
    if clash:
        raise ConfigError(f"MCP tools clash with other tools: {', '.join(sorted(clash))}")
    return [*specs, *mcp]


def load_mcp_tools(config: ConfigFile) -> list[ToolSpec]:
    """List the tools of the config's MCP servers (tier `irreversible`; the policy may override).

    Listing is async; callers here are synchronous (start-up code, or `Warden.graph`
    inside a running loop), so it runs on a loop of its own, in a worker thread when a
    loop is already running. The adapters open a new session for every call, so the
    tools do not stay bound to that loop.
    """
    if not config.mcp_servers:
        return []
    from tools.mcp import mcp_tools

    def listing() -> list[ToolSpec]:
        return asyncio.run(mcp_tools(config.mcp_connections()))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return listing()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(listing).result()
