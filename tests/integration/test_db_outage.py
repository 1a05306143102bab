"""The database going away: stopped mid-run, restarted, sessions terminated.

Each test uses its OWN Postgres, never the shared ones: a private server from
Debian's binaries (initdb/pg_ctl as the `postgres` user) on a free port, or a private
embedded pgserver data directory that Warden itself starts, as it does on a machine
without a server. Asserted: a run whose database stops ends with a one-line error
(exit 1) and stays resumable; the pool recovers once the database is back (health
check on checkout) and after `pg_terminate_backend` of its sessions; resume completes
with the usage of an uninterrupted run; no checkpoint written before the outage is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from checkpoints.pool import open_pool
from tests.conftest import REPO, call, turn
from tests.support.gate_tools import GATE_ENV, wait_at_gate
from tests.support.net import free_port

pytestmark = pytest.mark.slow

WARDEN = Path(sys.executable).parent / "warden"
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
# The third tool call waits at a gate (tests/support/gate_tools.py) that the test opens
# only after it has stopped the database or ended the sessions: the outage provably
# lands mid-run, whatever the machine's load (model delays could be outlasted).
TURNS = [
    turn(f"reading part {i}", call("read_file", path=f"part{i}.txt")) for i in range(6)
] + [turn("all read")]
TURNS[2] = turn("waiting at the gate", call("wait_for_gate", label="outage"))
GATED_TOOLS = '[[tools]]\npath = "tests.support.gate_tools:wait_for_gate"\ntier = "read"\n'
# Checkpoints of an uninterrupted run: input, loop start, then plan/act/observe per tool
# turn, then plan and halt.
TOTAL_CHECKPOINTS = 2 + 3 * (len(TURNS) - 1) + 2


def as_postgres(*cmd: str) -> list[str]:
    """Run a Postgres binary as the `postgres` user when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@dataclass
class PrivateServer:
    """A Postgres server of our own, on a free loopback port, that tests may stop."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg(self, name: str, *args: str) -> None:
        subprocess.run(
            as_postgres(f"{PG_BIN[-1]}/{name}", *args),
            check=True, capture_output=True, timeout=120,
        )

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root}"
        self.pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        self.pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    if not PG_BIN:
        # On a developer machine without them the private-server tests cannot run; in
        # CI (`.ci/run` sets CI) a missing part must fail the run, not hide in a skip.
        missing = "no Postgres server binaries in /usr/lib/postgresql"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: the database-outage tests need them in CI")
        pytest.skip(missing)
    root = Path(tempfile.mkdtemp(prefix="warden-outage-"))
    root.chmod(0o755)
    made = PrivateServer(root)
    made.init()
    made.start()
    try:
        yield made
    finally:
        subprocess.run(
            as_postgres(f"{PG_BIN[-1]}/pg_ctl", "-D", str(made.data), "-m", "immediate", "stop"),
            capture_output=True, timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Embedded:
    """A private embedded (pgserver) data directory, started by Warden itself."""

    data_dir: Path

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def url(self) -> str:
        """Join the server Warden started (never stopping it on exit); return its URL."""
        deadline = time.monotonic() + 90
        while not (self.pgdata / "postmaster.pid").exists():
            assert time.monotonic() < deadline, "the embedded server never started"
            time.sleep(0.05)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pgserver's unused runtime-dir warning
            import pgserver

            return pgserver.get_server(self.pgdata, cleanup_mode=None).get_uri("postgres")

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        user = "pgserver" if os.geteuid() == 0 else None
        pg_ctl(["-m", "immediate", "-w", "stop"], pgdata=self.pgdata, user=user)


@pytest.fixture
def embedded() -> Iterator[Embedded]:
    # Outside pytest's 0700 temp tree: as root, pgserver runs Postgres as another user.
    root = Path(tempfile.mkdtemp(prefix="warden-outage-embedded-"))
    root.chmod(0o755)
    try:
        yield Embedded(root / "data")
    finally:
        pgdata = root / "data" / "pgdata"
        if (pgdata / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
                Embedded(root / "data").stop()
        shutil.rmtree(root, ignore_errors=True)


def cli_env(tmp_path: Path, *, url: str | None, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "WARDEN_MODEL")}
    env.pop("WARDEN_DATABASE_URL", None)
    if url:
        env["WARDEN_DATABASE_URL"] = url
    env["WARDEN_DATA_DIR"] = str(data_dir)
    return env


def warden(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    json_flag = [] if args[0] == "db" else ["--json"]
    proc = subprocess.run(
        [str(WARDEN), *args, *json_flag], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=180, stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    parsed = json.loads(proc.stdout) if json_flag and proc.stdout.strip() else {}
    return proc.returncode, parsed, proc.stderr


def count_checkpoints(url: str, thread: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''",
            (thread,),
        ).fetchone()
    return int(row[0]) if row else 0


def write_parts(workspace: Path) -> None:
    for i in range(len(TURNS) - 1):
        (workspace / f"part{i}.txt").write_text(f"part {i}\n")


def gated(env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """Return the env, the config file and the gate for runs of TURNS."""
    gate = tmp_path / "gate-open"
    config = tmp_path / "gated.toml"
    config.write_text(GATED_TOOLS)
    return env | {GATE_ENV: str(gate), "PYTHONPATH": str(REPO)}, config, gate


def start_run(
    env: dict[str, str], cwd: Path, script: Path, workspace: Path, thread: str, config: Path
) -> Any:
    return subprocess.Popen(
        [
            str(WARDEN), "run", "read the notes", "--model", f"scripted:{script}",
            "--config", str(config), "--workspace", str(workspace), "--thread-id", thread,
            "--no-input", "--json",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def assert_complete(outcome: dict[str, Any]) -> None:
    assert outcome["status"] == "completed", outcome
    assert outcome["final_answer"] == "all read"
    usage = outcome["usage"]
    assert usage["model_calls"] == len(TURNS)
    assert usage["tool_calls"] == len(TURNS) - 1
    assert usage["input_tokens"] == 100 * len(TURNS)


def outage_run(
    env: dict[str, str], url_of: Any, stop: Any, tmp_path: Path, write_script: Any, workspace: Path
) -> tuple[str, int, str]:
    """Start a run, stop the database mid-way; return thread, checkpoints seen, stderr.

    `env` must come from `gated` (the gate file in it is opened after the stop)."""
    script = write_script(TURNS)
    write_parts(workspace)
    thread = f"outage-{uuid.uuid4()}"
    proc = start_run(env, tmp_path, script, workspace, thread, tmp_path / "gated.toml")
    gate = Path(env[GATE_ENV])
    try:
        wait_at_gate(gate, proc)
        seen = count_checkpoints(url_of(), thread)
        assert seen >= 6  # input, loop start, two turns of plan, act and observe, a plan
        stop()
        gate.touch()
        _, stderr = proc.communicate(timeout=120)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database unavailable: "), stderr
    return thread, seen, stderr


def test_server_stopped_mid_run_then_resumed(
    server: PrivateServer, tmp_path: Path, write_script, workspace: Path
) -> None:
    env, _, _ = gated(cli_env(tmp_path, url=server.url, data_dir=tmp_path / "data"), tmp_path)
    code, _, err = warden(env, tmp_path, "db", "migrate")
    assert code == 0, err
    thread, seen, _ = outage_run(
        env, lambda: server.url, server.stop, tmp_path, write_script, workspace
    )
    code, _, err = warden(env, tmp_path, "status", thread)  # still down: clear error, exit 1
    assert code == 1 and err.startswith("error: database unavailable: "), err
    server.start()
    assert count_checkpoints(server.url, thread) >= seen  # nothing written before is lost
    code, status, err = warden(env, tmp_path, "status", thread)
    assert (code, status["status"]) == (1, "in_progress"), err
    code, final, err = warden(env, tmp_path, "resume", thread)
    assert code == 0, err
    assert_complete(final)
    assert count_checkpoints(server.url, thread) == TOTAL_CHECKPOINTS


def test_embedded_stopped_mid_run_then_resumed(
    embedded: Embedded, tmp_path: Path, write_script, workspace: Path
) -> None:
    env, _, _ = gated(cli_env(tmp_path, url=None, data_dir=embedded.data_dir), tmp_path)
    thread, seen, _ = outage_run(env, embedded.url, embedded.stop, tmp_path, write_script, workspace)
    # The next command starts the embedded server again, as on a user's machine.
    code, status, err = warden(env, tmp_path, "status", thread)
    assert (code, status["status"]) == (1, "in_progress"), err
    assert count_checkpoints(embedded.url(), thread) >= seen
    code, final, err = warden(env, tmp_path, "resume", thread)
    assert code == 0, err
    assert_complete(final)


async def _select_one(pool: Any) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT 1 AS one")).fetchone()
    return int(row["one"])


async def _terminate_others(url: str, application_name: str) -> int:
    """Terminate the sessions of our own pool (by application_name) on our own server.

    Waits until they have ended: the pool trusts a connection it handed out moments
    ago unless its socket already shows the session's end (checkpoints.pool), and a
    session signalled but not yet gone shows nothing.
    """
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        rows = await (
            await admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application_name,),
            )
        ).fetchall()
    return len(rows)


def test_pool_recovers_after_restart_and_terminated_sessions(server: PrivateServer) -> None:
    name = f"warden-outage-{uuid.uuid4().hex[:8]}"
    url = f"{server.url}?application_name={name}"

    async def scenario() -> None:
        async with open_pool(url, min_size=2, connect_timeout=3) as pool:
            assert await _select_one(pool) == 1
            assert await _terminate_others(server.url, name) >= 1
            assert await _select_one(pool) == 1  # broken connections are replaced on checkout
            await asyncio.to_thread(server.stop)
            with pytest.raises((psycopg.OperationalError, PoolTimeout)):
                await _select_one(pool)
            await asyncio.to_thread(server.start)
            assert await _select_one(pool) == 1
            assert await _select_one(pool) == 1

    asyncio.run(scenario())


def test_sessions_terminated_mid_run_then_resume_completes(
    server: PrivateServer, tmp_path: Path, write_script, workspace: Path
) -> None:
    name = f"warden-terminate-{uuid.uuid4().hex[:8]}"
    env, config, gate = gated(
        cli_env(tmp_path, url=f"{server.url}?application_name={name}", data_dir=tmp_path / "d"),
        tmp_path,
    )
    code, _, err = warden(env, tmp_path, "db", "migrate")
    assert code == 0, err
    script = write_script(TURNS)
    write_parts(workspace)
    thread = f"terminate-{uuid.uuid4()}"
    proc = start_run(env, tmp_path, script, workspace, thread, config)
    try:
        wait_at_gate(gate, proc)
        assert asyncio.run(_terminate_others(server.url, name)) >= 1
        gate.touch()
        out, stderr = proc.communicate(timeout=120)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in stderr
    if proc.returncode == 0:  # the pool replaced the connections between two queries
        assert_complete(json.loads(out))
    else:  # a query was cut off: one clear line, and the thread resumes
        assert proc.returncode == 1, stderr
        assert stderr.strip().startswith("error: database unavailable: "), stderr
        code, final, err = warden(env, tmp_path, "resume", thread)
        assert code == 0, err
        assert_complete(final)
    assert count_checkpoints(server.url, thread) == TOTAL_CHECKPOINTS
