"""`sql_query` on a real Postgres: reads work, and the DATABASE refuses every write.

Each refusal is followed by a check that the rows are exactly as before.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import psycopg
import pytest
from langchain_core.messages import ToolCall

from nodes.act import execute
from tools.errors import ToolError, ToolRefused, TransientToolError
from tools.registry import ToolSpec
from tools.sql import leading_keyword, sql_query_tool

ROWS = 300


@pytest.fixture(scope="module")
def dsn(database_url: str) -> Iterator[str]:
    """The module's database with a table `items` of ROWS rows."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items, items_copy")
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric)")
        conn.execute(
            "INSERT INTO items SELECT g, 'item-' || g, g * 1.5 FROM generate_series(1, %s) g",
            (ROWS,),
        )
        conn.execute(
            "CREATE FUNCTION sneaky_delete() RETURNS int LANGUAGE sql AS "
            "'DELETE FROM items WHERE id = 1 RETURNING 1'"
        )
    yield database_url


def snapshot(dsn: str) -> tuple[int, str, bool]:
    """Row count, a checksum of every row, and whether any other table appeared."""
    with psycopg.connect(dsn) as conn:
        count, digest = conn.execute(
            "SELECT count(*), md5(string_agg(id || name || price, ',' ORDER BY id)) FROM items"
        ).fetchone()  # type: ignore[misc]
        other = conn.execute("SELECT to_regclass('items_copy') IS NOT NULL").fetchone()
    return count, digest, bool(other and other[0])


@pytest.fixture(scope="module")
def tool(dsn: str) -> ToolSpec:
    return sql_query_tool(dsn, row_cap=200, statement_timeout_ms=400)


async def query(spec: ToolSpec, sql: str, params: list | None = None) -> dict:
    args: dict = {"query": sql}
    if params is not None:
        args["params"] = params
    return json.loads(await spec.tool.ainvoke(args))


def test_spec(tool: ToolSpec) -> None:
    assert (tool.name, tool.tier, tool.idempotent) == ("sql_query", "read", True)
    assert tool.args_model is not None
    assert set(tool.args_model.model_json_schema()["properties"]) == {"query", "params"}


async def test_select_with_row_cap(tool: ToolSpec, dsn: str) -> None:
    result = await query(tool, "SELECT id, name, price FROM items ORDER BY id")
    assert result["columns"] == ["id", "name", "price"]
    assert result["row_count"] == 200 and len(result["rows"]) == 200
    assert result["truncated"] is True and "first 200 rows" in result["note"]
    assert result["rows"][0] == [1, "item-1", "1.5"]
    small = sql_query_tool(dsn, row_cap=5)
    few = await query(small, "SELECT id FROM items ORDER BY id")
    assert few["rows"] == [[1], [2], [3], [4], [5]] and few["truncated"] is True
    exact = await query(small, "SELECT id FROM items WHERE id <= 5 ORDER BY id")
    assert exact["row_count"] == 5 and exact["truncated"] is False


async def test_parameters_percent_signs_and_other_reads(tool: ToolSpec) -> None:
    by_id = await query(tool, "SELECT name FROM items WHERE id = $1", [42])
    assert by_id["rows"] == [["item-42"]]
    like = await query(tool, "SELECT count(*) AS n FROM items WHERE name LIKE 'item-1%'")
    assert like == {"columns": ["n"], "rows": [[111]], "row_count": 1, "truncated": False}
    cte = await query(tool, "-- a comment\nWITH t AS (SELECT max(id) AS m FROM items) TABLE t")
    assert cte["rows"] == [[ROWS]]
    show = await query(tool, "SHOW transaction_read_only")
    assert show["rows"] == [["on"]]
    empty = await query(tool, "SELECT id FROM items WHERE false")
    assert empty == {"columns": [], "rows": [], "row_count": 0, "truncated": False}


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO items VALUES (1000, 'x', 1)",
        "UPDATE items SET name = 'pwned'",
        "DELETE FROM items",
        "DROP TABLE items",
        "CREATE TABLE items_copy (id int)",
        "TRUNCATE items",
        "ALTER TABLE items ADD COLUMN evil text",
        "GRANT ALL ON items TO PUBLIC",
        "WITH gone AS (DELETE FROM items RETURNING *) SELECT count(*) FROM gone",
        "SELECT * INTO items_copy FROM items",
        "SELECT sneaky_delete()",
        "EXPLAIN ANALYZE DELETE FROM items",
        "/* looks harmless */ (SELECT 1) UNION ALL SELECT sneaky_delete()",
    ],
)
async def test_writes_and_ddl_are_refused_by_the_database(
    tool: ToolSpec, dsn: str, sql: str
) -> None:
    before = snapshot(dsn)
    with pytest.raises(ToolRefused) as err:
        await query(tool, sql)
    # The message is Postgres's own read-only error, not a client-side keyword match.
    assert "the database refused a write" in str(err.value)
    assert "read-only transaction" in str(err.value)
    assert snapshot(dsn) == before
    assert before[0] == ROWS


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; DELETE FROM items",
        "SELECT 1; COMMIT; DELETE FROM items",
        "SELECT 1;\nDROP TABLE items;",
    ],
)
async def test_multiple_statements_are_refused_by_the_server(
    tool: ToolSpec, dsn: str, sql: str
) -> None:
    before = snapshot(dsn)
    # Postgres's own extended-protocol error: the second statement never reached a parser
    # that could run it.
    with pytest.raises(ToolRefused, match="cannot insert multiple commands"):
        await query(tool, sql)
    assert snapshot(dsn) == before


@pytest.mark.parametrize(
    "sql",
    [
        "COPY items TO STDOUT",
        "/* x */ -- y\n  COPY (SELECT 1) TO PROGRAM 'touch /tmp/pwned'",
        "SET TRANSACTION READ WRITE",
        "COMMIT",
        "DO $$ BEGIN DELETE FROM items; END $$",
        "CALL anything()",
        "LOAD 'evil'",
        "LOCK TABLE items",
    ],
)
async def test_utility_statements_outside_read_only_are_refused(
    tool: ToolSpec, dsn: str, sql: str
) -> None:
    before = snapshot(dsn)
    with pytest.raises(ToolRefused, match="statements are not allowed"):
        await query(tool, sql)
    assert snapshot(dsn) == before


def test_leading_keyword() -> None:
    assert leading_keyword("  /* a /* nested */ b */ -- c\n ((select 1))") == "select"
    assert leading_keyword("/* unterminated select") == ""
    assert leading_keyword("Copy t TO STDOUT") == "copy"


async def test_statement_timeout(tool: ToolSpec, dsn: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError, match="ran longer than the 400 ms statement timeout"):
        await query(tool, "SELECT pg_sleep(5)")
    assert time.perf_counter() - started < 3
    # The connection was not left behind in the server (its backend exits asynchronously).
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(40):
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'warden-sql-query'"
            ).fetchone()
            if left == (0,):
                break
            await asyncio.sleep(0.05)
    assert left == (0,)


async def test_sql_errors_are_tool_errors(tool: ToolSpec) -> None:
    with pytest.raises(ToolError, match=r"\[42P01\].*no_such_table"):
        await query(tool, "SELECT * FROM no_such_table")
    with pytest.raises(ToolError, match=r"\[42601\]"):
        await query(tool, "SELEC 1")


async def test_unreachable_database_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = sql_query_tool(f"postgresql://nobody@127.0.0.1:{port}/none")
    with pytest.raises(TransientToolError, match="cannot reach the database"):
        await query(spec, "SELECT 1")


async def test_through_act(tool: ToolSpec, dsn: str) -> None:
    before = snapshot(dsn)
    call = ToolCall(name="sql_query", args={}, id="q1")
    refused = await execute(tool, call, {"query": "DELETE FROM items"}, 10)
    assert refused.status == "error"
    assert refused.text.startswith("sql_query failed: the database refused a write")
    extra = await execute(tool, call, {"query": "SELECT 1", "commit": True}, 10)
    assert extra.response_metadata["warden"]["error"] == "invalid_arguments"
    huge = await execute(tool, call, {"query": "SELECT 1" + " " * 20_000}, 10)
    assert huge.response_metadata["warden"]["error"] == "invalid_arguments"
    ok = await execute(tool, call, {"query": "SELECT count(*) FROM items"}, 10)
    assert json.loads(ok.text)["rows"] == [[ROWS]]
    assert snapshot(dsn) == before
