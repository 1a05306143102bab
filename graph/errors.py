"""Errors shared by every layer. Each message is one line that names the problem."""

from __future__ import annotations

from pydantic import ValidationError


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


def error_location(exc: ValidationError) -> tuple[str, str]:
    """Return where the first validation error is (dotted path, may be empty) and its message."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return where, err["msg"].removeprefix("Value error, ")


def first_error(exc: ValidationError) -> str:
    """Summarise a validation error in one line: `where: message`."""
    where, msg = error_location(exc)
    return f"{where}: {msg}" if where else msg
