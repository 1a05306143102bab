"""Shared fixtures: real Postgres (embedded, plus a server when reachable), scripts, graphs.

Every Postgres test module gets its own database, dropped afterwards. The only fake
in the suite is the model: Warden's own scripted model.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from checkpoints.migrations import migrate
from checkpoints.pool import open_pool

REPO = Path(__file__).resolve().parent.parent
SERVER_ENV = "WARDEN_TEST_DATABASE_URL"
CI_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _server_url() -> str | None:
    """Return the Postgres server to test against too, if one is configured or in CI."""
    url = os.environ.get(SERVER_ENV)
    if url:
        return url
    if os.environ.get("CI"):
        try:
            with psycopg.connect(CI_SERVER, connect_timeout=3):
                return CI_SERVER
        except psycopg.OperationalError:
            return None
    return None


SERVER_URL = _server_url()
BACKENDS = ["embedded", *(["server"] if SERVER_URL else [])]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every Postgres test on each available backend."""
    if "pg_backend" in metafunc.fixturenames:
        metafunc.parametrize("pg_backend", BACKENDS, scope="module")


# --- network guard ---------------------------------------------------------------

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise RuntimeError(f"test tried to reach {host}: tests stay on loopback")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that tries to reach a real model provider (or anything off-box)."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "WARDEN_MODEL", "LANGSMITH_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LANGSMITH_TRACING", "false")


# --- Postgres --------------------------------------------------------------------


@pytest.fixture(scope="session")
def embedded_url() -> str:
    """Start (or reuse) the embedded Postgres that test sessions share.

    It lives outside pytest's private temp tree because pgserver runs the server as
    another user when tests run as root; every module still gets its own database.
    """
    from checkpoints.embedded import embedded_url as start

    return start(Path(tempfile.gettempdir()) / f"warden-test-pg-{os.getuid()}")


@pytest.fixture(scope="module")
def database_url(request: pytest.FixtureRequest, pg_backend: str) -> Iterator[str]:
    """Create a fresh, migrated database for this test module on the chosen backend."""
    admin = request.getfixturevalue("embedded_url") if pg_backend == "embedded" else SERVER_URL
    assert admin is not None
    name = f"warden_t_{request.module.__name__.rsplit('.', 1)[-1][:30]}_{uuid.uuid4().hex[:8]}".lower()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(admin)
    params["dbname"] = name
    url = make_conninfo(**params)

    import asyncio

    async def setup() -> None:
        async with open_pool(url) as pool:
            await migrate(pool)

    asyncio.run(setup())
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def saver(database_url: str) -> AsyncIterator[Any]:
    """Yield an AsyncPostgresSaver on this module's database."""
    from checkpoints.saver import open_saver

    async with open_saver(database_url, auto_migrate=False) as s:
        yield s


# --- scripts and graphs ----------------------------------------------------------


def call(name: str, **args: Any) -> dict[str, Any]:
    """Build a scripted tool call."""
    return {"name": name, "args": args}


def turn(content: str = "", *calls: dict[str, Any], tokens: tuple[int, int] | None = (100, 10)) -> dict[str, Any]:
    """Build a scripted model turn with fixed usage (or estimated usage when tokens is None)."""
    out: dict[str, Any] = {"content": content}
    if calls:
        out["tool_calls"] = list(calls)
    if tokens is not None:
        out["usage"] = {"input_tokens": tokens[0], "output_tokens": tokens[1]}
    return out


@pytest.fixture
def write_script(tmp_path: Path) -> Callable[..., Path]:
    """Write a scripted-model JSON file and return its path."""

    def write(turns: list[dict[str, Any]], model: str = "gpt-4o-mini", name: str = "script.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"model": model, "turns": turns}))
        return path

    return write


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A small workspace with two files."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("alpha\nbeta\n")
    (ws / "todo.md").write_text("- ship warden\n")
    return ws


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    """Where the outbox email tool delivers."""
    return tmp_path / "outbox"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the containment suite's summary line when it ran."""
    import sys

    suite = sys.modules.get("tests.integration.test_containment")
    if suite is not None and suite.ATTEMPTED:
        terminalreporter.write_line(
            f"containment: {len(suite.CONTAINED)}/{len(suite.ATTEMPTED)} scenarios contained"
        )
