"""Risk tiers and the approval policy: allow, ask or deny, per tool call.

A tool's tier gives the default; argument rules (recipients outside a domain list,
SQL touching a listed table, amounts over a threshold, a pattern) can turn a single
call into `ask` or `deny`; and once a run is tainted by instruction-like tool output,
every call that can change something asks a human, whatever else the policy says.
The policy file (TOML) declares named profiles of these settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graph.errors import ConfigError, first_error, read_toml

Tier = Literal["read", "write", "irreversible", "destructive"]
TIERS: tuple[Tier, ...] = ("read", "write", "irreversible", "destructive")
Decision = Literal["allow", "ask", "deny"]
CHANGING_TIERS: frozenset[Tier] = frozenset({"write", "irreversible", "destructive"})
_STRICTNESS: dict[Decision, int] = {"allow": 0, "ask": 1, "deny": 2}
_SQL_IDENTIFIER = re.compile(r'"([^"]+)"|([A-Za-z_][A-Za-z0-9_$]*)')


class ArgRule(BaseModel):
    """A rule on one argument of one tool that turns a call into `ask` or `deny`.

    Exactly one condition is set: recipients outside `domains_not_in`, SQL touching one
    of `tables`, a number greater than `gt`, a string matching `matches` (a regex).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str = Field(min_length=1)
    arg: str = Field(min_length=1)
    action: Literal["ask", "deny"]
    domains_not_in: tuple[str, ...] | None = None
    tables: tuple[str, ...] | None = None
    gt: float | None = None
    matches: str | None = None
    reason: str | None = None

    @field_validator("matches")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_condition(self) -> ArgRule:
        set_ = [
            n for n in ("domains_not_in", "tables", "gt", "matches") if getattr(self, n) is not None
        ]
        if len(set_) != 1:
            raise ValueError(
                f"rule for {self.tool}.{self.arg} needs exactly one of domains_not_in, tables, "
                f"gt, matches (got {', '.join(set_) or 'none'})"
            )
        return self

    def describe(self) -> str:
        """Say what the rule checks, for refusals and approval requests."""
        if self.reason:
            return self.reason
        if self.domains_not_in is not None:
            return f"{self.arg} outside {', '.join(self.domains_not_in)}"
        if self.tables is not None:
            return f"{self.arg} touches {', '.join(self.tables)}"
        if self.gt is not None:
            return f"{self.arg} over {self.gt:g}"
        return f"{self.arg} matches {self.matches!r}"

    def hits(self, args: Mapping[str, Any]) -> bool:
        """Tell whether a call's arguments meet this rule's condition."""
        if self.arg not in args:
            return False
        value = args[self.arg]
        if self.domains_not_in is not None:
            allowed = [d.lower().lstrip("@.") for d in self.domains_not_in]
            return any(not _domain_allowed(a, allowed) for a in _addresses(value))
        if self.tables is not None:
            wanted = {t.lower() for t in self.tables}
            return bool(wanted & _sql_identifiers(str(value)))
        if self.gt is not None:
            number = _number(value)
            return number is not None and number > self.gt
        return self.matches is not None and re.search(self.matches, str(value)) is not None


def _addresses(value: Any) -> list[str]:
    items = value if isinstance(value, list | tuple) else re.split(r"[,;\s]+", str(value))
    return [str(i).strip() for i in items if str(i).strip()]


def _domain_allowed(address: str, allowed: Sequence[str]) -> bool:
    domain = address.rsplit("@", 1)[-1].strip().strip(">").lower() if "@" in address else ""
    return any(domain == d or domain.endswith("." + d) for d in allowed)


def _sql_identifiers(sql: str) -> set[str]:
    """Return every identifier in a SQL text, unquoted and without schema, lower-cased.

    Matching any mention (not only after FROM/JOIN) errs on the side of asking.
    """
    names: set[str] = set()
    for quoted, bare in _SQL_IDENTIFIER.findall(sql):
        names.add((quoted or bare).lower())
    return names


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).replace(",", "").strip())
    except ValueError:
        return None


class CallDecision(NamedTuple):
    """The policy's answer for one call, and why."""

    decision: Decision
    reason: str


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Map each tool call to allow, ask or deny."""

    ask_tiers: frozenset[Tier] = frozenset({"irreversible", "destructive"})
    deny_tiers: frozenset[Tier] = frozenset()
    tier_overrides: Mapping[str, Tier] = field(default_factory=dict)
    allow_tools: frozenset[str] | None = None
    rules: tuple[ArgRule, ...] = ()

    def tier_of(self, tool: str, tiers: Mapping[str, Tier]) -> Tier | None:
        """Return the effective tier of a tool, or None for an unknown tool."""
        if tool not in tiers:
            return None
        return self.tier_overrides.get(tool, tiers[tool])

    def decide(self, tool: str, tiers: Mapping[str, Tier]) -> Decision:
        """Decide by tool alone (what is offered to the model): unknown or disallowed is denied."""
        return self._by_tool(tool, tiers).decision

    def _by_tool(self, tool: str, tiers: Mapping[str, Tier]) -> CallDecision:
        tier = self.tier_of(tool, tiers)
        if tier is None:
            return CallDecision("deny", f"unknown tool {tool!r}")
        if self.allow_tools is not None and tool not in self.allow_tools:
            return CallDecision("deny", f"tool {tool!r} is not in this profile")
        if tier in self.deny_tiers:
            return CallDecision("deny", f"tier {tier} is denied")
        if tier in self.ask_tiers:
            return CallDecision("ask", f"tier {tier} needs approval")
        return CallDecision("allow", f"tier {tier}")

    def decide_call(
        self,
        tool: str,
        args: Mapping[str, Any],
        tiers: Mapping[str, Tier],
        *,
        tainted: bool = False,
    ) -> CallDecision:
        """Decide one call from its tool, its arguments and the run's taint."""
        verdict = self._by_tool(tool, tiers)
        if verdict.decision == "deny":
            return verdict
        for rule in self.rules:
            if rule.tool == tool and rule.hits(args):
                if _STRICTNESS[rule.action] > _STRICTNESS[verdict.decision]:
                    verdict = CallDecision(rule.action, f"rule: {rule.describe()}")
                if verdict.decision == "deny":
                    return verdict
        if tainted and verdict.decision == "allow" and self.tier_of(tool, tiers) in CHANGING_TIERS:
            verdict = CallDecision(
                "ask", "the run has seen instruction-like tool output (tainted); changes need approval"
            )
        return verdict


class Profile(BaseModel):
    """A named task profile in the policy file."""

    model_config = ConfigDict(extra="forbid")

    tools: tuple[str, ...] = Field(description="Tools this profile may use; others are never offered.")
    tiers: dict[str, Tier] = Field(default_factory=dict, description="Tier overrides.")
    ask_tiers: tuple[Tier, ...] | None = None
    deny_tiers: tuple[Tier, ...] | None = None
    rules: tuple[ArgRule, ...] = ()
    egress_allowlist: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _rules_name_profile_tools(self) -> Profile:
        for rule in self.rules:
            if rule.tool not in self.tools:
                raise ValueError(f"rule for {rule.tool!r} names a tool outside this profile")
        for name in self.tiers:
            if name not in self.tools:
                raise ValueError(f"tier override for {name!r} names a tool outside this profile")
        return self


class PolicyFile(BaseModel):
    """The policy file: named profiles and which one applies by default."""

    model_config = ConfigDict(extra="forbid")

    default_profile: str | None = None
    profiles: dict[str, Profile]

    @model_validator(mode="after")
    def _default_exists(self) -> PolicyFile:
        if self.default_profile is not None and self.default_profile not in self.profiles:
            raise ValueError(f"default_profile {self.default_profile!r} is not a profile")
        return self

    def context_fields(self, name: str | None, known_tools: Sequence[str] | None = None) -> dict[str, Any]:
        """Return the Context fields of a profile (the default one when no name is given).

        `known_tools`, when given, must include every tool the profile names.
        """
        chosen = name or self.default_profile
        if chosen is None:
            raise ConfigError("no profile chosen and the policy file has no default_profile")
        if chosen not in self.profiles:
            raise ConfigError(
                f"unknown profile {chosen!r}; the policy file has {', '.join(sorted(self.profiles))}"
            )
        profile = self.profiles[chosen]
        if known_tools is not None:
            missing = sorted(set(profile.tools) - set(known_tools))
            if missing:
                raise ConfigError(f"profile {chosen!r} names unknown tools: {', '.join(missing)}")
        fields: dict[str, Any] = {
            "profile": chosen,
            "allowed_tools": profile.tools,
            "tier_overrides": dict(profile.tiers),
            "arg_rules": profile.rules,
            "egress_allowlist": profile.egress_allowlist,
            "ask_tiers": profile.ask_tiers,
            "deny_tiers": profile.deny_tiers,
        }
        return {k: v for k, v in fields.items() if v is not None}


def load_policy_file(path: Path) -> PolicyFile:
    """Read and validate a policy file, with a one-line error for anything wrong."""
    raw = read_toml(path, "policy file")
    try:
        return PolicyFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"policy file {path}: {first_error(exc)}") from None
