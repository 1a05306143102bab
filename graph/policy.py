"""Risk tiers and the approval policy: allow, ask or deny, per tool call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Tier = Literal["read", "write", "irreversible", "destructive"]
TIERS: tuple[Tier, ...] = ("read", "write", "irreversible", "destructive")
Decision = Literal["allow", "ask", "deny"]


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


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Map each tool call to allow, ask or deny from its risk tier."""

    ask_tiers: frozenset[Tier] = frozenset({"irreversible", "destructive"})
    deny_tiers: frozenset[Tier] = frozenset()
    tier_overrides: Mapping[str, Tier] = field(default_factory=dict)
    allow_tools: frozenset[str] | None = None

    def tier_of(self, tool: str, tiers: Mapping[str, Tier]) -> Tier | None:
        """Return the effective tier of a tool, or None for an unknown tool."""
        if tool not in tiers:
            return None
        return self.tier_overrides.get(tool, tiers[tool])

    def decide(self, tool: str, tiers: Mapping[str, Tier]) -> Decision:
        """Decide one call: unknown or disallowed tools are denied."""
        tier = self.tier_of(tool, tiers)
        if tier is None or (self.allow_tools is not None and tool not in self.allow_tools):
            return "deny"
        if tier in self.deny_tiers:
            return "deny"
        if tier in self.ask_tiers:
            return "ask"
        return "allow"
