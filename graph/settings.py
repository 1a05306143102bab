"""Settings from the environment and the TOML config file, read once at the entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_data_path
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from graph.context import Context
from graph.errors import ConfigError, first_error, read_toml
from graph.policy import Tier
from graph.pricing import ModelPrice
from tools.loader import ToolEntry


class Settings(BaseSettings):
    """Process-wide settings: where the database is, default model, provider endpoint."""

    model_config = SettingsConfigDict(env_prefix="WARDEN_", extra="ignore")

    database_url: str | None = Field(default=None, description="Postgres URL; unset = embedded.")
    data_dir: Path = Field(
        default_factory=lambda: user_data_path("warden"),
        description="Where the embedded Postgres and the local outbox live.",
    )
    model: str | None = Field(default=None, description="Default model string.")
    prepare_threshold: int | None = Field(
        default=5, description="psycopg prepare threshold; `none` for PgBouncer."
    )
    pool_max_size: int = Field(default=10, ge=1)
    redact_skip_fields: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Fields shown unredacted in history/status views (comma-separated).",
    )
    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "WARDEN_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "WARDEN_OPENAI_BASE_URL")
    )
    langsmith_tracing: bool = Field(
        default=False,
        validation_alias=AliasChoices(
            "LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "WARDEN_LANGSMITH_TRACING"
        ),
        description="Trace runs to LangSmith (needs an API key or an endpoint too).",
    )
    langsmith_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")
    )
    langsmith_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT")
    )
    langsmith_project: str | None = Field(
        default=None, validation_alias=AliasChoices("LANGSMITH_PROJECT", "LANGCHAIN_PROJECT")
    )
    otel_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces URL; set = export run and node spans."
    )
    log_format: Literal["json", "human"] | None = Field(
        default=None, description="Log line format; unset = human on a terminal, else json."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="WARNING", description="Level of Warden's log lines."
    )

    @field_validator("redact_skip_fields", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("prepare_threshold", mode="before")
    @classmethod
    def _none_word(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().upper() or "WARNING"
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower() or None
        return value

    @field_validator(
        "database_url", "model", "openai_base_url", "openai_api_key", "langsmith_api_key",
        "langsmith_endpoint", "langsmith_project", "otel_endpoint", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


def load_settings() -> Settings:
    """Read settings from the environment, with a one-line error for a bad value."""
    try:
        return Settings()
    except SettingsError as exc:
        raise ConfigError(f"environment setting: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        raise ConfigError(f"environment setting {first_error(exc)}") from None


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetsTable(_Table):
    max_steps: int | None = None
    max_tool_calls: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    max_seconds: float | None = None
    soft_threshold: float | None = None
    per_tool: dict[str, int] = Field(default_factory=dict)


class LoopTable(_Table):
    repeat_threshold: int | None = None
    cycle_repeats: int | None = None
    error_repeats: int | None = None
    observation_repeats: int | None = None
    window: int | None = None


class PolicyTable(_Table):
    ask_tiers: list[Tier] | None = None
    deny_tiers: list[Tier] | None = None
    tiers: dict[str, Tier] = Field(default_factory=dict)
    allowed_tools: list[str] | None = None
    max_rejections: int | None = None


class ContextTable(_Table):
    budget_tokens: int | None = None
    reserve_tokens: int | None = None
    summary_threshold: float | None = None
    summary_model: str | None = None
    truncate_tool_tokens: int | None = None


class MemoryTable(_Table):
    embeddings: str | None = None
    embedding_dims: int | None = None


class McpServerTable(_Table):
    """One MCP server, as langchain-mcp-adapters connects to it (`stdio` or a URL)."""

    transport: Literal["stdio", "sse", "http", "streamable_http", "streamable-http", "websocket"]
    command: str | None = Field(default=None, min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: Path | None = None
    url: str | None = Field(default=None, min_length=1)
    headers: dict[str, str] | None = None
    timeout: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _endpoint(self) -> McpServerTable:
        if self.transport == "stdio":
            if self.command is None or self.url is not None:
                raise ValueError("a stdio MCP server needs `command` (and `args`), not `url`")
            if self.headers is not None or self.timeout is not None:
                raise ValueError("`headers` and `timeout` are for URL MCP servers, not stdio")
        elif self.url is None or self.command is not None:
            raise ValueError(f"a {self.transport} MCP server needs `url`, not `command`")
        elif self.args or self.env is not None or self.cwd is not None:
            raise ValueError(
                f"`args`, `env` and `cwd` are for stdio MCP servers, not {self.transport}"
            )
        return self

    def connection(self) -> dict[str, Any]:
        """Return the adapters' connection dict for this server."""
        raw = self.model_dump(exclude_none=True)
        if self.transport != "stdio":
            raw.pop("args", None)
        if self.cwd is not None:
            raw["cwd"] = str(self.cwd)
        return raw


class EmailTable(_Table):
    """SMTP settings for `send_email`; without them, email goes to the local outbox."""

    host: str = Field(min_length=1)
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = Field(min_length=3)
    starttls: bool = False
    username: str | None = None
    password_env: str | None = Field(
        default=None, description="Environment variable holding the SMTP password."
    )
    timeout: float = Field(
        default=10.0, gt=0, le=600, description="Seconds each SMTP exchange may take."
    )


class SqlTable(_Table):
    """The database `sql_query` reads (use a least-privilege role)."""

    dsn_env: str = Field(min_length=1, description="Environment variable holding the DSN.")
    row_cap: int = Field(default=200, ge=1, le=10_000)
    statement_timeout_ms: int = Field(default=5000, ge=1, le=600_000)


class HttpTable(_Table):
    """Settings of `http_fetch`; a profile's egress allowlist narrows them per run."""

    allow_hosts: list[str] | None = None
    allow_private: bool = False
    max_bytes: int = Field(default=1_048_576, ge=1)
    timeout: float = Field(default=10.0, gt=0)


class ConfigFile(_Table):
    """The `--config` TOML file. Every key is optional; CLI flags override it."""

    model: str | None = None
    base_url: str | None = None
    workspace: Path | None = None
    tenant: str | None = None
    system_prompt: str | None = None
    max_task_chars: int | None = None
    budgets: BudgetsTable = Field(default_factory=BudgetsTable)
    loop: LoopTable = Field(default_factory=LoopTable)
    policy: PolicyTable = Field(default_factory=PolicyTable)
    context: ContextTable = Field(default_factory=ContextTable)
    memory: MemoryTable = Field(default_factory=MemoryTable)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    tools: list[ToolEntry] = Field(default_factory=list)
    policy_file: Path | None = None
    profile: str | None = Field(default=None, min_length=1)
    mcp_servers: dict[str, McpServerTable] = Field(default_factory=dict)
    redact: list[str] | None = Field(
        default=None, description="Kinds of secrets and PII redacted from views ([] for none)."
    )
    workspace_writable: bool = Field(
        default=False, description="Offer write_file (least privilege: off unless asked for)."
    )
    email: EmailTable | None = None
    sql: SqlTable | None = None
    http: HttpTable = Field(default_factory=HttpTable)

    @property
    def tool_entries(self) -> tuple[ToolEntry, ...]:
        """Return the user tools (`[[tools]]` tables), to load with `tools.loader.load_tools`."""
        return tuple(self.tools)

    def mcp_connections(self) -> dict[str, dict[str, Any]]:
        """Return the MCP servers as connection dicts for `tools.mcp.mcp_tools`."""
        return {name: server.connection() for name, server in self.mcp_servers.items()}

    def context_fields(self) -> dict[str, Any]:
        """Return the Context fields this file sets."""
        b, lp, p = self.budgets, self.loop, self.policy
        fields: dict[str, Any] = {
            "max_steps": b.max_steps,
            "max_tool_calls": b.max_tool_calls,
            "max_tokens": b.max_tokens,
            "max_cost": b.max_cost,
            "max_seconds": b.max_seconds,
            "soft_threshold": b.soft_threshold,
            "max_tool_calls_per_tool": b.per_tool or None,
            "loop_repeat_threshold": lp.repeat_threshold,
            "loop_cycle_repeats": lp.cycle_repeats,
            "loop_error_repeats": lp.error_repeats,
            "loop_observation_repeats": lp.observation_repeats,
            "loop_window": lp.window,
            "ask_tiers": tuple(p.ask_tiers) if p.ask_tiers is not None else None,
            "deny_tiers": tuple(p.deny_tiers) if p.deny_tiers is not None else None,
            "tier_overrides": p.tiers or None,
            "allowed_tools": tuple(p.allowed_tools) if p.allowed_tools is not None else None,
            "max_rejections": p.max_rejections,
            "prices": self.prices or None,
            "tenant": self.tenant,
            "system_prompt": self.system_prompt,
            "max_task_chars": self.max_task_chars,
            "redact": tuple(self.redact) if self.redact is not None else None,
            "context_budget_tokens": self.context.budget_tokens,
            "context_reserve_tokens": self.context.reserve_tokens,
            "summary_threshold": self.context.summary_threshold,
            "summary_model": self.context.summary_model,
            "truncate_tool_tokens": self.context.truncate_tool_tokens,
            "memory_embeddings": self.memory.embeddings,
            "memory_embedding_dims": self.memory.embedding_dims,
        }
        return {k: v for k, v in fields.items() if v is not None}


def load_config_file(path: Path | None) -> ConfigFile:
    """Read and validate a TOML config file (an empty config when no path is given)."""
    if path is None:
        return ConfigFile()
    raw = read_toml(path, "config file")
    try:
        config = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"config file {path}: {first_error(exc)}") from None
    if config.workspace is not None:
        workspace = config.workspace.expanduser()  # `~` as in --workspace, not a folder named `~`
        if not workspace.is_absolute():
            workspace = (path.parent / workspace).resolve()
        config = config.model_copy(update={"workspace": workspace})
    if config.policy_file is not None:
        config = config.model_copy(update={"policy_file": _relative_to(path, config.policy_file)})
    if any(s.cwd is not None for s in config.mcp_servers.values()):
        servers = {
            name: s if s.cwd is None else s.model_copy(update={"cwd": _relative_to(path, s.cwd)})
            for name, s in config.mcp_servers.items()
        }
        config = config.model_copy(update={"mcp_servers": servers})
    return config


def _relative_to(config_path: Path, value: Path) -> Path:
    """Resolve a path from the config file: `~` expanded, relative to the file's folder."""
    value = value.expanduser()
    return value if value.is_absolute() else (config_path.parent / value).resolve()


def make_context(fields: dict[str, Any]) -> Context:
    """Build a Context, turning validation errors into one-line ConfigErrors."""
    try:
        return Context(**fields)
    except ValidationError as exc:
        raise ConfigError(f"invalid setting {first_error(exc)}") from None


def operator_policy(config: ConfigFile, known_tools: list[str] | None = None) -> dict[str, Any]:
    """Return the policy an operator set: defaults, then a policy-file profile, then `[policy]`.

    `known_tools`, when given, must include every tool the chosen profile names.
    """
    from graph.context import POLICY_FIELDS, context_to_json
    from graph.policy import load_policy_file

    fields = {k: v for k, v in context_to_json(Context()).items() if k in POLICY_FIELDS}
    if config.policy_file is not None:
        fields |= load_policy_file(config.policy_file).context_fields(config.profile, known_tools)
    elif config.profile is not None:
        raise ConfigError("`profile` is set but no `policy_file` names the profiles")
    fields |= {k: v for k, v in config.context_fields().items() if k in POLICY_FIELDS}
    return fields
