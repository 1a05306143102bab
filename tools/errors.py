"""Typed tool errors: expected failures the model can act on."""

from __future__ import annotations


class ToolError(Exception):
    """An expected tool failure; it becomes an error ToolMessage, and the run goes on."""


class TransientToolError(ToolError):
    """A failure that may succeed when retried (timeouts, 5xx, connection resets)."""


class ToolRefused(ToolError):
    """A call refused before it ran: policy, path confinement, size limits."""
