"""Crash recovery: SIGKILL a `warden run` mid-way, resume it in a new process.

The run is a real subprocess on a real Postgres; it is killed once its thread has a
chosen number of checkpoints (seeded, printed). `warden resume` must then finish the
run with usage totals exactly as if it had never been interrupted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import call, turn

pytestmark = pytest.mark.slow

WARDEN = Path(sys.executable).parent / "warden"
SEED = int(os.environ.get("WARDEN_CRASH_SEED") or random.SystemRandom().randrange(2**31))
DELAY = 0.3
FILES = [f"part{i}.txt" for i in range(1, 10)]


def script_turns() -> list[dict[str, Any]]:
    """Eight model turns: seven of file reads (some with two calls), then an answer."""
    reads: list[list[str]] = [
        [FILES[0]],
        [FILES[1], FILES[2]],
        [FILES[3]],
        [FILES[4]],
        [FILES[5], FILES[6]],
        [FILES[7]],
        [FILES[8]],
    ]
    turns = [
        turn(f"reading {', '.join(r)}", *[call("read_file", path=p) for p in r]) for r in reads
    ]
    turns.append(turn("all parts read"))
    for t in turns:
        t["delay_seconds"] = DELAY
    return turns


TURNS = script_turns()
TOOL_CALLS = sum(len(t.get("tool_calls", [])) for t in TURNS)
# Node executions of an uninterrupted run: plan, act, observe per tool turn; then plan, halt.
NODE_STEPS = 3 * (len(TURNS) - 1) + 2
# Checkpoints: the input, the start of the loop, then one per node execution.
TOTAL_CHECKPOINTS = 2 + NODE_STEPS
KILL_POINTS = sorted(random.Random(SEED).sample(range(2, TOTAL_CHECKPOINTS - 4), 3))


def checkpoints(url: str | psycopg.Connection, thread_id: str) -> int:
    """Count the thread's checkpoints in Postgres (root namespace)."""
    if isinstance(url, str):
        with psycopg.connect(url) as conn:
            return checkpoints(conn, thread_id)
    row = url.execute(
        "SELECT count(*) FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''",
        (thread_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("point", range(len(KILL_POINTS)), ids=lambda i: f"kill{i}")
def test_sigkill_then_resume(
    point: int, database_url: str, write_script, workspace: Path, tmp_path: Path
) -> None:
    kill_at = KILL_POINTS[point]
    print(f"crash seed {SEED} (set WARDEN_CRASH_SEED to replay); kill points {KILL_POINTS}")
    where = f"seed {SEED}, kill at {kill_at} checkpoints"
    for i, name in enumerate(FILES):
        (workspace / name).write_text(f"part {i + 1} of the report\n")
    script = write_script(TURNS)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "WARDEN_MODEL")}
    env |= {"WARDEN_DATABASE_URL": database_url, "WARDEN_DATA_DIR": str(tmp_path / "data")}
    thread = f"crash-{uuid.uuid4()}"
    run = subprocess.Popen(
        [
            str(WARDEN),
            "run",
            "read every part",
            "--model",
            f"scripted:{script}",
            "--workspace",
            str(workspace),
            "--thread-id",
            thread,
            "--no-input",
            "--json",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        seen = 0
        with psycopg.connect(database_url, autocommit=True) as conn:
            while (seen := checkpoints(conn, thread)) < kill_at:
                assert run.poll() is None, (
                    f"run ended before the kill point ({where}): {run.communicate()}"
                )
                assert time.monotonic() < deadline, f"no progress ({where}, {seen} checkpoints)"
                time.sleep(0.02)
            assert run.poll() is None, f"run ended before it could be killed ({where})"
            os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == -signal.SIGKILL, where
    assert checkpoints(database_url, thread) < TOTAL_CHECKPOINTS, where

    def warden(*args: str) -> tuple[int, dict[str, Any], str]:
        proc = subprocess.run(
            [str(WARDEN), *args, "--json"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr

    code, status, err = warden("status", thread)
    assert status["status"] == "in_progress", f"{where}: {status} {err}"
    assert status["halt_reason"] is None
    assert code == 1

    code, final, err = warden("resume", thread)
    assert code == 0, f"{where}: {final} {err}"
    assert final["status"] == "completed", where
    assert final["halt_reason"] == "completed"
    assert final["final_answer"] == "all parts read"
    usage = final["usage"]
    assert usage["model_calls"] == len(TURNS), where
    assert usage["tool_calls"] == TOOL_CALLS, where
    assert usage["tool_calls_by_name"] == {"read_file": TOOL_CALLS}, where
    assert usage["input_tokens"] == 100 * len(TURNS)
    assert usage["output_tokens"] == 10 * len(TURNS)
    assert usage["steps"] == NODE_STEPS, where  # no node counted twice
    assert checkpoints(database_url, thread) == TOTAL_CHECKPOINTS, where

    # The audit chain survives the kill: a node that ran again recorded its events again,
    # each batch linked to the head it found, and every call's result is on record.
    code, audit, err = warden("audit", "verify", thread)
    assert code == 0 and audit["intact"], f"{where}: {audit} {err}"
    with psycopg.connect(database_url) as conn:
        recorded = conn.execute(
            "SELECT DISTINCT payload->>'tool_call_id' FROM warden_audit "
            "WHERE thread_id = %s AND kind = 'tool_result'",
            (thread,),
        ).fetchall()
    assert len(recorded) == TOOL_CALLS, where
