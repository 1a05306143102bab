"""The real `langgraph dev` server runs Warden's graph on Warden's Postgres saver.

The server is started from the repository root (where langgraph.json lives) with the
scripted model; a LangGraph SDK client drives a run to its approval interrupt, sends a
malformed resume (refused, interrupt still pending), then a valid one, and checks the
final state and the checkpoint rows in Postgres. A second thread checks that a run's
`context` (budgets, model) is honoured; `/metrics` (langgraph.json's custom HTTP app)
then shows both runs' counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from langgraph_sdk import get_client
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import dict_row

from checkpoints.audit_chain import verify_chain
from tests.conftest import call, turn
from tests.support.net import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LANGGRAPH = Path(sys.executable).parent / "langgraph"
START_TIMEOUT = 90


def tail(path: Path, lines: int = 40) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


@pytest.fixture
def server(
    database_url: str, write_script: Callable[..., Path], workspace: Path, tmp_path: Path
) -> Iterator[str]:
    """Start `langgraph dev` on a free port and yield its URL; stop it afterwards."""
    assert (REPO / "langgraph.json").is_file()
    script = write_script(
        [
            turn("reading the notes", call("read_file", path="notes.txt")),
            turn(
                "emailing the summary",
                call("send_email", to="ops@example.com", subject="notes", body="alpha beta"),
            ),
            turn("summary sent"),
        ],
        name="server-script.json",
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env |= {
        "LANGSMITH_TRACING": "false",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "WARDEN_DATABASE_URL": database_url,
        "WARDEN_MODEL": f"scripted:{script}",
        "WARDEN_WORKSPACE": str(workspace),
        "WARDEN_DATA_DIR": str(tmp_path / "data"),
    }
    out, err = tmp_path / "server.out", tmp_path / "server.err"
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(
            [
                str(LANGGRAPH),
                "dev",
                "--no-reload",
                "--no-browser",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fout,
            stderr=ferr,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, (
                f"langgraph dev exited {proc.returncode}:\n{tail(err)}\n{tail(out)}"
            )
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (
                f"langgraph dev did not start:\n{tail(err)}\n{tail(out)}"
            )
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def audit_rows(url: str, thread_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM warden_audit WHERE thread_id = %s ORDER BY seq", (thread_id,)
        ).fetchall()


def checkpoint_rows(url: str, thread_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_approval_round_trip_and_context_budgets(
    server: str, database_url: str, write_script: Callable[..., Path], tmp_path: Path
) -> None:
    client = get_client(url=server)
    assert any(a["graph_id"] == "warden" for a in await client.assistants.search())

    thread = (await client.threads.create())["thread_id"]
    chat = {"messages": [{"role": "user", "content": "Summarise the notes and email ops."}]}
    budgets = {"max_steps": 6, "max_tool_calls": 4}  # per run: sent again on resume
    first = await client.runs.wait(thread, "warden", input=chat, context=budgets)
    assert first["usage"]["tool_calls_by_name"] == {"read_file": 1}
    state = await client.threads.get_state(thread)
    assert state["next"] == ["approve"]
    [pending] = state["interrupts"]
    request: dict[str, Any] = pending["value"]
    assert [a["name"] for a in request["action_requests"]] == ["send_email"]
    assert request["action_requests"][0]["args"]["to"] == "ops@example.com"
    assert request["review_configs"][0]["action_name"] == "send_email"
    assert "approve" in request["review_configs"][0]["allowed_decisions"]
    rows_at_interrupt = checkpoint_rows(database_url, thread)
    assert rows_at_interrupt > 0  # the server persists through Warden's Postgres saver

    with pytest.raises(Exception, match="expected 1 decision"):
        await client.runs.wait(
            thread,
            "warden",
            command={"resume": {"decisions": [{"type": "approve"}, {"type": "approve"}]}},
            context=budgets,
        )
    state = await client.threads.get_state(thread)
    assert state["interrupts"] and state["interrupts"][0]["value"] == request
    assert state["values"].get("approvals", []) == []
    assert checkpoint_rows(database_url, thread) == rows_at_interrupt

    final = await client.runs.wait(
        thread,
        "warden",
        command={"resume": {"decisions": [{"type": "approve"}], "reviewer": "api-test"}},
        context=budgets,
    )
    assert final["halt_reason"] == "completed"
    assert final["final_answer"] == "summary sent"
    assert [(a["decision"], a["reviewer"]) for a in final["approvals"]] == [("approve", "api-test")]
    assert final["usage"]["tool_calls_by_name"] == {"read_file": 1, "send_email": 1}
    assert final["report"]["budgets"]["max_steps"] == 6
    assert final["report"]["budgets"]["max_tool_calls"] == 4
    assert (await client.threads.get_state(thread))["interrupts"] == []
    assert checkpoint_rows(database_url, thread) > rows_at_interrupt
    emails = (tmp_path / "data" / "outbox" / "outbox.jsonl").read_text().splitlines()
    assert len(emails) == 1
    # The server hands the graph Warden's saver (behind its adapter), so the audit trail
    # is written to the same database.
    audit = audit_rows(database_url, thread)
    kinds = [r["kind"] for r in audit]
    assert kinds[0] == "run_started" and kinds[-1] == "halt"
    assert {"approval_requested", "approval_decision", "tool_validated", "tool_result"} <= set(kinds)
    assert verify_chain(audit) is None

    longer = write_script(
        [
            turn("one", call("read_file", path="notes.txt")),
            turn("two", call("read_file", path="todo.md")),
            turn("three", call("list_files")),
            turn("done"),
        ],
        name=f"longer-{uuid.uuid4().hex[:6]}.json",
    )
    second = (await client.threads.create())["thread_id"]
    halted = await client.runs.wait(
        second,
        "warden",
        input={"messages": [{"role": "user", "content": "read everything"}]},
        context={"max_steps": 2, "model": f"scripted:{longer}"},
    )
    assert halted["halt_reason"] == "max_steps"
    assert halted["usage"]["model_calls"] == 2
    assert halted["report"]["budgets"]["max_steps"] == 2
    assert checkpoint_rows(database_url, second) > 0

    # Warden's metrics counted these runs: at /warden/metrics (langgraph.json's custom
    # HTTP app, Warden's families only) and at the server's own /metrics.
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        own = await http.get("/warden/metrics")
        shared = await http.get("/metrics")
    assert own.status_code == 200 and shared.status_code == 200

    def warden_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("warden_")
        }

    assert not any(f.name.startswith("lg_api") for f in text_string_to_metric_families(own.text))
    samples = warden_samples(own.text)
    assert warden_samples(shared.text) == samples
    assert samples[("warden_runs_total", (("outcome", "completed"),))] == 1
    assert samples[("warden_halts_total", (("reason", "max_steps"),))] == 1
    assert samples[("warden_approvals_requested_total", (("tool", "send_email"),))] == 1
    assert samples[("warden_approvals_decided_total", (("decision", "approve"),))] == 1
    assert samples[("warden_tool_calls_total", (("status", "success"), ("tool", "send_email")))] == 1
    assert samples[("warden_step_seconds_count", (("node", "halt"),))] == 2

    # Long-term memory through the server: the tools reach the store via the run's pool.
    remember = write_script(
        [turn("saving", call("remember", text="Ops rota: Dana this week.")), turn("saved")],
        name=f"remember-{uuid.uuid4().hex[:6]}.json",
    )
    recall = write_script(
        [turn("looking", call("recall", query="who is on the ops rota")), turn("found")],
        name=f"recall-{uuid.uuid4().hex[:6]}.json",
    )

    async def run_memory(script: Path, tenant: str) -> str:
        thread_id = (await client.threads.create())["thread_id"]
        done = await client.runs.wait(
            thread_id, "warden", input={"task": "memory"},
            context={"model": f"scripted:{script}", "tenant": tenant},
        )
        assert done["halt_reason"] == "completed", done["halt_detail"]
        [result] = [m for m in done["messages"] if m["type"] == "tool"]
        return str(result["content"])

    assert "remembered" in await run_memory(remember, "e2e-acme")
    assert "Dana this week" in await run_memory(recall, "e2e-acme")
    assert await run_memory(recall, "e2e-globex") == "no memories match"
