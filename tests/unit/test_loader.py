"""User tools by import path (tools/loader.py) and the config-file keys that name them.

Each test writes real modules to tmp_path and imports them through sys.path.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from graph.errors import ConfigError
from graph.settings import ConfigFile, load_config_file
from tools.errors import TransientToolError
from tools.loader import ToolEntry, function_tool, load_tools
from tools.registry import ToolRegistry, as_spec

ORDERS = '''
from typing import Annotated

from langchain_core.tools import BaseTool, tool
from pydantic import Field


def lookup_order(
    order_id: Annotated[str, Field(max_length=12)], include_lines: bool = False
) -> dict:
    """Look up an order by its id.

    Args:
        order_id: The order id, e.g. "A-100".
        include_lines: Whether to include the order lines.
    """
    order = {"id": order_id, "status": "shipped"}
    if include_lines:
        order["lines"] = 2
    return order


async def cancel_order(order_id: str, reason: str = "customer request") -> str:
    """Cancel an order. This cannot be undone."""
    return f"cancelled {order_id}: {reason}"


@tool
def refund(order_id: str, amount: float) -> str:
    """Refund part of an order."""
    return f"refunded {amount:.2f} on {order_id}"


class Toolkit:
    @staticmethod
    def ping(host: str) -> str:
        """Ping a host by name."""
        return f"pong {host}"


RATE = 3
'''


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a module with a unique name to tmp_path (on sys.path); return its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str) -> str:
        name = f"usertools_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def load_error(entries: list[Any], **kwargs: Any) -> str:
    """Load entries that must be refused; return the one-line message."""
    with pytest.raises(ConfigError) as info:
        load_tools(entries, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- loading ------------------------------------------------------------------------


async def test_typed_function_becomes_a_strict_tool_with_the_entry_settings(modules) -> None:
    mod = modules(ORDERS)
    [spec] = load_tools(
        [
            {
                "path": f"{mod}:lookup_order",
                "tier": "read",
                "scopes": ["orders:read"],
                "timeout": 5,
                "idempotent": True,
                "retries": 4,
            }
        ]
    )
    assert spec.name == "lookup_order"
    assert spec.tier == "read"
    assert spec.scopes == frozenset({"orders:read"})
    assert (spec.timeout, spec.idempotent, spec.retries) == (5.0, True, 4)
    assert spec.transient == (TransientToolError, TimeoutError)
    # The docstring is what the model reads; Google-style Args become argument docs.
    assert spec.tool.description.startswith("Look up an order by its id.")
    schema = spec.args_model.model_json_schema()
    assert schema["required"] == ["order_id"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["order_id"]["maxLength"] == 12
    assert schema["properties"]["order_id"]["description"] == 'The order id, e.g. "A-100".'
    # Unknown keys and out-of-bounds values are refused, not dropped.
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        spec.args_model.model_validate({"order_id": "A-1", "priority": "high"})
    with pytest.raises(ValidationError, match="at most 12 characters"):
        spec.args_model.model_validate({"order_id": "A" * 13})
    assert await spec.tool.ainvoke({"order_id": "A-1", "include_lines": True}) == {
        "id": "A-1",
        "status": "shipped",
        "lines": 2,
    }


async def test_async_function_base_tool_and_dotted_attribute(modules) -> None:
    mod = modules(ORDERS)
    specs = load_tools(
        [
            ToolEntry(path=f"{mod}:cancel_order", tier="irreversible", scopes=("orders:write",)),
            {"path": f"{mod}:refund", "tier": "destructive"},
            {"path": f"{mod}:Toolkit.ping", "tier": "read"},
        ]
    )
    registry = ToolRegistry.of(specs)
    assert registry.tiers() == {
        "cancel_order": "irreversible",
        "refund": "destructive",
        "ping": "read",
    }
    # An async function is awaited, not handed back as a coroutine object.
    assert await registry["cancel_order"].tool.ainvoke({"order_id": "A-7"}) == (
        "cancelled A-7: customer request"
    )
    assert registry["cancel_order"].tool.description == "Cancel an order. This cannot be undone."
    assert await registry["refund"].tool.ainvoke({"order_id": "A-7", "amount": 2.5}) == (
        "refunded 2.50 on A-7"
    )
    assert await registry["ping"].tool.ainvoke({"host": "db1"}) == "pong db1"
    assert registry["refund"].scopes == frozenset()
    assert registry["refund"].retries == 2


async def test_as_spec_gives_embedded_functions_the_same_treatment() -> None:
    async def tag(label: str) -> str:
        """Tag something."""
        return f"#{label}"

    spec = as_spec(tag, tier="write", scopes=["tags"])
    assert await spec.tool.ainvoke({"label": "x"}) == "#x"
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        spec.args_model.model_validate({"label": "x", "colour": "red"})

    def untyped(label):  # type: ignore[no-untyped-def]
        """Untyped."""
        return label

    with pytest.raises(ValueError, match="lacks type hints for: label"):
        as_spec(untyped)


# --- refusals -----------------------------------------------------------------------


BROKEN = '''
from langchain_core.tools import BaseTool


def no_doc(x: int) -> int:
    return x


def untyped(x, y: int) -> int:
    """Add."""
    return x + y


def variadic(*items: str) -> str:
    """Join."""
    return ",".join(items)


class Custom(BaseTool):
    name: str = "custom"
    description: str = "A custom tool."

    def _run(self, text: str) -> str:
        return text


class Blank(BaseTool):
    name: str = "blank"
    description: str = ""

    def _run(self, text: str) -> str:
        return text


class Spaced(BaseTool):
    name: str = "look up"
    description: str = "Has a space in its name."

    def _run(self, text: str) -> str:
        return text


custom = Custom()
blank = Blank()
spaced = Spaced()
RATE = 3
'''


@pytest.mark.parametrize(
    ("attribute", "tier", "expected"),
    [
        (
            "no_doc",
            "read",
            "function no_doc has no docstring; it is the description the model sees",
        ),
        ("untyped", "read", "function untyped lacks type hints for: x"),
        ("variadic", "read", "*args/**kwargs are not supported (items)"),
        ("RATE", "read", "got a int (3); expected a typed function or a BaseTool instance"),
        ("Custom", "read", "Custom is a class; export an instance"),
        ("blank", "read", "tool 'blank' has no description"),
        ("spaced", "read", "tool name 'look up' is not valid"),
        ("custum", "read", "has no attribute 'custum'; did you mean 'custom'?"),
    ],
)
def test_bad_attributes_are_refused_with_one_line(
    modules, attribute: str, tier: str, expected: str
) -> None:
    mod = modules(BROKEN)
    message = load_error([{"path": f"{mod}:{attribute}", "tier": tier}])
    assert message.startswith(f"tool '{mod}:{attribute}': ")
    assert expected in message


def test_unimportable_and_failing_modules(modules) -> None:
    message = load_error([{"path": "no_such_pkg_xyz.tools:lookup", "tier": "read"}])
    assert message == (
        "tool 'no_such_pkg_xyz.tools:lookup': cannot import module 'no_such_pkg_xyz.tools': "
        "No module named 'no_such_pkg_xyz'"
    )
    failing = modules("raise RuntimeError('database is down\\nat import time')\n")
    message = load_error([{"path": f"{failing}:x", "tier": "read"}])
    assert message == (
        f"tool '{failing}:x': importing module '{failing}' failed: RuntimeError: "
        "database is down at import time"
    )
    broken = modules("def f(:\n")
    assert "failed: SyntaxError" in load_error([{"path": f"{broken}:f", "tier": "read"}])


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"path": "m:f", "tier": "admin"},
            "tools[0]: tier: unknown tier 'admin'; expected one of read, write, irreversible, destructive",
        ),
        (
            {"path": "m.f", "tier": "read"},
            "tools[0]: path: path 'm.f' is not of the form package.module:attribute",
        ),
        ({"path": "m:f"}, "tools[0]: tier: Field required"),
        (
            {"path": "m:f", "tier": "read", "color": 1},
            "tools[0]: color: Extra inputs are not permitted",
        ),
        (
            {"path": "m:f", "tier": "read", "timeout": 0},
            "tools[0]: timeout: Input should be greater than 0",
        ),
        (
            {"path": "m:f", "tier": "read", "scopes": [""]},
            "tools[0]: scopes: scopes must be non-empty strings",
        ),
    ],
)
def test_malformed_entries(entry: dict[str, Any], expected: str) -> None:
    assert load_error([entry]) == expected


def test_duplicate_names_are_refused(modules) -> None:
    mod = modules(ORDERS)
    other = modules(ORDERS)
    message = load_error(
        [
            {"path": f"{mod}:lookup_order", "tier": "read"},
            {"path": f"{other}:lookup_order", "tier": "read"},
        ]
    )
    assert message == (
        f"tool '{other}:lookup_order': duplicate tool name 'lookup_order' "
        f"(already from '{mod}:lookup_order')"
    )
    message = load_error(
        [{"path": f"{mod}:refund", "tier": "read"}], reserved=["read_file", "refund"]
    )
    assert message == f"tool '{mod}:refund': duplicate tool name 'refund' (already a built-in tool)"


def test_function_tool_refuses_non_functions() -> None:
    with pytest.raises(TypeError, match=r"got a str \('lookup_order'\)"):
        function_tool("lookup_order")  # type: ignore[arg-type]


# --- config file keys ---------------------------------------------------------------


CONFIG = """
policy_file = "policies/warden-policy.toml"
profile = "support"

[[tools]]
path = "{mod}:lookup_order"
tier = "read"
scopes = ["orders:read"]

[[tools]]
path = "{mod}:cancel_order"
tier = "irreversible"
scopes = ["orders:write"]
timeout = 12.5
idempotent = false
retries = 0

[mcp_servers.files]
transport = "stdio"
command = "python3"
args = ["-m", "files_server"]
cwd = "servers"

[mcp_servers.search]
transport = "http"
url = "http://127.0.0.1:8765/mcp"
headers = {{ Authorization = "Bearer t" }}
"""


async def test_config_file_tools_policy_file_profile_and_mcp_servers(
    modules, tmp_path: Path
) -> None:
    mod = modules(ORDERS)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = conf_dir / "warden.toml"
    path.write_text(CONFIG.format(mod=mod))
    config = load_config_file(path)
    assert config.profile == "support"
    # Resolved like `workspace`: relative to the config file, not the current directory.
    assert config.policy_file == (conf_dir / "policies" / "warden-policy.toml").resolve()
    assert [e.path for e in config.tool_entries] == [f"{mod}:lookup_order", f"{mod}:cancel_order"]
    assert config.tool_entries[1] == ToolEntry(
        path=f"{mod}:cancel_order",
        tier="irreversible",
        scopes=("orders:write",),
        timeout=12.5,
        retries=0,
    )
    specs = load_tools(config.tool_entries)
    assert [(s.name, s.tier, s.timeout, s.retries) for s in specs] == [
        ("lookup_order", "read", 30.0, 2),
        ("cancel_order", "irreversible", 12.5, 0),
    ]
    assert config.mcp_connections() == {
        "files": {
            "transport": "stdio",
            "command": "python3",
            "args": ["-m", "files_server"],
            "cwd": str((conf_dir / "servers").resolve()),
        },
        "search": {
            "transport": "http",
            "url": "http://127.0.0.1:8765/mcp",
            "headers": {"Authorization": "Bearer t"},
        },
    }
    # None of the new keys feed the run's Context: the CLI wires them.
    assert config.context_fields() == {}
    assert ConfigFile().tool_entries == ()
    assert ConfigFile().policy_file is None


def test_absolute_and_home_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "a.toml"
    path.write_text('policy_file = "~/policy.toml"\n')
    assert load_config_file(path).policy_file == tmp_path / "home" / "policy.toml"
    path.write_text(f'policy_file = "{tmp_path / "abs.toml"}"\n')
    assert load_config_file(path).policy_file == tmp_path / "abs.toml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[tools]]\npath = "m:f"\ntier = "root"\n',
            "tools.0.tier: unknown tier 'root'; expected one of read, write, irreversible, destructive",
        ),
        (
            '[[tools]]\npath = "m:f"\ntier = "read"\nscope = ["x"]\n',
            "tools.0.scope: Extra inputs are not permitted",
        ),
        ('tools = "m:f"\n', "tools: Input should be a valid list"),
        ('profile = ""\n', "profile: String should have at least 1 character"),
        ("policy_file = 3\n", "policy_file: Input is not a valid path"),
        (
            '[mcp_servers.x]\ntransport = "stdio"\nurl = "http://127.0.0.1:1/mcp"\n',
            "mcp_servers.x: a stdio MCP server needs `command` (and `args`), not `url`",
        ),
        (
            '[mcp_servers.x]\ntransport = "stdio"\ncommand = "python"\ntimeout = 5\n',
            "mcp_servers.x: `headers` and `timeout` are for URL MCP servers, not stdio",
        ),
        (
            '[mcp_servers.x]\ntransport = "sse"\nurl = "http://127.0.0.1:1/sse"\nargs = ["a"]\n',
            "mcp_servers.x: `args`, `env` and `cwd` are for stdio MCP servers, not sse",
        ),
        (
            '[mcp_servers.x]\ntransport = "http"\n',
            "mcp_servers.x: a http MCP server needs `url`, not `command`",
        ),
        (
            '[mcp_servers.x]\ntransport = "carrier-pigeon"\n',
            "mcp_servers.x.transport: Input should be",
        ),
        (
            '[mcp_servers.x]\ntransport = "stdio"\ncommand = "python"\nenviron = {}\n',
            "mcp_servers.x.environ: Extra inputs are not permitted",
        ),
    ],
)
def test_config_file_refuses_bad_new_keys(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "warden.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"config file {path}: {expected}")
