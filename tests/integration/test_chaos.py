"""Chaos: SIGKILL `warden run` at seeded random moments of runs with side effects.

Three scenarios, each with one real side effect: an email to a real SMTP server
(aiosmtpd), a row written by a SQL write tool in Postgres (a `[[tools]]` entry with a
reconcile hook), and a file written by `write_file`. Each scenario first runs once
uncrashed (the reference), then TRIALS times killed with SIGKILL at a seeded random
moment after its first checkpoint, and resumed with `warden resume` until it ends. An
in-doubt email (killed after delivery began, before the outcome was recorded) comes
back for approval: the test plays the operator, who checks the mailbox for the
call's Message-ID and approves only if nothing arrived.

Asserted per trial: the run completes with the reference's final answer, messages
and usage; each effect happened exactly once (email: one message with the call's
Message-ID; SQL: one row with the call's key, and never a unique violation, which a
repeated insert would raise; file: the exact content).

Replay: WARDEN_CHAOS_SEED=N (printed); WARDEN_CHAOS_TRIALS sets trials per scenario.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from checkpoints.locks import thread_is_busy
from graph.runtime import open_warden
from graph.settings import Settings
from tests.conftest import REPO, call, turn
from tests.support.chaos_tools import SCHEMA, recorded_key
from tests.support.smtp import Inbox, smtp_server
from tools.email import message_id_for

pytestmark = pytest.mark.slow

WARDEN = Path(sys.executable).parent / "warden"
SEED = int(os.environ.get("WARDEN_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
# Trials per scenario: 3 scenarios x 10 = 30 seeded kills on the embedded backend (the
# one every machine has); the server backend, when CI adds it, gets a smaller pass.
TRIALS = int(os.environ.get("WARDEN_CHAOS_TRIALS") or 10)
SERVER_TRIALS = int(os.environ.get("WARDEN_CHAOS_TRIALS") or 4)
PARALLEL = 3
DELAY = 0.2
SMTP_HOLD = 0.4
SENDER_DOMAIN = "warden.test"
REPORT = "quarterly report\n" * 20
TASK = "do the chaos task"


def _turns(*steps: dict[str, Any]) -> list[dict[str, Any]]:
    for step in steps:
        step["delay_seconds"] = DELAY
    return list(steps)


SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "email": _turns(
        turn("tell ops", call("send_email", to="ops@example.com", subject="chaos", body="full")),
        turn("check notes", call("read_file", path="notes.txt")),
        turn("ops told"),
    ),
    "sql": _turns(
        turn("record it", call("record_order", item="widget", qty=3)),
        turn("check notes", call("read_file", path="notes.txt")),
        turn("order recorded"),
    ),
    "file": _turns(
        turn("write it", call("write_file", path="out/report.txt", content=REPORT)),
        turn("check it", call("read_file", path="out/report.txt")),
        turn("report written"),
    ),
}
MESSAGE_ID = re.compile(r"<[0-9a-f]{40}@" + re.escape(SENDER_DOMAIN) + ">")


@dataclass
class Lab:
    """Everything a trial needs: database, SMTP inbox, config, scripts, environment."""

    url: str
    inbox: Inbox
    root: Path
    config: Path
    env: dict[str, str]
    scripts: dict[str, Path] = field(default_factory=dict)


@pytest.fixture(scope="module")
def lab(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("chaos")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    with smtp_server(hold=SMTP_HOLD) as (inbox, port):
        config = root / "warden.toml"
        config.write_text(
            "workspace_writable = true\n"
            f'[email]\nhost = "127.0.0.1"\nport = {port}\nsender = "warden@{SENDER_DOMAIN}"\n'
            '[[tools]]\npath = "tests.support.chaos_tools:record_order"\ntier = "write"\n'
            'reconcile = "tests.support.chaos_tools:order_recorded"\n'
        )
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "WARDEN_MODEL")}
        env |= {
            "WARDEN_DATABASE_URL": database_url,
            "WARDEN_DATA_DIR": str(root / "data"),
            "CHAOS_SQL_DSN": database_url,
            "PYTHONPATH": str(REPO),
        }
        made = Lab(database_url, inbox, root, config, env)
        for name, turns in SCENARIOS.items():
            made.scripts[name] = root / f"{name}.json"
            made.scripts[name].write_text(json.dumps({"model": "gpt-4o-mini", "turns": turns}))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CHAOS_SQL_DSN", database_url)  # for resumes in this process
            yield made


def checkpoints(conn: psycopg.Connection[Any], thread: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''", (thread,)
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Trial:
    """One run of a scenario: what happened to it and what it ended as."""

    scenario: str
    thread: str
    workspace: Path
    kill_after: float | None
    killed: bool = False
    duration: float = 0.0
    decisions: list[str] = field(default_factory=list)
    outcome: dict[str, Any] = field(default_factory=dict)
    messages: list[tuple[Any, ...]] = field(default_factory=list)


def start(lab: Lab, trial: Trial) -> None:
    """Start `warden run`; kill it `kill_after` seconds after its first checkpoint."""
    trial.workspace.mkdir(parents=True)
    (trial.workspace / "notes.txt").write_text("nothing new\n")
    proc = subprocess.Popen(
        [
            str(WARDEN), "run", TASK, "--model", f"scripted:{lab.scripts[trial.scenario]}",
            "--config", str(lab.config), "--workspace", str(trial.workspace),
            "--thread-id", trial.thread, "--approve-all", "--json",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=lab.env,
        cwd=lab.root,
    )
    try:
        with psycopg.connect(lab.url, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while checkpoints(conn, trial.thread) == 0 and proc.poll() is None:
                assert time.monotonic() < deadline, f"no checkpoint for {trial.thread}"
                time.sleep(0.01)
        began = time.monotonic()
        if trial.kill_after is None:
            proc.wait(timeout=120)
        else:
            try:
                proc.wait(timeout=trial.kill_after)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                trial.killed = True
        trial.duration = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, stderr = proc.communicate()
    assert "Traceback" not in stderr.decode(), stderr.decode()


def decide(lab: Lab, trial: Trial, request: dict[str, Any]) -> dict[str, Any]:
    """Play the operator: approve, but an in-doubt email only if it never arrived."""
    decisions: list[dict[str, Any]] = []
    doubts = request.get("in_doubt") or [False] * len(request["action_requests"])
    for action, call_id, in_doubt in zip(
        request["action_requests"], request["tool_call_ids"], doubts, strict=True
    ):
        if not in_doubt:
            decisions.append({"type": "approve"})
            trial.decisions.append("approve")
            continue
        assert action["name"] == "send_email", f"only the email has no reconcile hook: {action}"
        assert action["description"].startswith("IN DOUBT: ")
        key = recorded_key(lab.url, trial.thread, call_id)
        arrived = lab.inbox.with_message_id(message_id_for(key, SENDER_DOMAIN))
        kind = "reject" if arrived else "approve"
        decisions.append({"type": kind, "message": "it arrived"} if arrived else {"type": kind})
        trial.decisions.append(f"in-doubt {kind}")
    return {"decisions": decisions, "reviewer": "chaos"}


async def finish(lab: Lab, trial: Trial) -> None:
    """Resume the thread in this process (answering approvals) until its run ends.

    In-process, through the same runtime API as `warden resume`: the killed process is
    gone either way, and this spares a Python start-up per step.
    """
    settings = Settings(database_url=lab.url, data_dir=lab.root / "data")
    async with open_warden(settings) as runtime:
        # The killed process's session (and its thread lock) ends when Postgres sees the
        # socket close: a moment after the kill, not at it.
        deadline = time.monotonic() + 30
        while await thread_is_busy(runtime.pool, trial.thread):
            assert time.monotonic() < deadline, f"{trial.thread} stayed locked after the kill"
            await asyncio.sleep(0.05)
        for _ in range(6):
            outcome = await runtime.status(trial.thread)
            if outcome.status == "in_progress":
                outcome = await runtime.resume(trial.thread)
            if outcome.status == "awaiting_approval":
                assert outcome.pending_approval is not None
                answer = decide(lab, trial, outcome.pending_approval)
                outcome = await runtime.resume(trial.thread, decisions=answer)
            if outcome.status in ("completed", "halted", "error"):
                trial.outcome = outcome.as_json()
                view = await runtime.history(trial.thread)
                trial.messages = [
                    (
                        m["type"],
                        m.get("name"),
                        m.get("status"),
                        MESSAGE_ID.sub("<MSGID>", m["content"].replace(trial.thread, "THREAD")),
                        json.dumps(m.get("tool_calls"), sort_keys=True),
                    )
                    for m in view["messages"]
                ]
                return
    raise AssertionError(f"{trial.thread} did not end: {trial}")


def play(lab: Lab, trial: Trial) -> Trial:
    start(lab, trial)
    asyncio.run(finish(lab, trial))
    return trial


def effects(lab: Lab, trial: Trial) -> int:
    """Count the scenario's side effect for this trial's thread where it landed."""
    if trial.scenario == "file":
        written = trial.workspace / "out" / "report.txt"
        return 1 if written.exists() and written.read_text() == REPORT else 0
    key = recorded_key(lab.url, trial.thread, "call_1_1")
    if trial.scenario == "email":
        return lab.inbox.with_message_id(message_id_for(key, SENDER_DOMAIN))
    with psycopg.connect(lab.url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM chaos_orders WHERE idem_key = %s", (key,)
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sigkill_at_random_moments_then_resume(lab: Lab, scenario: str, pg_backend: str) -> None:
    rng = random.Random(f"{SEED}:{scenario}")
    print(f"\nchaos seed {SEED} (set WARDEN_CHAOS_SEED to replay), scenario {scenario}")
    reference = play(lab, Trial(scenario, f"ref-{scenario}-{uuid.uuid4()}", lab.root / f"ref-{scenario}", None))
    assert reference.outcome["status"] == "completed", reference
    assert effects(lab, reference) == 1
    window = reference.duration
    trials = [
        Trial(
            scenario,
            f"chaos-{scenario}-{i}-{uuid.uuid4()}",
            lab.root / f"{scenario}-{i}",
            kill_after=round(rng.uniform(0.0, window), 3),
        )
        for i in range(TRIALS if pg_backend == "embedded" else SERVER_TRIALS)
    ]
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        done = list(pool.map(lambda t: play(lab, t), trials))
    usage_keys = ("model_calls", "input_tokens", "output_tokens", "cost_usd", "tool_calls_by_name")
    for trial in done:
        where = f"seed {SEED}, {scenario}, kill after {trial.kill_after}s, decisions {trial.decisions}"
        out = trial.outcome
        assert out["status"] == "completed", f"{where}: {out}"
        assert out["final_answer"] == reference.outcome["final_answer"], where
        assert effects(lab, trial) == 1, f"{where}: effect count {effects(lab, trial)}"
        usage, ref_usage = out["usage"], reference.outcome["usage"]
        rejected = trial.decisions.count("in-doubt reject")
        if rejected:
            # The operator declined to repeat an email that had arrived: the model is told
            # its outcome is unknown, and the call is not counted as run again.
            assert usage["tool_calls"] == ref_usage["tool_calls"] - rejected, where
            tool_results = [m for m in trial.messages if m[0] == "tool"]
            assert tool_results[0][3].startswith("Outcome unknown"), where
            assert [m for m in trial.messages if m[0] != "tool"] == [
                m for m in reference.messages if m[0] != "tool"
            ], where
        else:
            assert {k: usage[k] for k in usage_keys} == {k: ref_usage[k] for k in usage_keys}, where
            assert usage["tool_calls"] == ref_usage["tool_calls"], where
            assert trial.messages == reference.messages, where
    with psycopg.connect(lab.url) as conn:
        ledger = conn.execute(
            "SELECT count(*) FILTER (WHERE result->'meta'->>'reconciled' = 'true'), "
            "count(*) FILTER (WHERE attempts > 1) FROM warden_ledger WHERE thread_id = ANY(%s)",
            ([t.thread for t in done],),
        ).fetchone()
    if scenario == "email":  # nothing else sent, under any other Message-ID either
        assert len(lab.inbox.messages) == 1 + len(done), f"seed {SEED}: {len(lab.inbox.messages)}"
    killed = sum(t.killed for t in done)
    doubted = sum(1 for t in done if any(d.startswith("in-doubt") for d in t.decisions))
    print(
        f"chaos {scenario}: {len(done)} trials, {killed} killed mid-run, {doubted} in doubt; "
        f"kill points {[t.kill_after for t in done]} of a {window:.2f}s run; "
        f"decisions {[t.decisions for t in done]}; ledger: {ledger[0] if ledger else 0} "
        f"reconciled, {ledger[1] if ledger else 0} run again"
    )
    assert killed >= len(done) // 2, "most trials must actually be killed mid-run"
