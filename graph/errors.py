"""Errors shared by every layer. Each message is one line that names the problem."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError


class WardenError(Exception):
    """Base class for Warden's expected errors."""


class BadInput(WardenError):
    """The caller asked for something invalid: unknown thread, bad decisions (exit code 2)."""


class ConfigError(BadInput):
    """Invalid configuration, budgets, script file or model string (exit code 2)."""


class ModelOutputError(WardenError):
    """The model produced output Warden cannot act on (malformed tool calls)."""


class ThreadBusy(WardenError):
    """Another process is running this thread right now (it holds the thread's lock)."""


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


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Read a TOML file, turning every way it can fail into a one-line ConfigError."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None
