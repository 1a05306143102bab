"""Tools from MCP servers, through langchain-mcp-adapters (the optional extra `warden[mcp]`).

Each MCP tool becomes a ToolSpec like any other, so the same policy applies to it:

- tier `irreversible` (a human approves every call) unless the policy's tier mapping
  names the tool; scope `mcp:<server>`;
- arguments are checked against the server's JSON schema before the call, with unknown
  keys refused (`additionalProperties: false`, the MCP counterpart of `extra="forbid"`)
  and a cap on their size;
- an error the server reports is an expected failure (`ToolError`: an error ToolMessage,
  the run goes on); a server that cannot be reached is a `TransientToolError`;
- the output is text, capped in size.

The server's tool list is read once, at start-up; every call opens its own session.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, ConfigDict, create_model, model_validator

from graph.errors import ConfigError
from graph.policy import TIERS, Tier
from tools.errors import ToolError, TransientToolError
from tools.loader import TOOL_NAME
from tools.registry import ToolSpec

DEFAULT_TIER: Tier = "irreversible"
MAX_ARGS_CHARS = 100_000
MAX_OUTPUT_CHARS = 100_000
MAX_DESCRIPTION_CHARS = 4_000
INSTALL_HINT = (
    "MCP tools need the optional extra: pip install 'warden[mcp]' (langchain-mcp-adapters)"
)


def _load_mcp_tools() -> Callable[..., Any]:
    """Import the adapters, with an install hint when the extra is missing."""
    try:
        from langchain_mcp_adapters.tools import load_mcp_tools
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT}; import failed: {exc}") from exc
    return load_mcp_tools


def _one_line(text: object, limit: int = 2_000) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _leaf(exc: BaseException) -> BaseException:
    """Return the first underlying error of an exception group (anyio wraps them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def schema_model(name: str, schema: Mapping[str, Any]) -> tuple[type[BaseModel], dict[str, Any]]:
    """Return a validating model for an MCP tool's JSON schema, and the schema it enforces.

    The model checks arguments with `jsonschema` (unknown keys refused, size capped) and
    reports the server's schema as its own JSON schema, so the model and reviewers see
    exactly what the server declared. ValueError for a schema that is not valid.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError, best_match
    from jsonschema.validators import validator_for

    strict: dict[str, Any] = {**copy.deepcopy(dict(schema)), "additionalProperties": False}
    strict.setdefault("type", "object")
    strict.setdefault("properties", {})
    if strict["type"] != "object":
        raise ValueError(f"input schema of {name!r} is not an object schema")
    cls = validator_for(strict, default=Draft202012Validator)
    try:
        cls.check_schema(strict)
    except SchemaError as exc:
        raise ValueError(f"input schema of {name!r} is invalid: {_one_line(exc.message)}") from None
    validator = cls(strict)

    def show_server_schema(out: dict[str, Any]) -> None:
        out.clear()
        out.update(copy.deepcopy(strict))

    def check(cls: type[BaseModel], data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("arguments must be a JSON object")
        size = len(json.dumps(data, default=str))
        if size > MAX_ARGS_CHARS:
            raise ValueError(f"arguments are {size} characters; the limit is {MAX_ARGS_CHARS}")
        error = best_match(validator.iter_errors(data))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path)
            message = _one_line(error.message, 500)
            raise ValueError(f"{where}: {message}" if where else message)
        return data

    model = create_model(
        f"{name}_args",
        # Keys are checked by the JSON schema, which refuses unknown ones.
        __config__=ConfigDict(extra="allow", json_schema_extra=show_server_schema),
        __validators__={"check": model_validator(mode="before")(check)},  # type: ignore[dict-item]
    )
    return model, strict


@dataclass(frozen=True, kw_only=True)
class McpToolSpec(ToolSpec):
    """A ToolSpec for an MCP tool: its arguments are validated by the server's JSON schema."""

    server: str
    validator: type[BaseModel]

    @property
    def args_model(self) -> type[BaseModel] | None:
        """Return the model that validates this tool's arguments against the server's schema."""
        return self.validator


def render_content(content: Any) -> str:
    """Turn MCP tool output (text, or LangChain content blocks) into capped text."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list | tuple):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict):
                kind = block.get("type", "content")
                mime = block.get("mime_type") or block.get("mimeType") or "unknown type"
                parts.append(f"[{kind} content ({mime}) omitted]")
            else:
                parts.append(str(block))
        text = "\n".join(parts)
    else:
        text = json.dumps(content, ensure_ascii=False, default=str)
    if not text.strip():
        return "(no output)"
    if len(text) > MAX_OUTPUT_CHARS:
        cut = len(text) - MAX_OUTPUT_CHARS
        text = f"{text[:MAX_OUTPUT_CHARS]}\n[output truncated: {cut} more characters]"
    return text


def _wrap(server: str, base: BaseTool, *, name: str, tier: Tier, timeout: float) -> McpToolSpec:
    raw_schema = base.args_schema if isinstance(base.args_schema, Mapping) else None
    if raw_schema is None:
        # Older adapters may hand over a pydantic model; its JSON schema is the same contract.
        model = base.args_schema
        raw_schema = (
            model.model_json_schema()
            if isinstance(model, type) and issubclass(model, BaseModel)
            else {"type": "object", "properties": {}}
        )
    try:
        validator, strict = schema_model(name, raw_schema)
    except ValueError as exc:
        raise ConfigError(f"MCP server {server!r}: {exc}") from None
    description = (
        base.description or ""
    ).strip() or f"Tool {base.name!r} of MCP server {server!r}."
    if len(description) > MAX_DESCRIPTION_CHARS:
        description = description[:MAX_DESCRIPTION_CHARS] + "..."

    async def call(**arguments: Any) -> str:
        from mcp.shared.exceptions import McpError
        from mcp.types import CONNECTION_CLOSED

        try:
            content = await base.ainvoke(arguments)
        except ToolException as exc:  # the server ran the tool and reported an error
            raise ToolError(f"MCP server {server!r}: {_one_line(exc)}") from None
        except TimeoutError:
            raise
        except Exception as exc:
            leaf = _leaf(exc)
            if isinstance(leaf, McpError) and leaf.error.code != CONNECTION_CLOSED:
                # The server answered, refusing the request: retrying will not help.
                raise ToolError(f"MCP server {server!r}: {_one_line(leaf)}") from None
            raise TransientToolError(
                f"MCP server {server!r} is unavailable: {type(leaf).__name__}: {_one_line(leaf)}"
            ) from None
        return render_content(content)

    tool = StructuredTool(
        name=name,
        description=description,
        args_schema=strict,
        coroutine=call,
        metadata={**(base.metadata or {}), "mcp_server": server, "mcp_tool": base.name},
    )
    return McpToolSpec(
        tool=tool,
        tier=tier,
        scopes=frozenset({f"mcp:{server}"}),
        timeout=timeout,
        idempotent=False,
        server=server,
        validator=validator,
    )


async def _list_server(
    name: str, connection: Mapping[str, Any], list_timeout: float
) -> list[BaseTool]:
    load = _load_mcp_tools()
    kwargs: dict[str, Any] = {"connection": dict(connection), "server_name": name}
    if "handle_tool_errors" in inspect.signature(load).parameters:
        kwargs["handle_tool_errors"] = False  # server errors must raise, not look like output
    try:
        tools: list[BaseTool] = await asyncio.wait_for(load(None, **kwargs), list_timeout)
    except TimeoutError:
        raise ConfigError(
            f"MCP server {name!r} did not list its tools within {list_timeout:g}s"
        ) from None
    except Exception as exc:
        leaf = _leaf(exc)
        raise ConfigError(
            f"MCP server {name!r}: cannot list its tools: {type(leaf).__name__}: {_one_line(leaf)}"
        ) from None
    return tools


async def mcp_tools(
    servers: Mapping[str, Mapping[str, Any]],
    *,
    tiers: Mapping[str, str] | None = None,
    call_timeout: float = 30.0,
    prefix: bool = False,
    list_timeout: float = 30.0,
) -> list[ToolSpec]:
    """Load the tools of MCP servers as ToolSpecs.

    `servers` maps a server name to a langchain-mcp-adapters connection, e.g.
    `{"files": {"transport": "stdio", "command": "python", "args": ["server.py"]}}`.
    `tiers` (the policy's tier overrides) sets a tool's tier; any other MCP tool is
    `irreversible`. `call_timeout` is each tool's timeout in seconds. With `prefix`, tools
    are named `<server>_<tool>`. ConfigError for an unreachable server, an invalid tool
    name or schema, duplicate names or an unknown tier; ImportError when the `mcp` extra
    is not installed.
    """
    overrides: dict[str, Tier] = {}
    for tool_name, value in (tiers or {}).items():
        if value not in TIERS:
            raise ConfigError(
                f"tier for MCP tool {tool_name!r}: unknown tier {value!r}; "
                f"expected one of {', '.join(TIERS)}"
            )
        overrides[tool_name] = value  # type: ignore[assignment]  # checked just above
    for server in servers:
        if not TOOL_NAME.match(server):
            raise ConfigError(
                f"MCP server name {server!r} is not valid: use letters, digits, '_' or '-'"
            )
    names = list(servers)
    listed = await asyncio.gather(
        *(_list_server(n, servers[n], list_timeout) for n in names), return_exceptions=True
    )
    specs: list[ToolSpec] = []
    seen: dict[str, str] = {}
    for server, result in zip(names, listed, strict=True):
        if isinstance(result, BaseException):
            raise result
        for base in result:
            name = f"{server}_{base.name}" if prefix else base.name
            if not TOOL_NAME.match(name):
                raise ConfigError(
                    f"MCP server {server!r}: tool name {name!r} is not valid: "
                    "use 1-64 letters, digits, '_' or '-'"
                )
            if name in seen:
                raise ConfigError(
                    f"MCP tool name {name!r} is offered by servers {seen[name]!r} and "
                    f"{server!r}; load them with prefix=True"
                )
            seen[name] = server
            tier = overrides.get(name, DEFAULT_TIER)
            specs.append(_wrap(server, base, name=name, tier=tier, timeout=call_timeout))
    return specs
