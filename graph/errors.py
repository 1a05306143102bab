"""Errors shared by every layer. Each message is one line that names the problem."""

from __future__ import annotations


class WardenError(Exception):
    """Base class for Warden's expected errors."""


class BadInput(WardenError):
    """The caller asked for something invalid: unknown thread, bad decisions (exit code 2)."""


class ConfigError(BadInput):
    """Invalid configuration, budgets, script file or model string (exit code 2)."""


class ModelOutputError(WardenError):
    """The model produced output Warden cannot act on (malformed tool calls)."""


class ScriptExhaustedError(WardenError):
    """A scripted model was asked for more turns than its script has."""
