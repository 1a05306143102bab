"""Loop detection primitives in graph/loops.py: fingerprints, repetitions, cycles, windows."""

from __future__ import annotations

from typing import Any

import pytest

from graph.loops import (
    args_hash,
    call_fingerprint,
    canonical_json,
    cycle,
    detect_call_loop,
    detect_proposed_loop,
    fingerprint,
    push,
    repeated,
)

A = call_fingerprint("read_file", {"path": "a.txt"})
B = call_fingerprint("read_file", {"path": "b.txt"})
C = call_fingerprint("list_files", {"path": "."})


# --- canonical_json / args_hash ------------------------------------------------------


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == '{"a":[1,{"c":3,"d":2}],"b":1}'


def test_canonical_json_keeps_unicode_and_stringifies_unknown_types() -> None:
    assert canonical_json({"name": "Zoë"}) == '{"name":"Zoë"}'
    assert canonical_json({"when": object}) == '{"when":"<class \'object\'>"}'


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"to": "a@b.co", "subject": "s", "body": "b"}, {"body": "b", "subject": "s", "to": "a@b.co"}),
        ({"outer": {"x": 1, "y": 2}}, {"outer": {"y": 2, "x": 1}}),
        ({}, {}),
    ],
)
def test_args_hash_is_independent_of_key_order(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert args_hash(left) == args_hash(right)
    assert call_fingerprint("t", left) == call_fingerprint("t", right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"path": "a"}, {"path": "b"}),
        ({"n": 1}, {"n": "1"}),
        ({"items": [1, 2]}, {"items": [2, 1]}),
        ({"a": None}, {}),
    ],
)
def test_args_hash_distinguishes_different_arguments(
    left: dict[str, Any], right: dict[str, Any]
) -> None:
    assert args_hash(left) != args_hash(right)


def test_args_hash_is_stable_sha256() -> None:
    # A stored approval hash must stay valid across processes and releases.
    assert args_hash({}) == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert len(args_hash({"x": 1})) == 64


def test_fingerprints_depend_on_tool_name_and_kind() -> None:
    assert call_fingerprint("read_file", {"path": "a"}) != call_fingerprint("cat", {"path": "a"})
    assert fingerprint("error", "t", "boom") != fingerprint("observation", "t", "boom")
    assert len(fingerprint("x")) == 16
    assert fingerprint("x", 1) == fingerprint("x", 1)


# --- repeated / cycle ----------------------------------------------------------------

REPEATED_CASES = [
    pytest.param([], 3, False, id="empty"),
    pytest.param([A, A], 3, False, id="twice"),
    pytest.param([A, A, A], 3, True, id="three-in-a-row"),
    pytest.param([A, B, A, C, A], 3, True, id="three-scattered"),
    pytest.param([A, A, A, B], 3, False, id="newest-differs"),
    pytest.param([A, A], 2, True, id="threshold-two"),
]


@pytest.mark.parametrize(("items", "threshold", "expected"), REPEATED_CASES)
def test_repeated(items: list[str], threshold: int, expected: bool) -> None:
    assert repeated(items, threshold) is expected


CYCLE_CASES = [
    pytest.param([A, B, A, B, A, B], 3, 2, id="ab-three-times"),
    pytest.param([C, A, B, A, B, A, B], 3, 2, id="ab-after-other"),
    pytest.param([A, B, C, A, B, C, A, B, C], 3, 3, id="abc-three-times"),
    pytest.param([A, B, A, B], 3, None, id="ab-twice"),
    pytest.param([A, B, A, B], 2, 2, id="ab-twice-repeats-two"),
    pytest.param([A, A, A], 3, None, id="aaa-is-not-a-cycle"),
    pytest.param([A] * 9, 3, None, id="a-nine-times-is-not-a-cycle"),
    pytest.param([A, B, A, B, B, A], 3, None, id="broken-pattern"),
    pytest.param([A, B, A, B, A], 3, None, id="incomplete-third"),
    pytest.param([], 3, None, id="empty"),
]


@pytest.mark.parametrize(("items", "repeats", "period"), CYCLE_CASES)
def test_cycle(items: list[str], repeats: int, period: int | None) -> None:
    assert cycle(items, repeats) == period


# --- detect_call_loop / detect_proposed_loop ----------------------------------------


def test_same_call_three_times_is_a_loop() -> None:
    found = detect_call_loop([A, A, A], repeat_threshold=3, cycle_repeats=3)
    assert found == "the same tool call with the same arguments was made 3 times"


def test_same_tool_with_different_args_is_not_a_loop() -> None:
    calls = [call_fingerprint("read_file", {"path": f"{i}.txt"}) for i in range(10)]
    assert detect_call_loop(calls, repeat_threshold=3, cycle_repeats=3) is None
    assert detect_proposed_loop(calls[:9], calls[9:], repeat_threshold=3, cycle_repeats=3) is None


def test_key_order_does_not_hide_a_loop() -> None:
    first = call_fingerprint("send_email", {"to": "a@b.co", "subject": "s"})
    again = call_fingerprint("send_email", {"subject": "s", "to": "a@b.co"})
    found = detect_call_loop([first, again, first], repeat_threshold=3, cycle_repeats=3)
    assert found is not None


def test_cycle_is_reported_when_repetition_threshold_is_higher() -> None:
    found = detect_call_loop([A, B, A, B, A, B], repeat_threshold=10, cycle_repeats=3)
    assert found == "a cycle of 2 tool calls repeated 3 times"


def test_repetition_is_reported_before_a_cycle() -> None:
    found = detect_call_loop([A, B, A, B, A, B], repeat_threshold=3, cycle_repeats=3)
    assert found == "the same tool call with the same arguments was made 3 times"


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        pytest.param([A, B, A, B], None, id="two-rounds"),
        pytest.param([A, B, C, A, B], None, id="no-pattern"),
        pytest.param([A, A], None, id="below-threshold"),
    ],
)
def test_no_loop(calls: list[str], expected: None) -> None:
    assert detect_call_loop(calls, repeat_threshold=3, cycle_repeats=3) is expected


def test_proposed_loop_checks_each_call_in_order() -> None:
    # The window holds A twice; a batch [C, A] completes the repetition with its 2nd call.
    found = detect_proposed_loop([A, A], [C, A], repeat_threshold=3, cycle_repeats=3)
    assert found == "the same tool call with the same arguments was made 3 times"


def test_proposed_batch_can_loop_on_its_own() -> None:
    found = detect_proposed_loop([], [A, A, A], repeat_threshold=3, cycle_repeats=3)
    assert found is not None
    assert detect_proposed_loop([], [A, A], repeat_threshold=3, cycle_repeats=3) is None


def test_proposed_cycle_completed_by_the_batch() -> None:
    found = detect_proposed_loop(
        [A, B, A, B], [A, B], repeat_threshold=10, cycle_repeats=3
    )
    assert found == "a cycle of 2 tool calls repeated 3 times"


def test_proposed_loop_does_not_mutate_window() -> None:
    window = [A, A]
    detect_proposed_loop(window, [A], repeat_threshold=3, cycle_repeats=3)
    assert window == [A, A]


def test_empty_proposal_is_no_loop() -> None:
    assert detect_proposed_loop([A, A, A], [], repeat_threshold=3, cycle_repeats=3) is None


# --- push ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "new", "size", "expected"),
    [
        pytest.param([], [A], 4, [A], id="first"),
        pytest.param([A, B], [C], 4, [A, B, C], id="room-left"),
        pytest.param([A, B, C, A], [B], 4, [B, C, A, B], id="drops-oldest"),
        pytest.param([A], [B, C, A, B, C], 4, [C, A, B, C], id="batch-larger-than-room"),
        pytest.param([A, B], [], 4, [A, B], id="nothing-new"),
        pytest.param([A, B, C], [], 2, [B, C], id="shrinks-to-size"),
    ],
)
def test_push(window: list[str], new: list[str], size: int, expected: list[str]) -> None:
    original = list(window)
    assert push(window, new, size) == expected
    assert window == original


def test_window_size_bounds_repetition_memory() -> None:
    """A call that slid out of the window no longer counts toward a loop."""
    window: list[str] = []
    for item in [A, B, C, C, B, C, A, B, C, B]:
        window = push(window, [item], 4)
    assert window == [A, B, C, B]
    assert detect_proposed_loop(window, [A], repeat_threshold=3, cycle_repeats=3) is None
    assert detect_proposed_loop(window, [B], repeat_threshold=3, cycle_repeats=3) is not None
