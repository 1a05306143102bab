"""Structured logs of a real `warden run`: JSON lines with thread, run, node and step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call, turn
from tests.integration.test_cli import Cli, make_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(database_url: str, tmp_path: Path, workspace: Path) -> Cli:
    return make_cli(database_url, tmp_path / "data", workspace)


def run_args(write_script: Any) -> list[str]:
    script = write_script([turn("reading", call("read_file", path="notes.txt")), turn("done")])
    return ["run", "read the notes", "--model", f"scripted:{script}", "--json"]


def test_json_lines_carry_thread_run_node_and_step(cli: Cli, write_script: Any) -> None:
    result = cli(*run_args(write_script), env={"WARDEN_LOG_FORMAT": "json", "WARDEN_LOG_LEVEL": "info"})
    assert result.code == 0, str(result)
    thread_id = result.json()["thread_id"]
    lines = [json.loads(line) for line in result.err.splitlines()]
    assert lines, "info logging was asked for"
    assert all({"ts", "level", "message", "thread_id", "run_id", "node", "step"} <= set(x) for x in lines)
    assert {x["thread_id"] for x in lines} == {thread_id}
    assert len({x["run_id"] for x in lines}) == 1 and lines[0]["run_id"]
    nodes = [(x["node"], x["step"]) for x in lines if x["node"]]
    assert nodes == [("plan", 1), ("act", 2), ("observe", 3), ("plan", 4), ("halt", 5)]
    [act] = [x for x in lines if x["node"] == "act"]
    assert act["tool_results"] == ["read_file:success"]
    assert [x["message"] for x in lines if not x["node"]] == ["run started", "run stopped"]
    assert lines[-1]["halt_reason"] == "completed"


def test_human_format_and_quiet_default(cli: Cli, write_script: Any) -> None:
    human = cli(*run_args(write_script), env={"WARDEN_LOG_FORMAT": "human", "WARDEN_LOG_LEVEL": "INFO"})
    assert human.code == 0, str(human)
    short = human.json()["thread_id"][:8]
    lines = human.err.splitlines()
    assert f"INFO    [{short} plan#1] plan done" in lines
    assert not any(line.startswith("{") for line in lines)
    quiet = cli(*run_args(write_script))  # default level WARNING: nothing for a good run
    assert quiet.code == 0 and quiet.err == "", str(quiet)
    plain = cli(*run_args(write_script)[:-1])  # the human summary shows the run's profile
    assert plain.code == 0, str(plain)
    assert "  time: model " in plain.out and "; per node: plan " in plain.out
    assert "  model gpt-4o-mini: 2 call(s), tokens 200+20, cost $" in plain.out
    bad = cli(*run_args(write_script), env={"WARDEN_LOG_LEVEL": "loud"})
    assert bad.code == 2 and bad.err.startswith("error: environment setting log_level"), str(bad)
