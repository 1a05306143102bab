"""`warden cancel` reaches a thread run by the real `langgraph dev` server.

The server's thread has no `warden_threads` row and its runner takes no Warden lock,
so the CLI leaves a cancel request; the graph itself honours it at its next node
boundary, here when the approval is resumed through the API: the approved email never
goes out.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from langgraph_sdk import get_client

from tests.e2e.test_langgraph_dev import server  # noqa: F401  the langgraph dev fixture
from tests.integration.test_cli import make_cli

pytestmark = pytest.mark.slow


async def test_cancel_request_stops_a_server_run_at_its_next_node(
    server: str,  # noqa: F811
    database_url: str,
    workspace: Path,
    tmp_path: Path,
) -> None:
    client = get_client(url=server)
    thread = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread, "warden", input={"task": "Summarise the notes and email ops."})
    assert (await client.threads.get_state(thread))["next"] == ["approve"]

    cli = make_cli(database_url, tmp_path / "cli-data", workspace)
    asked = cli("cancel", thread, "--reason", "not today", "--json")
    assert asked.code == 0, str(asked)
    assert (asked.json()["cancel_requested"], asked.json()["status"]) == (True, "awaiting_approval")

    final = await client.runs.wait(
        thread,
        "warden",
        command={"resume": {"decisions": [{"type": "approve"}], "reviewer": "api"}},
    )
    assert final["halt_reason"] == "cancelled"
    assert final["halt_detail"] == "cancelled by cli:tester before approve: not today"
    assert final["usage"]["tool_calls_by_name"] == {"read_file": 1}
    assert not (tmp_path / "data" / "outbox").exists()  # the server's outbox: no email
    with psycopg.connect(database_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM warden_cancel_requests WHERE thread_id = %s", (thread,)
        ).fetchone()
    assert left == (0,)
    gone = cli("cancel", thread)
    assert gone.code == 2 and "already ended (cancelled)" in gone.err
