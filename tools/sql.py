"""`sql_query`: read-only SQL against a configured Postgres DSN.

The database enforces the safety, not string matching:

- every call opens its own connection and runs in `BEGIN READ ONLY`, so INSERT, UPDATE,
  DELETE, MERGE, DDL, `SELECT ... INTO`, data-modifying CTEs and writing functions are
  refused by Postgres itself (SQLSTATE 25006); the transaction is always rolled back;
- `SET LOCAL statement_timeout` bounds the query (lock waits included);
- the query is sent with the extended query protocol (psycopg's `stream()`, which
  always uses it), and Postgres rejects more than one statement in a single Parse
  message ("cannot insert multiple commands into a prepared statement"), so
  `SELECT 1; DELETE FROM t` never runs its second half;
- rows are streamed in single-row mode and the stream stops after `row_cap` rows (the
  query is then cancelled), so a huge result never reaches memory.

A read-only transaction does not stop a few utility statements that act outside the
data (COPY TO a file or program, DO, CALL, LOAD, transaction control, SET, LISTEN,
NOTIFY, ...). Those are refused by their leading keyword as defence in depth. Server-side
functions that reach outside the database (`pg_read_file`, `lo_export`, `dblink`) are a
matter of privileges: give the tool a DSN whose role can only read what it should.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import psycopg
from langchain_core.tools import StructuredTool
from psycopg import errors as pg_errors
from pydantic import BaseModel, ConfigDict, Field

from tools.errors import ToolError, ToolRefused, TransientToolError
from tools.registry import ToolSpec

MAX_QUERY_CHARS = 20_000
MAX_PARAMS = 50
MAX_CELL_CHARS = 1_000
MAX_OUTPUT_CHARS = 100_000
CONNECT_TIMEOUT_S = 5

# Utility statements a read-only transaction does not stop (or that end it).
BLOCKED_KEYWORDS = frozenset(
    """abort analyse analyze begin call checkpoint close cluster commit copy deallocate
    declare discard do end execute fetch import listen load lock move notify prepare
    reassign refresh reindex release reset rollback savepoint security set start
    unlisten vacuum""".split()
)
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|\()+")
_WORD = re.compile(r"[A-Za-z_]+")

Scalar = str | int | float | bool | None


class SqlQueryArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="ONE read-only SQL statement (SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN). "
        "Use $1, $2, ... for parameters.",
    )
    params: list[Scalar] = Field(
        default_factory=list,
        max_length=MAX_PARAMS,
        description="Values for $1, $2, ... placeholders, in order.",
    )


def _skip_block_comment(sql: str, start: int) -> int:
    """Return the index after the (possibly nested) block comment starting at `start`."""
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def leading_keyword(sql: str) -> str:
    """Return the statement's first keyword, lower-cased, skipping comments and `(`."""
    i = 0
    while True:
        match = _LEADING_NOISE.match(sql, i)
        if match:
            i = match.end()
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        else:
            break
    word = _WORD.match(sql, i)
    return word.group(0).lower() if word else ""


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, Decimal | UUID):
        value = str(value)
    elif isinstance(value, datetime | date | time):
        value = value.isoformat()
    elif isinstance(value, timedelta):
        value = str(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        value = "\\x" + bytes(value[:MAX_CELL_CHARS]).hex()
    elif not isinstance(value, str):
        value = json.dumps(value, default=str, ensure_ascii=False)
    if len(value) > MAX_CELL_CHARS:
        value = value[:MAX_CELL_CHARS] + f"... [{len(value) - MAX_CELL_CHARS} more chars]"
    return value


def _database_error(exc: psycopg.Error, timeout_ms: int) -> ToolError:
    """Map a psycopg error to the tool error the model sees."""
    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag else None) or str(exc).strip()
    state = getattr(exc, "sqlstate", None)
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return ToolRefused(f"the database refused a write: {primary}. Only reads are allowed.")
    if isinstance(exc, pg_errors.QueryCanceled):
        return ToolError(
            f"query cancelled: it ran longer than the {timeout_ms} ms statement timeout "
            "(make it cheaper: add WHERE or LIMIT)"
        )
    if "multiple commands" in primary:
        return ToolRefused(f"only one SQL statement per call is allowed ({primary})")
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return TransientToolError(f"database conflict, retry: {primary}")
    if isinstance(exc, psycopg.OperationalError) and state is None:
        return TransientToolError(f"cannot reach the database: {primary}")
    return ToolError(f"database error{f' [{state}]' if state else ''}: {primary}")


class SqlRunner:
    """Runs one read-only statement per call on a fresh connection."""

    def __init__(self, dsn: str, *, row_cap: int, statement_timeout_ms: int) -> None:
        self.dsn = dsn
        self.row_cap = row_cap
        self.timeout_ms = statement_timeout_ms

    async def query(self, sql: str, params: list[Scalar] | None = None) -> str:
        """Run `sql` read-only and return a compact JSON table."""
        keyword = leading_keyword(sql)
        if not keyword:
            raise ToolRefused("empty query: send one SQL statement")
        if keyword in BLOCKED_KEYWORDS:
            raise ToolRefused(
                f"{keyword.upper()} statements are not allowed; send one read-only query "
                "(SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN)"
            )
        try:
            return await self._run(sql, params or None)
        except psycopg.Error as exc:
            raise _database_error(exc, self.timeout_ms) from None

    async def _run(self, sql: str, params: list[Scalar] | None) -> str:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="warden-sql-query",
            cursor_factory=psycopg.AsyncRawCursor,
        )
        async with conn:
            await conn.execute("BEGIN READ ONLY")
            await conn.execute(f"SET LOCAL statement_timeout = {int(self.timeout_ms)}")
            cur = conn.cursor()
            rows: list[list[Any]] = []
            truncated = False
            size = 0
            # aclosing: leaving the stream early cancels the rest of the query.
            stream = cast(AsyncGenerator[Any, None], cur.stream(sql, params))
            async with aclosing(stream):
                async for row in stream:
                    if len(rows) >= self.row_cap or size > MAX_OUTPUT_CHARS:
                        truncated = True
                        break
                    cells = [_cell(v) for v in row]
                    size += len(json.dumps(cells, ensure_ascii=False, default=str))
                    rows.append(cells)
            # In single-row mode an empty result carries no row description.
            columns = [c.name for c in cur.description] if cur.description else []
            await conn.execute("ROLLBACK")
        out: dict[str, Any] = {
            "columns": columns,
            "rows": rows,
            "row_count": len(rows),
            "truncated": truncated,
        }
        if truncated:
            out["note"] = (
                f"only the first {len(rows)} rows are shown; narrow the query "
                "(WHERE, LIMIT, aggregates) to see the rest"
            )
        return json.dumps(out, ensure_ascii=False, default=str)


def sql_query_tool(dsn: str, *, row_cap: int = 200, statement_timeout_ms: int = 5000) -> ToolSpec:
    """Return the `sql_query` tool over `dsn` (tier read, scope `sql:read`)."""
    if row_cap <= 0 or statement_timeout_ms <= 0:
        raise ValueError("row_cap and statement_timeout_ms must be > 0")
    runner = SqlRunner(dsn, row_cap=row_cap, statement_timeout_ms=statement_timeout_ms)

    async def sql_query(query: str, params: list[Scalar] | None = None) -> str:
        """Run one read-only SQL query on the configured Postgres database.

        Returns JSON with columns and rows (capped). Writes and DDL are refused by the
        database; send exactly one statement.
        """
        return await runner.query(query, params)

    return ToolSpec(
        tool=StructuredTool.from_function(
            coroutine=sql_query, args_schema=SqlQueryArgs, description=inspect.getdoc(sql_query)
        ),
        tier="read",
        scopes=frozenset({"sql:read"}),
        # The statement timeout fires first; this covers connecting and streaming.
        timeout=statement_timeout_ms / 1000 + CONNECT_TIMEOUT_S + 5,
        idempotent=True,
    )
