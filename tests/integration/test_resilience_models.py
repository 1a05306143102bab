"""Model-call resilience: retries, Retry-After, timeouts, fallbacks and rate limits.

Retries and fallbacks are proven against the real OpenAI-compatible server of
tests/support (real HTTP on 127.0.0.1, the real langchain-openai / openai SDK client),
made to answer 429 with Retry-After, 500 with an HTML page, too slowly, always 500, and
with malformed tool-call JSON; the server timestamps each request on arrival. The rate
limiter is measured on the real clock with the scripted model and small numbers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import StructuredTool

from graph.builder import build_graph, compile_graph
from graph.context import Context
from graph.models import make_model_factory
from graph.pricing import DEFAULT_PRICES, cost_usd
from tests.conftest import call, turn
from tests.support.openai_server import (
    ANSWER,
    ANSWER_USAGE,
    FakeOpenAI,
    Reply,
    answer_completion,
    error_body,
    serve_openai,
    tool_call_completion,
)
from tools.registry import ToolSpec

MODEL = "openai:gpt-4o-mini"


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    """The server; whatever is not scripted gets a final answer."""
    with serve_openai() as server:
        server.responder = lambda body: Reply(body=answer_completion())
        yield server


@pytest.fixture
def noted() -> list[int]:
    """What the `note` tool was called with."""
    return []


@pytest.fixture
def note(noted: list[int]) -> ToolSpec:
    """A harmless read tool, so scripts can take several model turns."""

    async def note(n: int) -> str:
        noted.append(n)
        return f"note {n}"

    return ToolSpec(
        tool=StructuredTool.from_function(coroutine=note, name="note", description="Read note n."),
        tier="read",
    )


def app_for(saver: Any, note: ToolSpec, base_url: str | None = None, timeout: float = 60.0) -> Any:
    factory = make_model_factory(base_url=base_url, timeout=timeout)
    return compile_graph(build_graph(tools=[note], model_factory=factory), saver)


def thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": str(uuid.uuid4())}}


async def run(app: Any, config: dict[str, Any] | None = None, **ctx: Any) -> dict[str, Any]:
    return await app.ainvoke(
        {"task": "What do the notes say?"}, config or thread(), context=Context(**ctx)
    )


# --- retries in the provider SDK, wired to Context.model_retries --------------------


async def test_429_is_retried_after_the_servers_retry_after(
    openai_server: FakeOpenAI, saver: Any, note: ToolSpec
) -> None:
    openai_server.script(
        Reply(
            429,
            body=error_body("Rate limit reached for requests", "requests"),
            headers={"Retry-After": "1"},
        )
    )
    state = await run(app_for(saver, note, openai_server.base_url), model=MODEL)

    assert state["halt_reason"] == "completed"
    assert state["final_answer"] == ANSWER
    assert len(openai_server.received) == 2
    first, second = openai_server.times
    # The SDK's own backoff for a first retry is at most 0.5 s: waiting a full second
    # means it honoured Retry-After.
    assert 1.0 <= second - first < 2.0
    assert state["usage"]["model_calls"] == 1


async def test_a_5xx_html_page_is_retried(
    openai_server: FakeOpenAI, saver: Any, note: ToolSpec
) -> None:
    openai_server.script(
        Reply(
            500,
            raw=b"<html><body>502 Bad Gateway</body></html>",
            headers={"Content-Type": "text/html"},
        )
    )
    state = await run(app_for(saver, note, openai_server.base_url), model=MODEL)

    assert state["halt_reason"] == "completed"
    assert state["final_answer"] == ANSWER
    assert len(openai_server.received) == 2
    assert openai_server.requests[0] == openai_server.requests[1]  # the same request again
    first, second = openai_server.times
    assert 0.3 <= second - first < 1.0  # exponential backoff, first step (0.5 s - jitter)


async def test_a_response_slower_than_the_timeout_is_abandoned_and_retried(
    openai_server: FakeOpenAI, saver: Any, note: ToolSpec
) -> None:
    openai_server.script(Reply(delay=3.0, body=answer_completion("too late")))
    app = app_for(saver, note, openai_server.base_url, timeout=0.5)
    started = time.monotonic()
    state = await run(app, model=MODEL)

    assert time.monotonic() - started < 2.5  # did not wait for the slow answer
    assert state["halt_reason"] == "completed"
    assert state["final_answer"] == ANSWER
    assert len(openai_server.received) == 2
    first, second = openai_server.times
    assert second - first >= 0.5  # the client gave up at its timeout, then retried


async def test_model_retries_sets_the_attempts_and_an_outage_leaves_the_run_resumable(
    openai_server: FakeOpenAI, saver: Any, note: ToolSpec
) -> None:
    openai_server.responder = lambda body: Reply(500, body=error_body("overloaded"))
    app = app_for(saver, note, openai_server.base_url)

    with pytest.raises(openai.InternalServerError):
        await run(app, model=MODEL, model_retries=0)
    assert len(openai_server.received) == 1

    config = thread()
    with pytest.raises(openai.InternalServerError):
        await run(app, config, model=MODEL, model_retries=1)
    assert len(openai_server.received) == 3  # one more attempt, from the same factory

    # The outage outlasted the retries: the run did not end, it can be resumed.
    snapshot = await app.aget_state(config)
    assert snapshot.next == ("plan",)
    openai_server.responder = lambda body: Reply(body=answer_completion())
    state = await app.ainvoke(None, config, context=Context(model=MODEL, model_retries=1))
    assert state["halt_reason"] == "completed"
    assert state["final_answer"] == ANSWER
    assert len(openai_server.received) == 4


async def test_fallback_model_answers_when_the_primary_keeps_failing(
    openai_server: FakeOpenAI, saver: Any, note: ToolSpec
) -> None:
    def by_model(body: dict[str, Any]) -> Reply:
        if body["model"] == "gpt-4o-mini":
            return Reply(503, body=error_body("primary is down"))
        return Reply(body=answer_completion("answered by the fallback", model="gpt-4o"))

    openai_server.responder = by_model
    state = await run(
        app_for(saver, note, openai_server.base_url),
        model=MODEL,
        fallback_models=("openai:gpt-4o",),
        model_retries=1,
    )

    assert state["halt_reason"] == "completed"
    assert state["final_answer"] == "answered by the fallback"
    # The primary got its retries first; then the fallback, with the same tools bound.
    assert openai_server.models == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o"]
    assert [t["function"]["name"] for t in openai_server.requests[2]["tools"]] == ["note"]
    assert state["usage"]["cost_usd"] == pytest.approx(
        cost_usd(
            DEFAULT_PRICES["gpt-4o"],
            ANSWER_USAGE["prompt_tokens"],
            ANSWER_USAGE["completion_tokens"],
        )
    )


async def test_malformed_tool_call_json_from_the_server_halts_with_error(
    openai_server: FakeOpenAI, saver: Any, note: ToolSpec, noted: list[int]
) -> None:
    openai_server.script(Reply(body=tool_call_completion("note", '{"n": 1')))
    state = await run(app_for(saver, note, openai_server.base_url), model=MODEL)

    assert state["halt_reason"] == "error"
    assert state["halt_detail"].startswith("model returned a malformed tool call 'note'")
    assert len(openai_server.received) == 1  # a malformed answer is not retried
    assert noted == []
    assert not any(isinstance(m, ToolMessage) and m.status == "success" for m in state["messages"])
    assert state["usage"]["model_calls"] == 1  # the call happened and is accounted for


# --- client-side rate limits (real clock, scripted model) ---------------------------


def waits(state: dict[str, Any]) -> list[float]:
    """The rate-limit wait recorded on each model turn."""
    return [
        m.response_metadata["warden"]["rate_limit_wait_s"]
        for m in state["messages"]
        if isinstance(m, AIMessage)
    ]


THREE_TURNS = [turn("", call("note", n=1)), turn("", call("note", n=2)), turn("done")]


async def test_requests_per_minute_spaces_model_calls(
    saver: Any, note: ToolSpec, write_script: Callable[..., Path]
) -> None:
    script = write_script(THREE_TURNS)
    started = time.monotonic()
    state = await run(app_for(saver, note), model=f"scripted:{script}", requests_per_minute=60)
    elapsed = time.monotonic() - started

    assert state["halt_reason"] == "completed"
    assert 2.0 <= elapsed < 5.0  # 3 calls at one a second: t = 0, 1, 2
    first, second, third = waits(state)
    assert first == 0
    assert 0.5 < second <= 1.0 and 0.5 < third <= 1.0
    # The waits happen inside `plan`: they are active time, counted against max_seconds.
    assert state["usage"]["active_seconds"] >= second + third


async def test_runs_in_one_process_share_the_limit(
    saver: Any, note: ToolSpec, write_script: Callable[..., Path]
) -> None:
    script = write_script([turn("done")])
    app = app_for(saver, note)
    started = time.monotonic()
    states = await asyncio.gather(
        *(run(app, model=f"scripted:{script}", requests_per_minute=60) for _ in range(3))
    )
    assert time.monotonic() - started >= 2.0
    assert all(s["halt_reason"] == "completed" for s in states)
    shared = sorted(w for s in states for w in waits(s))
    assert shared[0] == 0
    assert 0.5 < shared[1] <= 1.0  # one a second, whichever run reserved first
    assert 1.5 < shared[2] <= 2.0


async def test_a_rate_limit_wait_that_would_pass_the_budget_halts_max_seconds(
    saver: Any, note: ToolSpec, write_script: Callable[..., Path], noted: list[int]
) -> None:
    script = write_script(THREE_TURNS)
    started = time.monotonic()
    state = await run(
        app_for(saver, note), model=f"scripted:{script}", requests_per_minute=60, max_seconds=1.5
    )
    # It did not sleep into the budget's end: the run's active time (which counts limiter
    # waits, but not this test's graph compile or a loaded machine's scheduling gaps
    # between nodes) stayed under the budget. A sleep would have used all 1.5 s.
    assert state["usage"]["active_seconds"] < 1.5
    assert time.monotonic() - started < 10  # and no wait of a minute's window either
    assert state["halt_reason"] == "max_seconds"
    assert "model rate limit would pass the 1.5s budget" in state["halt_detail"]
    assert state["usage"]["model_calls"] == 2
    assert noted == [1, 2]


async def test_tokens_per_minute_counts_the_usage_the_provider_reported(
    saver: Any, note: ToolSpec, write_script: Callable[..., Path]
) -> None:
    # 30,000 tokens a minute (500 a second, a minute's burst). The prompts are small,
    # but each call reports 15,000 tokens: after two calls the minute is used up, so
    # the third waits until its (small) estimate has refilled. Counting estimates only,
    # nothing would wait.
    big = [
        turn("", call("note", n=1), tokens=(14_950, 50)),
        turn("", call("note", n=2), tokens=(14_950, 50)),
        turn("done", tokens=(14_950, 50)),
    ]
    state = await run(
        app_for(saver, note), model=f"scripted:{write_script(big)}", tokens_per_minute=30_000
    )
    assert state["halt_reason"] == "completed"
    first, second, third = waits(state)
    assert first == second == 0
    assert 0.05 < third < 3.0

    small = [turn("", call("note", n=1)), turn("", call("note", n=2)), turn("done")]
    state = await run(
        app_for(saver, note),
        model=f"scripted:{write_script(small, name='small.json')}",
        tokens_per_minute=30_000,
    )
    assert waits(state) == [0, 0, 0]
