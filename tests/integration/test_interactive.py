"""On a terminal, `warden run` asks for approval; driven here through a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import call, turn

WARDEN = Path(sys.executable).parent / "warden"


def drive(args: list[str], env: dict[str, str], answers: list[tuple[str, str]], timeout: float = 60) -> tuple[int, str]:
    """Run a command on a pty; each time `prompt` appears in the output, type `reply`."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    seen, pending = "", list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break
                seen += chunk
            if pending and pending[0][0] in seen:
                prompt, reply = pending.pop(0)
                seen = seen.replace(prompt, f"<{prompt}>", 1)
                os.write(leader, reply.encode() + b"\r")
            if proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=10), seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)


@pytest.fixture
def email_script(write_script) -> Path:
    return write_script(
        [
            turn("Emailing the team as asked.", call("send_email", to="team@example.com", subject="hi", body="hello")),
            turn("All done."),
        ]
    )


def env_for(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "WARDEN_DATABASE_URL": database_url,
        "WARDEN_DATA_DIR": str(tmp_path / "data"),
        "TERM": "dumb",
        "COLUMNS": "200",
    }


def test_terminal_approval_shows_the_call_and_runs_it(database_url, tmp_path, workspace, email_script) -> None:
    env = env_for(database_url, tmp_path)
    code, screen = drive(
        [str(WARDEN), "run", "email the team", "--model", f"scripted:{email_script}", "--workspace", str(workspace), "--reviewer", "tty-user"],
        env,
        [("[a]pprove", "a")],
    )
    assert code == 0, screen
    assert "send_email" in screen and "irreversible" in screen
    assert "Emailing the team as asked." in screen  # the model's stated reasoning
    assert "team@example.com" in screen
    sent = (tmp_path / "data" / "outbox" / "outbox.jsonl").read_text().splitlines()
    assert [json.loads(line)["to"] for line in sent] == ["team@example.com"]


def test_terminal_rejection_with_a_reason(database_url, tmp_path, workspace, email_script) -> None:
    env = env_for(database_url, tmp_path)
    code, screen = drive(
        [str(WARDEN), "run", "email the team", "--model", f"scripted:{email_script}", "--workspace", str(workspace), "--json"],
        env,
        [("[a]pprove", "r"), ("reason", "not today")],
    )
    assert code == 0, screen
    assert not (tmp_path / "data" / "outbox" / "outbox.jsonl").exists()
    result = json.loads(screen[screen.index('{"thread_id"') :].splitlines()[0])
    assert result["halt_reason"] == "completed"
    assert result["usage"]["tool_calls"] == 0
    shown = subprocess.run(
        [str(WARDEN), "history", result["thread_id"], "--json"], env=env, capture_output=True, text=True
    )
    history = json.loads(shown.stdout)
    assert [(a["decision"], a["message"]) for a in history["approvals"]] == [("reject", "not today")]
    rejection = next(m for m in history["messages"] if m["type"] == "tool")
    assert "not today" in rejection["content"] and rejection["status"] == "error"


def test_demo_asks_on_a_terminal_then_resumes_and_halts_on_the_loop(database_url, tmp_path) -> None:
    env = env_for(database_url, tmp_path)
    code, screen = drive([str(WARDEN), "demo"], env, [("[a]pprove", "a")], timeout=90)
    assert code == 0, screen
    assert "auto-approved" not in screen and "no terminal" not in screen
    assert "resume from Postgres" in screen
    assert '"halt_reason": "loop"' in screen
    assert '"reviewer": "demo-user"' in screen
    assert (tmp_path / "data" / "outbox" / "outbox.jsonl").read_text().count("\n") == 1
