"""Warden against an OpenAI-compatible HTTP server (as vLLM, llama.cpp or Ollama expose).

A small real HTTP server on 127.0.0.1 (tests/support/openai_server.py) answers POST
/v1/chat/completions exactly as OpenAI does (non-streaming): first a tool call, then a
final answer, each with usage.
The real langchain-openai client talks to it, from the graph directly and from the
`warden` CLI (with --base-url, and with OPENAI_BASE_URL).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.models import make_model_factory
from graph.pricing import DEFAULT_PRICES, cost_usd
from tests.support.openai_server import (
    ANSWER,
    ANSWER_USAGE,
    TOOL_CALL_USAGE,
    FakeOpenAI,
    serve_openai,
)
from tools.builtin import default_tools

WARDEN = Path(sys.executable).parent / "warden"


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    """Serve scripted chat completions: a tool call until a tool result is sent, then an answer."""
    with serve_openai() as server:
        yield server


def expected_cost() -> float:
    price = DEFAULT_PRICES["gpt-4o-mini"]
    return cost_usd(
        price, TOOL_CALL_USAGE["prompt_tokens"], TOOL_CALL_USAGE["completion_tokens"]
    ) + cost_usd(price, ANSWER_USAGE["prompt_tokens"], ANSWER_USAGE["completion_tokens"])


def check_conversation(server: FakeOpenAI) -> None:
    """The two requests a completed run must have sent."""
    assert server.paths == ["/v1/chat/completions", "/v1/chat/completions"]
    first, second = server.requests
    assert first["model"] == "gpt-4o-mini"
    assert not first.get("stream")
    tools = {t["function"]["name"]: t for t in first["tools"]}
    assert {"read_file", "list_files", "send_email"} <= set(tools)
    assert tools["read_file"]["type"] == "function"
    assert tools["read_file"]["function"]["parameters"]["required"] == ["path"]
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assistant, tool = second["messages"][2], second["messages"][3]
    assert assistant["tool_calls"][0]["id"] == "call_x"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"path": "notes.txt"}
    assert tool["tool_call_id"] == "call_x"
    # A tool result goes out as text content parts (OpenAI's documented array form):
    # the fence lines and the data itself, which Warden keeps apart to avoid copying it.
    parts = tool["content"]
    assert isinstance(parts, list) and {p["type"] for p in parts} == {"text"}
    assert "alpha\nbeta" in "".join(p["text"] for p in parts)


async def test_graph_against_openai_compatible_server(
    openai_server: FakeOpenAI, saver: Any, workspace: Path, outbox: Path
) -> None:
    model = make_model_factory(base_url=openai_server.base_url)("openai:gpt-4o-mini")
    app = compile_graph(build_graph(model=model, tools=default_tools(workspace, outbox)), saver)
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    result = await app.ainvoke({"task": "What do the notes say?"}, config, context=Context())
    assert result["halt_reason"] == "completed"
    assert result["final_answer"] == ANSWER
    usage = result["usage"]
    assert usage["model_calls"] == 2
    assert usage["tool_calls_by_name"] == {"read_file": 1}
    assert usage["input_tokens"] == TOOL_CALL_USAGE["prompt_tokens"] + ANSWER_USAGE["prompt_tokens"]
    assert (
        usage["output_tokens"]
        == TOOL_CALL_USAGE["completion_tokens"] + ANSWER_USAGE["completion_tokens"]
    )
    assert usage["cost_usd"] == pytest.approx(expected_cost(), rel=1e-12)
    assert not any(w.startswith("price:") for w in result["budget_warnings"])
    check_conversation(openai_server)
    assert openai_server.auth == ["Bearer not-needed"] * 2  # no key: a placeholder is sent


def run_cli(
    database_url: str,
    tmp_path: Path,
    workspace: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "WARDEN_MODEL", "WARDEN_OPENAI_API_KEY")
    }
    full_env |= {"WARDEN_DATABASE_URL": database_url, "WARDEN_DATA_DIR": str(tmp_path / "data")}
    full_env |= env or {}
    return subprocess.run(
        [
            str(WARDEN),
            "run",
            "What do the notes say?",
            "--workspace",
            str(workspace),
            "--json",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=tmp_path,
        timeout=120,
    )


def check_cli_result(proc: subprocess.CompletedProcess[str], server: FakeOpenAI) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "completed"
    assert data["final_answer"] == ANSWER
    assert data["usage"]["input_tokens"] == 723
    assert data["usage"]["output_tokens"] == 45
    assert data["usage"]["cost_usd"] == pytest.approx(expected_cost(), rel=1e-12)
    check_conversation(server)


def test_cli_with_base_url_flag(
    openai_server: FakeOpenAI, database_url: str, tmp_path: Path, workspace: Path
) -> None:
    proc = run_cli(
        database_url,
        tmp_path,
        workspace,
        "--model",
        "openai:gpt-4o-mini",
        "--base-url",
        openai_server.base_url,
    )
    check_cli_result(proc, openai_server)


def test_cli_with_openai_base_url_env(
    openai_server: FakeOpenAI, database_url: str, tmp_path: Path, workspace: Path
) -> None:
    proc = run_cli(
        database_url,
        tmp_path,
        workspace,
        "--model",
        "openai:gpt-4o-mini",
        env={"OPENAI_BASE_URL": openai_server.base_url},
    )
    check_cli_result(proc, openai_server)


def test_cli_base_url_without_model_defaults_to_gpt_4o_mini(
    openai_server: FakeOpenAI, database_url: str, tmp_path: Path, workspace: Path
) -> None:
    proc = run_cli(database_url, tmp_path, workspace, "--base-url", openai_server.base_url)
    check_cli_result(proc, openai_server)
