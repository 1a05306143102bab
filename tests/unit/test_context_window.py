"""Context assembly pieces: units, cut results keep provenance, the walk, token counting."""

from __future__ import annotations

import secrets
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from graph.context import Context
from graph.injection import fence
from graph.scripted import ScriptedChatModel
from graph.settings import load_config_file
from nodes.context_window import (
    _RENDERED,
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
    encoding,
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
    # history's string (one of its text blocks), not hold a second copy of every result.
    data = secrets.token_hex(1536)
    message = ToolMessage(content=data, tool_call_id="call_1_1", name="fetch")
    shown = render_tool_message(message, NONCE, step=1)
    blocks = shown.content
    assert isinstance(blocks, list) and [b["type"] for b in blocks] == ["text"] * 4
    assert blocks[2]["text"] is data
    assert shown.text == fence(data, NONCE, tool="fetch", call_id="call_1_1", step=1)


def test_the_render_memo_keeps_no_rendered_message_nor_the_data() -> None:
    # The memo outlives each prompt (it spans steps and runs): holding the rendered
    # messages kept a copy of every tool result of every live run in a busy worker.
    # (Results cut to a limit are kept rendered; none is cut here.)
    nonce = secrets.token_hex(8)
    data = secrets.token_hex(1536)
    neutralised = f"see {nonce}"  # neutralising changes it: the new text is kept
    history: list[Any] = [
        HumanMessage(content="task", id="h"),
        ai(1, "a", "b"),
        result("a", data),
        result("b", neutralised),
    ]
    assembler = Assembler(
        ctx=Context(), model=ScriptedChatModel.from_turns([{"content": "x"}]), nonce=nonce, offered=[]
    )
    before = sys.getrefcount(data)
    window = assembler.assemble(history, [])
    # Nor does the window: its prompt is rendered when taken (plan takes it for the
    # model call alone), so the copies go with the call.
    assert sys.getrefcount(data) == before
    first = window.messages
    assert first[-2].content[2]["text"] is data  # type: ignore[index]
    again = assembler.assemble(history, [])  # from the memo
    assert again.messages == first and again.tokens == window.tokens
    assert again.messages[-2].content[2]["text"] is data  # type: ignore[index]
    assert again.messages[-1].text == fence(f"see {nonce}", nonce, tool="fetch", call_id="b", step=1)
    del first, again
    assert sys.getrefcount(data) == before
    entries = [forms for key, (forms, _) in _RENDERED.items() if key[1] == nonce and key[-1] is None]
    assert entries and not any(isinstance(f, BaseMessage) for forms in entries for f in forms)


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
    for k in range(300):  # random nonces: digits and letters meet the split either way
        nonce = secrets.token_hex(8)
        name = None if k % 3 == 0 else "fetch"
        message = ToolMessage(
            content=data, tool_call_id=f"c{k}", name=name, status="error" if k % 2 else "success"
        )
        shown = render_tool_message(message, nonce, k)
        assert offline_tokens(shown) == text_tokens(shown.text)
        # A cut result's note ends in "]" before the closing line's newline, which the
        # joined text tokenises together: counted apart it is at most a token more.
        cut = render_tool_message(message, nonce, k, limit=20)
        assert 0 <= offline_tokens(cut) - text_tokens(cut.text) <= 1


def test_a_new_runs_first_prompt_counts_from_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    # A resumed run has a new nonce, so every shown result is rendered again; only the
    # nonce's own block is new text to tokenise, not one opening line per result.
    history: list[Any] = [HumanMessage(content="task", id="h")]
    for n in range(60):
        history += [ai(n, f"c{n}"), result(f"c{n}", secrets.token_hex(64))]
    model = ScriptedChatModel.from_turns([{"content": "x"}])
    ctx = Context(context_budget_tokens=20_000, truncate_tool_tokens=40)
    Assembler(ctx=ctx, model=model, nonce=secrets.token_hex(8), offered=[]).assemble(history, [])
    encoded: list[str] = []
    encoder = type(encoding())
    encode = encoder.encode

    def counting(self: Any, text: str, **kwargs: Any) -> list[int]:
        encoded.append(text)
        return encode(self, text, **kwargs)

    monkeypatch.setattr(encoder, "encode", counting)
    window = Assembler(ctx=ctx, model=model, nonce=secrets.token_hex(8), offered=[]).assemble(
        history, []
    )
    assert window.shown_in_full + window.truncated > 50
    assert len(encoded) <= 8


class CountingHistory(list[Any]):
    """A history that counts the messages read from it by index."""

    reads = 0

    def __getitem__(self, index: Any) -> Any:
        CountingHistory.reads += 1
        return super().__getitem__(index)


def shape(units: list[Unit]) -> list[tuple[int, list[str | None], int, bool]]:
    return [(u.start, [m.id for m in u.messages], u.step, u.pinned) for u in units]


def test_a_grown_history_is_grouped_from_where_it_was() -> None:
    # plan groups the history at every step: a step's few new messages cost the work,
    # not the whole history again.
    history: list[Any] = [HumanMessage(content="task", id="h")]
    for n in range(400):
        history += [ai(n, f"c{n}"), result(f"c{n}")]
    units_of(history)
    grown = CountingHistory([*history, ai(400, "c400"), result("c400")])
    CountingHistory.reads = 0
    units = units_of(grown)
    assert CountingHistory.reads < 60
    fresh = [m.model_copy() for m in grown]  # other objects: grouped from scratch
    assert shape(units) == shape(units_of(fresh))


def test_grouping_from_a_prefix_equals_grouping_from_scratch() -> None:
    # Histories that grow step by step, with new tasks, Warden's notes, orphan
    # results, results that arrive a step after their call, and edits that are not
    # growth (a replaced or removed message): always the from-scratch grouping.
    rng = secrets.SystemRandom()
    for trial in range(40):
        history: list[Any] = []
        pending: list[str] = []
        for k in range(60):
            roll = rng.random()
            if roll < 0.1:
                history.append(HumanMessage(content=f"task {k}", id=f"h{trial}-{k}"))
            elif roll < 0.15:
                history.append(HumanMessage(content="note", name="warden", id=f"w{trial}-{k}"))
            elif roll < 0.45:
                pending = [f"c{trial}-{k}-{j}" for j in range(rng.randint(0, 2))]
                history.append(ai(k, *pending))
                history[-1].id = f"ai{trial}-{k}"
            elif roll < 0.8 and pending:
                history.append(result(pending.pop(0)))
            elif roll < 0.85:
                history.append(result(f"orphan{trial}-{k}"))
            elif roll < 0.9 and history:
                history = history[: rng.randrange(len(history))]  # not growth
            elif history:
                index = rng.randrange(len(history))
                history = [*history[:index], history[index].model_copy(), *history[index + 1 :]]
            grouped = units_of(list(history))
            assert shape(grouped) == shape(units_of([m.model_copy() for m in history])), (trial, k)


def test_grouping_keeps_one_entry_per_growing_history(monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory: a run's steps replace their entry instead of adding one per step.
    from nodes import context_window

    monkeypatch.setattr(context_window, "_UNITS", OrderedDict())
    history: list[Any] = [HumanMessage(content="task", id="h-one-entry")]
    for n in range(30):
        history = [*history, ai(n, f"e{n}"), result(f"e{n}")]
        units_of(history)
    assert len(context_window._UNITS) == 1
