"""Operator control and global spend caps with real, concurrent `warden` processes.

- `warden cancel` from one process stops a `warden run` in another at its next node.
- Several runs of one tenant spend against its cap at once: reservations plus spend
  never pass the cap, and another tenant's run is not held up.
- `warden inject`, `fork`, `caps` and `prune` through the command line.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import REPO, call, turn
from tests.integration.test_cli import (
    WARDEN,
    Cli,
    Result,
    concurrently,
    make_cli,
    one_line_error,
)
from tests.support.gate_tools import GATE_ENV, wait_at_gate

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(database_url: str, tmp_path: Path, workspace: Path) -> Cli:
    return make_cli(database_url, tmp_path / "data", workspace)


def reading_turns(count: int, delay: float) -> list[dict[str, Any]]:
    """`count` model turns, each reading a different part (no loop), then an answer."""
    turns = [
        turn(f"reading part {i}", call("read_file", path=f"part{i}.txt"), tokens=None)
        for i in range(count)
    ]
    turns.append(turn("all parts read", tokens=None))
    for t in turns:
        t["delay_seconds"] = delay
    return turns


def write_parts(workspace: Path, count: int) -> None:
    for i in range(count):
        (workspace / f"part{i}.txt").write_text(f"part {i}\n")


def start(cli: Cli, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(WARDEN), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env,
        cwd=cli.cwd,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=180)
    assert "Traceback" not in err, err
    return proc.returncode, json.loads(out) if out.strip() else {}, err


# --- cancel a running run from another process -----------------------------------------


def pending_requests(cli: Cli, thread_id: str) -> int:
    with psycopg.connect(cli.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM warden_cancel_requests WHERE thread_id = %s", (thread_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("wait", [False, True], ids=["request", "wait"])
def test_cancel_stops_a_running_run_at_its_next_node(
    cli: Cli, write_script, workspace: Path, tmp_path: Path, wait: bool
) -> None:
    """The run is held inside its third tool call (a gate the test opens) while the
    request lands, so it is provably busy then, whatever the machine's load; it stops
    at the next node boundary, after that call."""
    write_parts(workspace, 10)
    turns = reading_turns(10, delay=0)
    turns[2] = turn("waiting at the gate", call("wait_for_gate", label="third"), tokens=None)
    script = write_script(turns)
    gate = tmp_path / "gate-open"
    config = tmp_path / "gated.toml"
    config.write_text('[[tools]]\npath = "tests.support.gate_tools:wait_for_gate"\ntier = "read"\n')
    thread = f"busy-{uuid.uuid4()}"
    cli.env |= {GATE_ENV: str(gate), "PYTHONPATH": str(REPO)}
    run = start(
        cli, "run", "read every part", "--model", f"scripted:{script}", "--config", str(config),
        "--workspace", str(workspace), "--thread-id", thread, "--no-input", "--json",
    )  # fmt: skip
    cancel_args = ["cancel", thread, "--reason", "wrong customer", "--json"]
    try:
        # The run is under way in another process, inside its third tool call.
        wait_at_gate(gate, run)
        if wait:
            waiting = start(cli, *cancel_args, "--wait")
            deadline = time.monotonic() + 90
            while pending_requests(cli, thread) == 0:
                assert waiting.poll() is None, waiting.communicate()
                assert time.monotonic() < deadline, "the cancel request was never stored"
                time.sleep(0.05)
            gate.touch()
            out, err_text = waiting.communicate(timeout=120)
            asked = Result(tuple(cancel_args), waiting.returncode, out, err_text)
        else:
            asked = cli(*cancel_args)
            gate.touch()
        code, final, err = finish(run)
    finally:
        gate.touch()
        if run.poll() is None:
            run.kill()
            run.wait()
    assert (code, final["status"], final["halt_reason"]) == (3, "halted", "cancelled"), err
    assert final["halt_detail"].startswith("cancelled by cli:tester before ")
    assert final["halt_detail"].endswith(": wrong customer")
    requested = asked.json()
    if wait:
        assert asked.code == 3, str(asked)
        assert (requested["status"], requested["halt_reason"]) == ("halted", "cancelled")
    else:
        assert asked.code == 0, str(asked)
        assert requested["cancel_requested"] is True
        assert requested["status"] == "in_progress"
        # Only a node already under way when the request landed could still finish.
        assert final["usage"]["tool_calls"] <= requested["usage"]["tool_calls"] + 1
        assert final["usage"]["model_calls"] <= requested["usage"]["model_calls"] + 1
    # The call under way when the request landed finished; nothing after it ran.
    assert (final["usage"]["model_calls"], final["usage"]["tool_calls"]) == (3, 3)
    assert pending_requests(cli, thread) == 0  # consumed when honoured
    assert cli.ok_json("status", thread, code=3)["halt_reason"] == "cancelled"


# --- global spend caps across processes ------------------------------------------------

RUNS = 5
TURNS = 12
NEEDS = re.compile(r"needs about \$([0-9.]+)")


def test_concurrent_runs_of_one_tenant_stay_within_its_cap(
    cli: Cli, write_script, workspace: Path, tmp_path: Path
) -> None:
    write_parts(workspace, TURNS)
    script = write_script(reading_turns(TURNS, delay=0.05), model="gpt-4o")
    configs = {}
    for tenant in ("acme", "globex"):
        configs[tenant] = tmp_path / f"{tenant}.toml"
        configs[tenant].write_text(f'tenant = "{tenant}"\n')
    # Below what one run alone spends (~$0.016): every acme run must be refused, however
    # the processes' starts fall. (At $0.03, a run that started well ahead of the others
    # could finish before they had spent much.)
    cap = Decimal("0.01")
    caps = cli("caps", "set", "acme", "--daily", str(cap), "--monthly", "5")
    assert caps.code == 0, str(caps)
    assert cli("caps", "set", "globex", "--daily", "0.001", "--remove-daily").code == 2

    def args(tenant: str) -> list[str]:
        return [
            "run", "read every part", "--model", f"scripted:{script}", "--config",
            str(configs[tenant]), "--workspace", str(workspace), "--no-input", "--json",
        ]  # fmt: skip

    procs = [start(cli, *args("acme")) for _ in range(RUNS)] + [start(cli, *args("globex"))]
    # While they run: what is held plus what is spent never passes the cap.
    samples = 0
    with psycopg.connect(cli.database_url, autocommit=True) as conn:
        while any(p.poll() is None for p in procs):
            row = conn.execute(
                "SELECT reserved_usd + spent_usd FROM warden_spend "
                "WHERE tenant = 'acme' AND period = 'day'"
            ).fetchone()
            if row is not None:
                samples += 1
                assert row[0] <= cap, f"held + spent {row[0]} passed the cap {cap}"
            time.sleep(0.02)
    results = [finish(p) for p in procs]
    *acme, globex = results
    assert samples > 0
    for code, data, err in acme:
        assert (code, data["halt_reason"]) == (3, "global_budget"), err
        assert f"tenant 'acme' daily spend cap ${cap} reached" in data["halt_detail"]
    # The other tenant ran to the end, all its model calls, beside the capped ones.
    code, data, err = globex
    assert (code, data["status"], data["usage"]["model_calls"]) == (0, "completed", TURNS + 1), err

    report = {(r["tenant"], r["period"]): r for r in cli.ok_json("caps", "show", code=0)}
    day = report[("acme", "day")]
    estimate = max(float(NEEDS.search(d["halt_detail"]).group(1)) for _, d, _ in acme)  # type: ignore[union-attr]
    calls = [d["usage"]["model_calls"] for _, d, _ in acme]
    print(
        f"spend caps: {RUNS} concurrent runs of one tenant, cap ${cap}: spent "
        f"${day['spent_usd']:.6f} in {sum(calls)} model calls {calls}; largest estimate "
        f"${estimate:.6f}; {samples} samples of held + spent, none above the cap"
    )
    assert day["reserved_usd"] == 0  # every hold was settled
    assert day["spent_usd"] == pytest.approx(
        sum(d["usage"]["cost_usd"] for _, d, _ in acme), abs=1e-9
    )
    assert day["spent_usd"] <= float(cap) + estimate
    assert sum(d["usage"]["model_calls"] for _, d, _ in acme) >= 2
    assert report[("globex", "day")]["cap_usd"] is None
    assert report[("globex", "day")]["spent_usd"] == pytest.approx(
        data["usage"]["cost_usd"], abs=1e-9
    )
    assert report[("acme", "month")]["cap_usd"] == 5


# --- inject, fork, prune ----------------------------------------------------------------

EMAIL_THEN_DONE = [
    turn("emailing", call("send_email", to="ops@example.com", subject="s", body="b")),
    turn("reported instead"),
]


def test_inject_into_an_awaiting_thread(cli: Cli, write_script, workspace: Path) -> None:
    script = write_script(EMAIL_THEN_DONE)
    first = cli.ok_json(
        "run", "email ops", "--model", f"scripted:{script}", "--workspace", str(workspace),
        "--no-input", code=4,
    )  # fmt: skip
    thread = first["thread_id"]
    done = cli.ok_json("inject", thread, "do not email, report instead", "--sender", "ann", code=0)
    assert (done["status"], done["final_answer"]) == ("completed", "reported instead")
    assert cli.emails() == []
    history = cli.ok_json("history", thread, code=0)
    [injected] = [m for m in history["messages"] if m.get("injected_by")]
    assert (injected["injected_by"], injected["content"]) == ("ann", "do not email, report instead")
    one_line_error(cli("inject", "no-such-thread", "x"), 2, "unknown thread")
    one_line_error(cli("inject", thread, "   "), 2, "empty")


def test_history_lists_checkpoints_and_fork_starts_a_new_thread(
    cli: Cli, write_script, workspace: Path
) -> None:
    write_parts(workspace, 2)
    script = write_script(reading_turns(2, delay=0))
    done = cli.ok_json(
        "run", "read", "--model", f"scripted:{script}", "--workspace", str(workspace), code=0
    )
    thread = done["thread_id"]
    before = cli.ok_json("history", thread, code=0)
    listed = [c["checkpoint_id"] for c in before["checkpoints"]]
    text = cli("history", thread)
    assert all(c in text.out for c in listed)  # the human view lists them too
    at = before["checkpoints"][3]["checkpoint_id"]  # early in the run
    forked = cli.ok_json("fork", thread, "--at", at, "--thread", f"{thread}-fork", code=0)
    assert (forked["thread_id"], forked["status"]) == (f"{thread}-fork", "in_progress")
    resumed = cli.ok_json("resume", f"{thread}-fork", code=0)
    assert resumed["final_answer"] == done["final_answer"]
    assert resumed["usage"]["model_calls"] == done["usage"]["model_calls"]
    assert cli.ok_json("history", thread, code=0) == before  # the original is untouched
    one_line_error(cli("fork", thread, "--at", "nope"), 2, "no checkpoint")
    one_line_error(
        cli("fork", thread, "--at", at, "--thread", f"{thread}-fork"), 2, "already exists"
    )


def test_prune_is_a_dry_run_unless_asked(cli: Cli, write_script, workspace: Path) -> None:
    finished = write_script([turn("done")], name="done.json")
    waiting = write_script(EMAIL_THEN_DONE, name="email.json")
    model = ["--workspace", str(workspace), "--no-input"]
    old = [
        cli.ok_json("run", "a", "--model", f"scripted:{finished}", *model, code=0)["thread_id"]
        for _ in range(3)
    ]
    awaiting = cli.ok_json("run", "b", "--model", f"scripted:{waiting}", *model, code=4)[
        "thread_id"
    ]
    newest = cli.ok_json("run", "c", "--model", f"scripted:{finished}", *model, code=0)["thread_id"]
    dry = cli.ok_json("prune", "--keep-latest", "1", code=0)
    assert dry["dry_run"] is True
    selected = {c["thread_id"] for c in dry["threads"]}  # (other tests' threads too)
    assert set(old) <= selected and newest not in selected
    assert {"thread_id": awaiting, "reason": "awaiting_approval"} in dry["skipped"]
    assert cli.ok_json("status", old[0], code=0)["status"] == "completed"  # nothing went

    gone = cli.ok_json("prune", "--keep-latest", "1", "--delete", code=0)
    assert gone["deleted"]["threads"] == len(selected)
    assert gone["deleted"]["checkpoints"] == sum(c["checkpoints"] for c in dry["threads"])
    for thread in old:
        assert cli.checkpoint_count(thread) == 0
        one_line_error(cli("status", thread), 2, "unknown thread")
    assert cli.ok_json("status", newest, code=0)["status"] == "completed"
    assert cli.ok_json("status", awaiting, code=4)["status"] == "awaiting_approval"
    assert cli.ok_json("prune", "--older-than", "30d", code=0)["threads"] == []
    one_line_error(cli("prune", "--older-than", "soon"), 2, "bad age")
    one_line_error(cli("prune"), 2, "--older-than")


def test_operator_commands_run_side_by_side(cli: Cli, write_script, workspace: Path) -> None:
    """Two cancels of one awaiting thread at once: one ends it, the other is told so."""
    script = write_script(EMAIL_THEN_DONE)
    thread = cli.ok_json(
        "run", "email", "--model", f"scripted:{script}", "--workspace", str(workspace),
        "--no-input", code=4,
    )["thread_id"]  # fmt: skip
    results = concurrently(*(lambda: cli("cancel", thread, "--json") for _ in range(2)))
    codes = sorted(r.code for r in results)
    assert codes in ([0, 3], [2, 3], [3, 3]), [str(r) for r in results]
    assert cli.ok_json("status", thread, code=3)["halt_reason"] == "cancelled"
    assert cli.emails() == []
