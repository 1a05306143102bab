"""Tool specifications: the tool plus its risk tier, scopes, timeout and idempotency."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from langchain_core.tools import BaseTool
from pydantic import BaseModel

from graph.policy import TIERS, Tier
from tools.errors import TransientToolError


class Reconciled(NamedTuple):
    """What a reconcile hook found out about a call whose outcome was never recorded."""

    state: Literal["done", "absent", "unknown"]
    """`done`: the effect is there; `absent`: it is not (running the call is safe);
    `unknown`: the hook cannot tell."""
    result: str = ""
    """For `done`: the result the call would have returned."""


Reconcile = Callable[[dict[str, Any], str], Awaitable[Reconciled] | Reconciled]
"""`reconcile(args, idempotency_key)`, sync or async."""


@dataclass(frozen=True, kw_only=True)
class ToolSpec:
    """A tool as Warden runs it."""

    tool: BaseTool
    tier: Tier
    scopes: frozenset[str] = frozenset()
    timeout: float = 30.0
    idempotent: bool = False
    transient: tuple[type[BaseException], ...] = (TransientToolError, TimeoutError)
    retries: int = 2
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    reconcile: Reconcile | None = None
    """Asked, after a crash, whether an in-doubt call took effect (see checkpoints.ledger)."""

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"tool {self.tool.name!r}: unknown tier {self.tier!r}")
        if self.timeout <= 0:
            raise ValueError(f"tool {self.tool.name!r}: timeout must be > 0")
        if self.retries < 0 or self.breaker_threshold < 1 or self.breaker_cooldown < 0:
            raise ValueError(f"tool {self.tool.name!r}: retries and breaker settings out of range")

    @property
    def name(self) -> str:
        """Return the model-facing tool name."""
        return self.tool.name

    @property
    def args_model(self) -> type[BaseModel] | None:
        """Return the pydantic model that validates this tool's arguments, if any."""
        schema = self.tool.args_schema
        return schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None


def as_spec(
    tool: ToolSpec | BaseTool | Callable[..., Any],
    *,
    tier: Tier = "write",
    scopes: Iterable[str] = (),
    timeout: float = 30.0,
    idempotent: bool = False,
) -> ToolSpec:
    """Wrap a typed function or a BaseTool into a ToolSpec (unknown risk means `write`)."""
    if isinstance(tool, ToolSpec):
        return tool
    if isinstance(tool, BaseTool):
        base = tool
    else:
        # Async functions run as coroutines; unknown arguments are refused. Deferred
        # import: the loader builds on this module.
        from tools.loader import function_tool

        base = function_tool(tool)
    return ToolSpec(
        tool=base, tier=tier, scopes=frozenset(scopes), timeout=timeout, idempotent=idempotent
    )


@dataclass(frozen=True)
class ToolRegistry(Mapping[str, ToolSpec]):
    """An immutable, name-indexed set of tools."""

    specs: Mapping[str, ToolSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, tools: Iterable[ToolSpec | BaseTool | Callable[..., Any]]) -> ToolRegistry:
        """Build a registry, refusing duplicate names."""
        specs: dict[str, ToolSpec] = {}
        for item in tools:
            spec = as_spec(item)
            if spec.name in specs:
                raise ValueError(f"duplicate tool name {spec.name!r}")
            specs[spec.name] = spec
        return cls(specs)

    def __getitem__(self, name: str) -> ToolSpec:
        return self.specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def tiers(self) -> dict[str, Tier]:
        """Return each tool's declared tier."""
        return {name: spec.tier for name, spec in self.specs.items()}

    def args_models(self) -> dict[str, type[BaseModel]]:
        """Return each tool's argument model, where it has one."""
        return {n: s.args_model for n, s in self.specs.items() if s.args_model is not None}
