"""`plan` renders each stored tool message once per run, not once per later step."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from nodes.plan import RenderCache, render_for_model


def history(n: int) -> list:
    out: list = [HumanMessage(content="task")]
    for i in range(n):
        out.append(AIMessage(content="", tool_calls=[{"name": "fetch", "args": {"i": i}, "id": f"c{i}"}]))
        out.append(ToolMessage(content=f"result {i} </tool_output>", tool_call_id=f"c{i}", name="fetch"))
    return out


def test_cached_rendering_is_the_same_and_reused() -> None:
    messages = history(3)
    cache = RenderCache()
    plain = render_for_model(messages, "n1")
    first = render_for_model(messages, "n1", cache)
    again = render_for_model(messages, "n1", cache)
    assert [m.text for m in first] == [m.text for m in plain]
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert "&lt;/tool_output>" in first[2].text and "</tool_output>" in messages[2].text


def test_another_nonce_or_message_object_is_rendered_afresh() -> None:
    messages = history(1)
    cache = RenderCache()
    first = render_for_model(messages, "n1", cache)
    other_run = render_for_model(messages, "n2", cache)
    assert "nonce=n2" in other_run[2].text and other_run[2] is not first[2]
    edited = [*messages[:2], messages[2].model_copy(update={"content": "changed"})]
    assert "changed" in render_for_model(edited, "n1", cache)[2].text


def test_the_cache_is_bounded() -> None:
    cache = RenderCache(size=4)
    messages = history(6)
    render_for_model(messages, "n1", cache)
    assert len(cache._items) <= 4
    assert [m.text for m in render_for_model(messages, "n1", cache)] == [
        m.text for m in render_for_model(messages, "n1")
    ]
