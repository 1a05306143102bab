"""The scripted model (graph/scripted.py): script loading, turn replay, usage, latency."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from graph.errors import ConfigError, ScriptExhaustedError
from graph.scripted import ScriptedChatModel, load_script
from tests.conftest import call, turn

PROMPT = [SystemMessage(content="You are an agent."), HumanMessage(content="summarise notes")]


def at_turn(index: int) -> dict[str, Any]:
    """Return invoke config that tells the model which turn to replay, as `plan` does."""
    return {"metadata": {"warden_turn": index}}


# --- load_script ---------------------------------------------------------------------


def test_load_script_reads_the_contract_format(write_script: Callable[..., Path]) -> None:
    path = write_script(
        [turn("reading", call("read_file", path="notes.txt")), turn("done", tokens=None)],
        model="gpt-4o",
    )
    script = load_script(path)
    assert script.model == "gpt-4o"
    assert [t.content for t in script.turns] == ["reading", "done"]
    assert script.turns[0].tool_calls[0].args == {"path": "notes.txt"}
    assert script.turns[0].usage is not None
    assert script.turns[0].usage.input_tokens == 100
    assert script.turns[1].usage is None


def test_model_defaults_to_scripted(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"turns": [{}]}')
    script = load_script(path)
    assert script.model == "scripted"
    assert script.turns[0].content == ""
    assert script.turns[0].tool_calls == []


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_script(missing)
    assert str(info.value) == f"script file not found: {missing}"


def test_directory_is_not_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_script(tmp_path)
    assert str(info.value).startswith(f"cannot read script {tmp_path}:")
    assert "\n" not in str(info.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"turns": [{"content": "caf\xe9"}]}')
    with pytest.raises(ConfigError) as info:
        load_script(path)
    assert str(info.value).startswith(f"cannot read script {path}:")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('{"turns": [}', "Expecting value at line 1", id="bad-token"),
        pytest.param('{\n"turns": []\n,}', "Expecting property name enclosed in double quotes at "
                     "line 3", id="trailing-comma"),
        pytest.param("", "Expecting value at line 1", id="empty-file"),
    ],
)
def test_invalid_json(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_script(path)
    assert str(info.value) == f"script {path} is not valid JSON: {message}"


SHAPE_ERRORS = [
    pytest.param([], "top level: Input should be a valid dictionary", id="top-level-list"),
    pytest.param({}, "turns: Field required", id="no-turns"),
    pytest.param({"turns": {"content": "x"}}, "turns: Input should be a valid list",
                 id="turns-object"),
    pytest.param({"turns": ["hello"]}, "turns.0: Input should be a valid dictionary",
                 id="turn-string"),
    pytest.param({"turns": [{"content": 5}]}, "turns.0.content: Input should be a valid string",
                 id="content-number"),
    pytest.param({"turns": [{"tool_calls": {"name": "x"}}]},
                 "turns.0.tool_calls: Input should be a valid list", id="tool-calls-object"),
    pytest.param({"turns": [{}, {"tool_calls": [{"args": {}}]}]},
                 "turns.1.tool_calls.0.name: Field required", id="tool-call-without-name"),
    pytest.param({"turns": [{"tool_calls": [{"name": ""}]}]},
                 "turns.0.tool_calls.0.name: String should have at least 1 character",
                 id="tool-call-empty-name"),
    pytest.param({"turns": [{"tool_calls": [{"name": "x", "args": [1]}]}]},
                 "turns.0.tool_calls.0.args", id="args-list"),
    pytest.param({"turns": [{"usage": {"input_tokens": 1}}]},
                 "turns.0.usage.output_tokens: Field required", id="usage-incomplete"),
    pytest.param({"turns": [{"usage": {"input_tokens": -1, "output_tokens": 1}}]},
                 "turns.0.usage.input_tokens: Input should be greater than or equal to 0",
                 id="usage-negative"),
    pytest.param({"turns": [{"delay_seconds": -1}]},
                 "turns.0.delay_seconds: Input should be greater than or equal to 0",
                 id="negative-delay"),
    pytest.param({"turns": [{"delay_seconds": 601}]},
                 "turns.0.delay_seconds: Input should be less than or equal to 600",
                 id="delay-too-long"),
    pytest.param({"model": 4, "turns": []}, "model: Input should be a valid string",
                 id="model-number"),
]


@pytest.mark.parametrize(("raw", "message"), SHAPE_ERRORS)
def test_wrong_shapes(tmp_path: Path, raw: Any, message: str) -> None:
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        load_script(path)
    text = str(info.value)
    assert text.startswith(f"script {path} is malformed at {message}")
    assert "\n" not in text


UNKNOWN_KEYS = [
    pytest.param({"turns": [], "temperature": 0}, "temperature", id="top-level"),
    pytest.param({"turns": [{"text": "hi"}]}, "turns.0.text", id="turn"),
    pytest.param({"turns": [{"tool_calls": [{"name": "t", "arguments": {}}]}]},
                 "turns.0.tool_calls.0.arguments", id="tool-call"),
    pytest.param({"turns": [{"usage": {"input_tokens": 1, "output_tokens": 1,
                                       "total_tokens": 2}}]},
                 "turns.0.usage.total_tokens", id="usage"),
]


@pytest.mark.parametrize(("raw", "where"), UNKNOWN_KEYS)
def test_unknown_keys(tmp_path: Path, raw: Any, where: str) -> None:
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        load_script(path)
    assert str(info.value) == f"script {path} is malformed at {where}: Extra inputs are not permitted"


# --- replay --------------------------------------------------------------------------


async def test_turn_index_comes_from_warden_turn_metadata() -> None:
    model = ScriptedChatModel.from_turns([turn("zero"), turn("one"), turn("two")])
    # The metadata wins over the number of AIMessages in the prompt.
    history = [*PROMPT, AIMessage(content="old")]
    assert (await model.ainvoke(history, config=at_turn(2))).content == "two"
    assert (await model.ainvoke(PROMPT, config=at_turn(1))).content == "one"
    assert model.invoke(PROMPT, config=at_turn(2)).content == "two"


async def test_turn_index_falls_back_to_ai_message_count() -> None:
    model = ScriptedChatModel.from_turns(
        [turn("zero"), turn("one", call("read_file", path="a")), turn("two")]
    )
    assert (await model.ainvoke(PROMPT)).content == "zero"
    first = AIMessage(content="zero")
    second = AIMessage(
        content="one", tool_calls=[{"name": "read_file", "args": {"path": "a"}, "id": "c"}]
    )
    history = [*PROMPT, first, second, ToolMessage(content="alpha", tool_call_id="c")]
    reply = await model.ainvoke(history)
    assert reply.content == "two"
    assert reply.id == "scripted-turn-3"


async def test_reply_carries_tool_calls_usage_and_model_name() -> None:
    model = ScriptedChatModel.from_turns(
        [turn("emailing", call("send_email", to="a@b.co", subject="s", body="b"),
              {"name": "read_file", "args": {"path": "x"}, "id": "mine"}, tokens=(120, 30))],
        model="gpt-4o-mini",
    )
    reply = await model.ainvoke(PROMPT)
    assert isinstance(reply, AIMessage)
    assert reply.tool_calls == [
        {"name": "send_email", "args": {"to": "a@b.co", "subject": "s", "body": "b"},
         "id": "call_1_1", "type": "tool_call"},
        {"name": "read_file", "args": {"path": "x"}, "id": "mine", "type": "tool_call"},
    ]
    assert reply.invalid_tool_calls == []
    assert reply.usage_metadata == {"input_tokens": 120, "output_tokens": 30, "total_tokens": 150}
    assert reply.response_metadata["model_name"] == "gpt-4o-mini"


async def test_usage_is_estimated_when_absent() -> None:
    model = ScriptedChatModel.from_turns([turn("final answer here", tokens=None)])
    reply = await model.ainvoke(PROMPT)
    prompt_chars = len("You are an agent.") + len("summarise notes")
    expected_out = (len("final answer here") + len("[]")) // 4 + 1
    assert reply.usage_metadata == {
        "input_tokens": prompt_chars // 4 + 1,
        "output_tokens": expected_out,
        "total_tokens": prompt_chars // 4 + 1 + expected_out,
    }


async def test_estimated_usage_grows_with_prompt_and_arguments() -> None:
    model = ScriptedChatModel.from_turns(
        [turn("", call("write", text="x" * 400), tokens=None)]
    )
    short = await model.ainvoke(PROMPT)
    long = await model.ainvoke([*PROMPT, HumanMessage(content="y" * 800)], config=at_turn(0))
    assert short.usage_metadata is not None and long.usage_metadata is not None
    assert long.usage_metadata["input_tokens"] == short.usage_metadata["input_tokens"] + 200
    assert short.usage_metadata["output_tokens"] > 100


async def test_string_args_are_parsed_like_provider_json() -> None:
    model = ScriptedChatModel.from_turns(
        [{"content": "", "tool_calls": [{"name": "read_file", "args": '{"path": "notes.txt"}'}]}]
    )
    reply = await model.ainvoke(PROMPT)
    assert reply.tool_calls[0]["args"] == {"path": "notes.txt"}
    assert reply.invalid_tool_calls == []


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param('{"path": "notes.txt"', "Expecting ',' delimiter", id="truncated"),
        pytest.param("path=notes.txt", "Expecting value", id="not-json"),
        pytest.param('["notes.txt"]', "args is not an object", id="json-list"),
        pytest.param('"notes.txt"', "args is not an object", id="json-string"),
    ],
)
async def test_invalid_string_args_become_invalid_tool_calls(raw: str, error: str) -> None:
    model = ScriptedChatModel.from_turns(
        [{"content": "", "tool_calls": [
            {"name": "list_files", "args": {}},
            {"name": "read_file", "args": raw, "id": "bad"},
        ]}]
    )
    reply = await model.ainvoke(PROMPT)
    assert [c["name"] for c in reply.tool_calls] == ["list_files"]
    assert len(reply.invalid_tool_calls) == 1
    bad = reply.invalid_tool_calls[0]
    assert (bad["name"], bad["id"], bad["args"]) == ("read_file", "bad", raw)
    assert bad["error"] is not None and bad["error"].startswith(error)


async def test_bind_tools_returns_the_same_model() -> None:
    model = ScriptedChatModel.from_turns([turn("x")])
    assert model.bind_tools([]) is model


async def test_exhausted_script_names_file_and_turn(write_script: Callable[..., Path]) -> None:
    path = write_script([turn("only"), turn("two")])
    model = ScriptedChatModel.from_file(path)
    with pytest.raises(ScriptExhaustedError) as info:
        await model.ainvoke(PROMPT, config=at_turn(2))
    assert str(info.value) == (
        f"scripted model ran out of turns: {path} has 2 and turn 3 was requested"
    )
    with pytest.raises(ScriptExhaustedError, match="turn 4 was requested"):
        model.invoke(PROMPT, config=at_turn(3))


async def test_inline_script_is_named_inline() -> None:
    model = ScriptedChatModel.from_turns([])
    with pytest.raises(ScriptExhaustedError, match=r"<inline> has 0 and turn 1 was requested"):
        await model.ainvoke(PROMPT)


def test_from_file_reports_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="script file not found"):
        ScriptedChatModel.from_file(tmp_path / "missing.json")


# --- latency -------------------------------------------------------------------------


async def test_delay_seconds_is_honoured_without_blocking_the_loop() -> None:
    model = ScriptedChatModel.from_turns([{"content": "slow", "delay_seconds": 1.0}])
    started = time.perf_counter()
    replies = await asyncio.gather(model.ainvoke(PROMPT), model.ainvoke(PROMPT))
    elapsed = time.perf_counter() - started
    assert [r.content for r in replies] == ["slow", "slow"]
    assert 0.99 <= elapsed < 1.9  # both waited, concurrently (in turn would take 2s)


async def test_delay_applies_only_to_its_turn() -> None:
    model = ScriptedChatModel.from_turns([turn("fast"), {"content": "slow", "delay_seconds": 1.0}])
    started = time.perf_counter()
    assert (await model.ainvoke(PROMPT, config=at_turn(0))).content == "fast"
    assert time.perf_counter() - started < 0.9
    started = time.perf_counter()
    assert (await model.ainvoke(PROMPT, config=at_turn(1))).content == "slow"
    assert time.perf_counter() - started >= 0.99


async def test_delayed_call_can_be_cut_off_by_wait_for() -> None:
    """`plan` bounds a model call by the remaining time; the scripted delay must yield."""
    model = ScriptedChatModel.from_turns([{"content": "late", "delay_seconds": 5}])
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(model.ainvoke(PROMPT), timeout=0.1)
    assert time.perf_counter() - started < 1.0


def test_sync_invoke_honours_delay() -> None:
    model = ScriptedChatModel.from_turns([{"content": "slow", "delay_seconds": 0.2}])
    started = time.perf_counter()
    assert model.invoke(PROMPT).content == "slow"
    assert time.perf_counter() - started >= 0.19
