"""Two `warden resume` processes approve the same call at once: one runs it, once.

Stock LangGraph runs an approved call in both (each resume forks the thread). Warden's
per-thread lock makes the second process fail fast with a one-line "busy" error (exit
1); the email reaches the real SMTP server exactly once.

The SMTP server holds its reply until the loser has exited, so the winner provably
holds the thread while the loser looks at it, whatever the machine's load. (A fixed
model delay instead let a loser that started late find the thread just released.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call, turn
from tests.support.chaos_tools import recorded_key
from tests.support.smtp import smtp_server
from tools.email import message_id_for

pytestmark = pytest.mark.slow

WARDEN = Path(sys.executable).parent / "warden"
# The SMTP timeout, far above how long the loser takes to start, look and exit.
SMTP_TIMEOUT_S = 110


def email_awaiting_approval(
    database_url: str, write_script: Any, workspace: Path, tmp_path: Path, port: int, thread: str
) -> dict[str, str]:
    """Run `thread` until its email (to the SMTP server on `port`) awaits approval;
    return the environment its resumes use."""
    script = write_script(
        [
            turn("tell ops", call("send_email", to="ops@example.com", subject="s", body="b")),
            turn("ops told"),
        ]
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "WARDEN_MODEL")}
    env |= {"WARDEN_DATABASE_URL": database_url, "WARDEN_DATA_DIR": str(tmp_path / "data")}
    config = tmp_path / "warden.toml"
    config.write_text(
        f'[email]\nhost = "127.0.0.1"\nport = {port}\nsender = "w@warden.test"\n'
        f"timeout = {SMTP_TIMEOUT_S}\n"
    )
    first = subprocess.run(
        [
            str(WARDEN), "run", "tell ops", "--model", f"scripted:{script}", "--config",
            str(config), "--workspace", str(workspace), "--thread-id", thread,
            "--no-input", "--json",
        ],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert first.returncode == 4, first.stderr  # awaiting approval
    return env


def test_two_resumes_of_one_approval_run_it_once(
    database_url: str, write_script, workspace: Path, tmp_path: Path
) -> None:
    thread = f"race-{uuid.uuid4()}"
    gate = threading.Event()
    with smtp_server(gate=gate) as (inbox, port):
        env = email_awaiting_approval(database_url, write_script, workspace, tmp_path, port, thread)
        resumes = [
            subprocess.Popen(
                [str(WARDEN), "resume", thread, "--approve", "--reviewer", f"r{i}", "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                stdin=subprocess.DEVNULL,
            )
            for i in range(2)
        ]
        try:
            # The winner is stuck in the SMTP exchange, lock held: only the loser ends.
            deadline = time.monotonic() + 90
            while all(p.poll() is None for p in resumes) and time.monotonic() < deadline:
                time.sleep(0.05)
            first_out = [p.returncode for p in resumes if p.returncode is not None]
        finally:
            gate.set()
        ended = [(p.wait(timeout=120), *p.communicate()) for p in resumes]
        assert first_out == [1], ended
        codes = sorted(code for code, _, _ in ended)
        assert codes == [0, 1], ended
        [(_, won, _)] = [e for e in ended if e[0] == 0]
        [(_, _, busy)] = [e for e in ended if e[0] == 1]
        assert json.loads(won)["status"] == "completed"
        assert busy.strip().splitlines() == [
            f"error: thread {thread} is busy: another process is running it; retry when it "
            f"stops, or `warden cancel {thread}`"
        ]
        assert "Traceback" not in busy
        assert inbox.with_message_id(
            message_id_for(recorded_key(database_url, thread, "call_1_1"), "warden.test")
        ) == 1
        assert len(inbox.messages) == 1


def test_decisions_for_a_thread_another_process_is_running_say_busy(
    database_url: str, write_script, workspace: Path, tmp_path: Path
) -> None:
    """A reviewer's decisions that arrive after another process took the approval and
    moved on get "busy", not "not awaiting approval": the thread is mid-run, elsewhere.
    (A second resume that read the request just before the first one took it lands here.)"""
    thread = f"late-{uuid.uuid4()}"
    gate = threading.Event()
    with smtp_server(gate=gate) as (inbox, port):
        env = email_awaiting_approval(database_url, write_script, workspace, tmp_path, port, thread)
        winner = subprocess.Popen(
            [str(WARDEN), "resume", thread, "--approve", "--reviewer", "first", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 90
            while not inbox.messages:  # the winner is mid-send: past the approval, locked
                assert winner.poll() is None, winner.communicate()
                assert time.monotonic() < deadline, "the approved email was never sent"
                time.sleep(0.05)
            late = subprocess.run(
                [str(WARDEN), "resume", thread, "--decisions", "-", "--reviewer", "second"],
                input=json.dumps({"decisions": [{"type": "approve"}]}),
                capture_output=True, text=True, env=env, timeout=120,
            )
        finally:
            gate.set()
        assert winner.wait(timeout=120) == 0, winner.communicate()
    assert (late.returncode, late.stderr.strip().splitlines()) == (
        1,
        [
            f"error: thread {thread} is busy: another process is running it; retry when it "
            f"stops, or `warden cancel {thread}`"
        ],
    ), late
    assert len(inbox.messages) == 1
