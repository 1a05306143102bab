"""Tools: registry with risk tiers and scopes, typed errors, built-in tools."""
