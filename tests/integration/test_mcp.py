"""MCP tools (tools/mcp.py) from a real FastMCP server over stdio, through the real graph.

The server is a small script written to tmp_path and started by langchain-mcp-adapters
as a subprocess for every listing and call. Its `reserve_units` tool appends to a ledger
file, so whether a call really reached the server is checked on disk.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.types import Command
from pydantic import ValidationError

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.errors import ConfigError
from graph.hitl import first_error
from graph.scripted import ScriptedChatModel
from graph.settings import load_config_file
from tests.conftest import call, turn
from tools.errors import ToolError, TransientToolError
from tools.mcp import McpToolSpec, mcp_tools
from tools.registry import ToolRegistry

SERVER = '''
import json
import sys
from typing import Annotated

from mcp.server.fastmcp import FastMCP
from pydantic import Field

LEDGER = sys.argv[1]
mcp = FastMCP("inventory", log_level="WARNING")


@mcp.tool()
def stock_level(
    sku: Annotated[str, Field(max_length=20, description="Item SKU.")], warehouse: str = "main"
) -> str:
    """Return how many units of an item are in stock."""
    return f"{sku}@{warehouse}: 42 units"


@mcp.tool()
def reserve_units(sku: str, units: int) -> dict:
    """Reserve units of an item for an order."""
    if units > 100:
        raise ValueError("cannot reserve more than 100 units")
    with open(LEDGER, "a") as fh:
        fh.write(json.dumps({"sku": sku, "units": units}) + "\\n")
    return {"sku": sku, "reserved": units}


if __name__ == "__main__":
    mcp.run()
'''


class Inventory:
    """The server script, its stdio connection and its ledger."""

    def __init__(self, root: Path) -> None:
        self.script = root / "inventory_server.py"
        self.script.write_text(SERVER)
        self.ledger = root / "ledger.jsonl"
        self.connection: dict[str, Any] = {
            "transport": "stdio",
            "command": sys.executable,
            "args": [str(self.script), str(self.ledger)],
        }

    def reservations(self) -> list[dict[str, Any]]:
        """Return what the server has written to its ledger."""
        if not self.ledger.exists():
            return []
        return [json.loads(line) for line in self.ledger.read_text().splitlines()]


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    """A fresh server script and an empty ledger."""
    return Inventory(tmp_path)


async def test_tools_carry_names_descriptions_schemas_and_tiers(inventory: Inventory) -> None:
    specs = await mcp_tools({"inventory": inventory.connection})
    by_name = {s.name: s for s in specs}
    assert list(by_name) == ["stock_level", "reserve_units"]
    stock, reserve = by_name["stock_level"], by_name["reserve_units"]
    assert isinstance(stock, McpToolSpec)
    assert stock.tool.description == "Return how many units of an item are in stock."
    assert reserve.tool.description == "Reserve units of an item for an order."
    # Without a policy mapping every MCP tool is irreversible: a human approves it.
    assert {s.tier for s in specs} == {"irreversible"}
    assert {s.scopes for s in specs} == {frozenset({"mcp:inventory"})}
    assert not any(s.idempotent for s in specs)

    # The model is offered the server's own schema, closed to unknown keys.
    offered = convert_to_openai_tool(stock.tool)["function"]
    assert offered["name"] == "stock_level"
    params = offered["parameters"]
    assert params["required"] == ["sku"]
    assert params["additionalProperties"] is False
    assert params["properties"]["sku"]["maxLength"] == 20
    assert params["properties"]["sku"]["description"] == "Item SKU."
    assert params["properties"]["warehouse"]["default"] == "main"
    schema = reserve.args_model.model_json_schema()
    assert schema["properties"]["units"]["type"] == "integer"
    assert schema["required"] == ["sku", "units"]

    # Arguments are checked against that schema before anything reaches the server.
    model = reserve.args_model
    assert model.model_validate({"sku": "A1", "units": 3}).model_dump(exclude_unset=True) == {
        "sku": "A1",
        "units": 3,
    }
    refusals = {
        "units: '3' is not of type 'integer'": {"sku": "A1", "units": "3"},
        "'units' is a required property": {"sku": "A1"},
        "Additional properties are not allowed ('note' was unexpected)": {
            "sku": "A1",
            "units": 1,
            "note": "x",
        },
    }
    for expected, args in refusals.items():
        with pytest.raises(ValidationError) as info:
            model.model_validate(args)
        assert first_error(info.value) == expected
    with pytest.raises(ValidationError) as info:
        stock.args_model.model_validate({"sku": "X" * 21})
    assert first_error(info.value) == f"sku: '{'X' * 21}' is too long"
    with pytest.raises(ValidationError) as info:
        stock.args_model.model_validate({"sku": "X" * 200_000})
    assert "the limit is 100000" in first_error(info.value)

    # Invoked directly: the result is the server's text; a server error is a ToolError.
    assert await stock.tool.ainvoke({"sku": "B2", "warehouse": "east"}) == "B2@east: 42 units"
    with pytest.raises(ToolError) as err:
        await reserve.tool.ainvoke({"sku": "A1", "units": 500})
    assert str(err.value) == (
        "MCP server 'inventory': Error executing tool reserve_units: "
        "cannot reserve more than 100 units"
    )
    assert inventory.reservations() == []


async def test_policy_tiers_override_the_default_and_prefix_names(inventory: Inventory) -> None:
    specs = await mcp_tools(
        {"inventory": inventory.connection, "backup": inventory.connection},
        tiers={"inventory_stock_level": "read", "backup_reserve_units": "destructive"},
        prefix=True,
        call_timeout=7,
    )
    assert {s.name: s.tier for s in specs} == {
        "inventory_stock_level": "read",
        "inventory_reserve_units": "irreversible",
        "backup_stock_level": "irreversible",
        "backup_reserve_units": "destructive",
    }
    assert {s.name: s.scopes for s in specs}["backup_stock_level"] == frozenset({"mcp:backup"})
    assert {s.timeout for s in specs} == {7}
    # The prefixed name is Warden's; the server is still called by its own name.
    backup = ToolRegistry.of(specs)["backup_stock_level"]
    assert await backup.tool.ainvoke({"sku": "C3"}) == "C3@main: 42 units"


async def test_mcp_call_goes_to_approval_through_the_graph(saver, inventory: Inventory) -> None:
    specs = await mcp_tools({"inventory": inventory.connection}, tiers={"stock_level": "read"})
    model = ScriptedChatModel.from_turns(
        [
            turn(
                "checking stock",
                call("stock_level", sku="A1"),
                call("stock_level", sku="A1", note="rush"),
            ),
            turn("reserving", call("reserve_units", sku="A1", units=3)),
            turn("reserving more", call("reserve_units", sku="A1", units=500)),
            turn("Reserved 3 units of A1; 500 was over the limit."),
        ]
    )
    app = compile_graph(build_graph(model=model, tools=specs), saver)
    ctx = Context()
    cfg = {
        "configurable": {"thread_id": str(uuid.uuid4())},
        "recursion_limit": ctx.recursion_limit(),
    }

    first = await app.ainvoke({"task": "reserve 3 units of A1"}, cfg, context=ctx)
    [request] = first["__interrupt__"][0].value["action_requests"]
    assert request["name"] == "reserve_units"
    assert request["args"] == {"sku": "A1", "units": 3}
    assert "irreversible" in request["description"]
    assert inventory.reservations() == []  # nothing reached the server before approval
    results = [m for m in first["messages"] if isinstance(m, ToolMessage)]
    # The read-tier tool ran without asking; the invented argument never reached it.
    assert [(m.name, m.status) for m in results] == [
        ("stock_level", "success"),
        ("stock_level", "error"),
    ]
    assert results[0].content == "A1@main: 42 units"
    assert "('note' was unexpected)" in results[1].text

    second = await app.ainvoke(
        Command(resume={"decisions": [{"type": "approve"}], "reviewer": "ops"}), cfg, context=ctx
    )
    assert inventory.reservations() == [{"sku": "A1", "units": 3}]
    [request] = second["__interrupt__"][0].value["action_requests"]
    assert request["args"] == {"sku": "A1", "units": 500}
    reserved = [m for m in second["messages"] if isinstance(m, ToolMessage)][-1]
    assert (reserved.name, reserved.status) == ("reserve_units", "success")
    assert json.loads(reserved.text) == {"sku": "A1", "reserved": 3}

    final = await app.ainvoke(
        Command(resume={"decisions": [{"type": "approve"}], "reviewer": "ops"}), cfg, context=ctx
    )
    assert final["halt_reason"] == "completed"
    assert final["final_answer"] == "Reserved 3 units of A1; 500 was over the limit."
    refused = [m for m in final["messages"] if isinstance(m, ToolMessage)][-1]
    assert (refused.name, refused.status) == ("reserve_units", "error")
    assert "cannot reserve more than 100 units" in refused.text
    assert inventory.reservations() == [{"sku": "A1", "units": 3}]
    assert final["usage"]["tool_calls_by_name"]["reserve_units"] == 2
    assert [(a["tool"], a["decision"], a["reviewer"]) for a in final["approvals"]] == [
        ("reserve_units", "approve", "ops"),
        ("reserve_units", "approve", "ops"),
    ]


async def test_servers_from_the_config_file(inventory: Inventory, tmp_path: Path) -> None:
    path = tmp_path / "warden.toml"
    path.write_text(
        "[mcp_servers.inventory]\n"
        'transport = "stdio"\n'
        f"command = {json.dumps(sys.executable)}\n"
        f"args = {json.dumps(inventory.connection['args'])}\n"
    )
    config = load_config_file(path)
    specs = await mcp_tools(config.mcp_connections())
    assert [s.name for s in specs] == ["stock_level", "reserve_units"]


async def test_server_problems_are_one_line_config_errors(
    inventory: Inventory, tmp_path: Path
) -> None:
    async def refused(servers: dict[str, Any], **kwargs: Any) -> str:
        with pytest.raises(ConfigError) as info:
            await mcp_tools(servers, **kwargs)
        message = str(info.value)
        assert "\n" not in message
        return message

    missing = {"transport": "stdio", "command": sys.executable, "args": [str(tmp_path / "no.py")]}
    assert await refused({"gone": missing}) == (
        "MCP server 'gone': cannot list its tools: McpError: Connection closed"
    )
    nothing = {"transport": "stdio", "command": str(tmp_path / "no-such-binary"), "args": []}
    message = await refused({"gone": nothing})
    assert message.startswith("MCP server 'gone': cannot list its tools: FileNotFoundError")
    assert await refused({"inv": inventory.connection}, tiers={"stock_level": "admin"}) == (
        "tier for MCP tool 'stock_level': unknown tier 'admin'; "
        "expected one of read, write, irreversible, destructive"
    )
    assert await refused({"a": inventory.connection, "b": inventory.connection}) == (
        "MCP tool name 'stock_level' is offered by servers 'a' and 'b'; load them with prefix=True"
    )
    assert await refused({"bad name": inventory.connection}) == (
        "MCP server name 'bad name' is not valid: use letters, digits, '_' or '-'"
    )


async def test_server_that_goes_away_is_a_transient_failure(inventory: Inventory) -> None:
    [stock, _] = await mcp_tools({"inventory": inventory.connection})
    inventory.script.unlink()
    with pytest.raises(TransientToolError) as info:
        await stock.tool.ainvoke({"sku": "A1"})
    assert str(info.value) == "MCP server 'inventory' is unavailable: McpError: Connection closed"


async def test_missing_extra_names_the_install_command(
    inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "langchain_mcp_adapters", None)
    monkeypatch.setitem(sys.modules, "langchain_mcp_adapters.tools", None)
    with pytest.raises(ImportError) as info:
        await mcp_tools({"inventory": inventory.connection})
    assert str(info.value).startswith(
        "MCP tools need the optional extra: pip install 'warden[mcp]' (langchain-mcp-adapters)"
    )
