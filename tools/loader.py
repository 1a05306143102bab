"""User tools by import path: `"package.module:attribute"` plus a risk tier and scopes.

A config file lists them as `[[tools]]` tables:

    [[tools]]
    path = "mypkg.tools:lookup_order"
    tier = "read"
    scopes = ["orders:read"]
    timeout = 10          # optional, seconds
    idempotent = true     # optional
    retries = 2           # optional, transient failures only
    reconcile = "mypkg.tools:order_exists"   # optional, see tools.registry.Reconciled

The attribute is a typed Python function (sync or async) or a LangChain `BaseTool`
instance. A function's docstring is the description the model sees, so it is required,
and so is a type hint on every parameter; its argument model refuses unknown keys
(`extra="forbid"`). Every problem is a one-line `ConfigError` naming the entry.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graph.errors import ConfigError, first_error
from graph.policy import TIERS, Tier
from tools.registry import ToolSpec, as_spec

_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# What model providers accept as a function name (OpenAI: ^[a-zA-Z0-9_-]{1,64}$).
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolEntry(BaseModel):
    """One user tool in the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description='Import path, "package.module:attribute".')
    tier: Tier = Field(description="Risk tier: read, write, irreversible or destructive.")
    scopes: tuple[str, ...] = Field(default=(), description="Scopes the tool needs.")
    timeout: float = Field(default=30.0, gt=0, le=3600, description="Per-call timeout (s).")
    idempotent: bool = Field(default=False, description="Safe to repeat with the same args.")
    retries: int = Field(default=2, ge=0, le=10, description="Retries on transient errors.")
    reconcile: str | None = Field(
        default=None,
        description='Import path of `reconcile(args, idempotency_key) -> Reconciled`, which '
        "tells after a crash whether an in-doubt call took effect.",
    )

    @field_validator("path", "reconcile")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and not _PATH.match(value):
            raise ValueError(f"path {value!r} is not of the form package.module:attribute")
        return value

    @field_validator("tier", mode="before")
    @classmethod
    def _known_tier(cls, value: Any) -> Any:
        if value not in TIERS:
            raise ValueError(f"unknown tier {value!r}; expected one of {', '.join(TIERS)}")
        return value

    @field_validator("scopes")
    @classmethod
    def _non_empty_scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s.strip() for s in value):
            raise ValueError("scopes must be non-empty strings")
        return value


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def function_tool(fn: Callable[..., Any]) -> StructuredTool:
    """Turn a typed, documented function (sync or async) into a tool with a strict argument model.

    Raises TypeError for something that is not a function and ValueError for a function
    without a docstring, with an untyped parameter, or with `*args`/`**kwargs`.
    """
    name = getattr(fn, "__name__", type(fn).__name__)
    if isinstance(fn, type):
        hint = "; export an instance" if issubclass(fn, BaseTool) else ""
        raise TypeError(
            f"{name} is a class{hint}; expected a typed function or a BaseTool instance"
        )
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        raise TypeError(
            f"got a {type(fn).__name__} ({_one_line(repr(fn))[:60]}); "
            "expected a typed function or a BaseTool instance"
        )
    doc = inspect.getdoc(fn)
    if not doc or not doc.strip():
        raise ValueError(f"function {name} has no docstring; it is the description the model sees")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ValueError(f"function {name}: cannot resolve its type hints: {exc}") from None
    params = inspect.signature(fn).parameters.values()
    variadic = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if variadic:
        raise ValueError(
            f"function {name}: *args/**kwargs are not supported ({', '.join(variadic)}); "
            "declare each argument"
        )
    untyped = [p.name for p in params if p.name not in hints]
    if untyped:
        raise ValueError(f"function {name} lacks type hints for: {', '.join(untyped)}")
    is_async = inspect.iscoroutinefunction(fn)
    sync_fn, async_fn = (None, fn) if is_async else (fn, None)
    inferred = StructuredTool.from_function(
        func=sync_fn, coroutine=async_fn, name=name, parse_docstring=True
    )
    loose = inferred.args_schema
    assert isinstance(loose, type) and issubclass(loose, BaseModel)
    # The inferred model ignores unknown keys; a model's invented argument must be refused.
    strict = type(
        loose.__name__,
        (loose,),
        {"model_config": ConfigDict(extra="forbid"), "__doc__": loose.__doc__},
    )
    return StructuredTool.from_function(
        func=sync_fn,
        coroutine=async_fn,
        name=name,
        description=inferred.description,
        args_schema=strict,
    )


def _resolve(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import module {module_name!r}: {_one_line(str(exc))}") from None
    except Exception as exc:
        raise ConfigError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {_one_line(str(exc))}"
        ) from None
    target: Any = module
    where = module_name
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"module {where!r} has no attribute {part!r}{hint}")
        target = getattr(target, part)
        where = f"{where}.{part}"
    return target


def load_tool(entry: ToolEntry) -> ToolSpec:
    """Import one entry's tool and wrap it as a ToolSpec; ConfigError for anything wrong."""
    try:
        target = _resolve(entry.path)
        if isinstance(target, ToolSpec | BaseTool):
            # A ToolSpec's own tier and scopes give way to the entry's.
            base = target.tool if isinstance(target, ToolSpec) else target
            if not (base.description or "").strip():
                raise ConfigError(f"tool {base.name!r} has no description; the model needs one")
        else:
            try:
                base = function_tool(target)
            except (TypeError, ValueError) as exc:
                raise ConfigError(_one_line(str(exc))) from None
        if not TOOL_NAME.match(base.name):
            raise ConfigError(
                f"tool name {base.name!r} is not valid: use 1-64 letters, digits, '_' or '-'"
            )
        spec = as_spec(
            base,
            tier=entry.tier,
            scopes=entry.scopes,
            timeout=entry.timeout,
            idempotent=entry.idempotent,
        )
        reconcile = _resolve(entry.reconcile) if entry.reconcile else None
        if reconcile is not None and not callable(reconcile):
            raise ConfigError(f"reconcile {entry.reconcile!r} is not callable")
    except ConfigError as exc:
        raise ConfigError(f"tool {entry.path!r}: {exc}") from None
    transient = target.transient if isinstance(target, ToolSpec) else spec.transient
    if reconcile is None and isinstance(target, ToolSpec):
        reconcile = target.reconcile
    return dataclasses.replace(
        spec, retries=entry.retries, transient=transient, reconcile=reconcile
    )


def load_tools(
    entries: Iterable[ToolEntry | Mapping[str, Any]], *, reserved: Iterable[str] = ()
) -> list[ToolSpec]:
    """Load every entry, refusing duplicate names (also against `reserved`, e.g. built-ins)."""
    importlib.invalidate_caches()  # modules written since the last import are found
    taken: dict[str, str] = {name: "a built-in tool" for name in reserved}
    specs: list[ToolSpec] = []
    for i, raw in enumerate(entries):
        if isinstance(raw, ToolEntry):
            entry = raw
        else:
            try:
                entry = ToolEntry.model_validate(raw)
            except ValidationError as exc:
                raise ConfigError(f"tools[{i}]: {first_error(exc)}") from None
        spec = load_tool(entry)
        if spec.name in taken:
            raise ConfigError(
                f"tool {entry.path!r}: duplicate tool name {spec.name!r} (already {taken[spec.name]})"
            )
        taken[spec.name] = f"from {entry.path!r}"
        specs.append(spec)
    return specs
