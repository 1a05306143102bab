"""Structured logs: every line carries thread id, run id, node and step.

The fields come from context variables, so no call site passes them: inside a graph
node, LangGraph's own run config (a contextvar) names the thread, node and step, and
the run id Warden puts in its metadata; around a run, `log_fields` binds the thread
and run for the code that drives it. JSON lines for machines (`WARDEN_LOG_FORMAT=json`,
the default when stderr is not a terminal), a short human format on a terminal.

Stdlib logging with a small formatter rather than structlog: the project's modules
log through `logging.getLogger(__name__)` like their libraries do, and one formatter
class is all the JSON needs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO, TypeVar

from langchain_core.messages import ToolMessage
from langgraph.config import get_config
from langgraph.errors import GraphInterrupt

from graph.redaction import redact, redact_obj

S = TypeVar("S")
R = TypeVar("R")

PACKAGES = ("graph", "nodes", "tools", "checkpoints")
"""Warden's top-level packages; their loggers get Warden's handler."""
FIELDS = ("thread_id", "run_id", "node", "step")
UNREDACTED = ("ts", "thread_id", "run_id", "step", "duration_ms")
"""Identifiers and numbers that look like phone numbers to the redactor; never secrets."""

_bound: ContextVar[dict[str, Any] | None] = ContextVar("warden_log_fields", default=None)


@contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Attach fields (e.g. thread_id, run_id) to every log line written inside."""
    token = _bound.set({**(_bound.get() or {}), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


def current_fields() -> dict[str, Any]:
    """Return thread id, run id, node and step for the code running now (None if unknown)."""
    fields: dict[str, Any] = dict.fromkeys(FIELDS)
    fields.update(_bound.get() or {})
    try:
        config = get_config()
    except RuntimeError:  # not inside a graph run
        return fields
    metadata = config.get("metadata") or {}
    fields["thread_id"] = (config.get("configurable") or {}).get("thread_id") or fields["thread_id"]
    fields["run_id"] = metadata.get("warden_run_id") or metadata.get("run_id") or fields["run_id"]
    fields["node"] = metadata.get("langgraph_node")
    fields["step"] = metadata.get("langgraph_step")
    return fields


class ContextFilter(logging.Filter):
    """Copy the current thread/run/node/step onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drop a record."""
        for key, value in current_fields().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


def _jsonable(value: dict[str, Any]) -> Any:
    return json.loads(json.dumps(value, default=str))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context and extras.

    Every value passes through `graph.redaction` (all kinds) first: log lines are for
    people and log stores, and a message or extra may quote a tool's error text.
    """

    RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= {k: v for k, v in vars(record).items() if k not in self.RESERVED}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(redact_obj(_jsonable(line), skip_fields=UNREDACTED), default=str)


class HumanFormatter(logging.Formatter):
    """A short line for a person: level, where in the run, message."""

    def format(self, record: logging.LogRecord) -> str:
        """Return `LEVEL [thread node#step] message`."""
        where = " ".join(
            part
            for part in (
                str(getattr(record, "thread_id", None) or "")[:8],
                f"{getattr(record, 'node', '')}#{getattr(record, 'step', '')}"
                if getattr(record, "node", None)
                else "",
            )
            if part
        )
        text = f"{record.levelname:<7} [{where or '-'}] {redact(record.getMessage())}"
        return f"{text}\n{self.formatException(record.exc_info)}" if record.exc_info else text


def configure_logging(
    fmt: Literal["json", "human"] | None, level: str, stream: TextIO | None = None
) -> logging.Handler:
    """Send Warden's log lines to `stream` (stderr) in the chosen format; return the handler."""
    out = stream or sys.stderr
    chosen = fmt or ("human" if out.isatty() else "json")
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if chosen == "json" else HumanFormatter())
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False  # a host (the LangGraph server) must not print them twice
    return handler


_log = logging.getLogger("graph.run")


def logged(
    name: str, node: Callable[[S, R], Awaitable[Any]]
) -> Callable[[S, R], Awaitable[Any]]:
    """Wrap an `async (state, runtime)` node so each execution writes one log line."""

    async def wrapped(state: S, runtime: R) -> Any:
        started = time.perf_counter()
        try:
            update = await node(state, runtime)
        except GraphInterrupt:
            _log.info("awaiting approval", extra={"duration_ms": _ms(started)})
            raise
        except Exception as exc:
            # INFO, without the traceback: the exception propagates to whoever drives the
            # run, which reports it (the CLI as one error line, e.g. for bad decisions).
            _log.info(
                "node raised %s", type(exc).__name__,
                extra={"duration_ms": _ms(started), "error": str(exc)[:500]},
            )
            raise
        extra: dict[str, Any] = {"duration_ms": _ms(started)}
        if isinstance(update, Mapping):
            results = [m for m in update.get("messages") or [] if isinstance(m, ToolMessage)]
            if results:
                extra["tool_results"] = [f"{m.name}:{m.status}" for m in results]
            if update.get("halt_reason"):
                extra["halt_reason"] = update["halt_reason"]
        _log.info("%s done", name, extra=extra)
        return update

    wrapped.__name__ = name
    wrapped.__doc__ = node.__doc__
    return wrapped


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
