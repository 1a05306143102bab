"""What keeps a thread's stored bytes small: the `usage` and `loop` delta reducers and
the saver's compact channel versions."""

from __future__ import annotations

import random
import string
import uuid
from typing import Any

import pytest
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from checkpoints.warden_saver import (
    WardenSaver,
    compact_version,
    decode_ts,
    encode_ts,
    is_compact,
    version_counter,
)
from graph.loops import push
from graph.state import (
    LoopUpdate,
    add_loop_batch,
    add_usage,
    add_usage_batch,
    compact_usage,
    empty_loop_state,
    empty_usage,
    expand_usage,
    merge_usage,
    usage_spent,
)

USAGE_DELTAS: list[dict[str, Any]] = [
    {"steps": 1, "active_seconds": 0.1, "node_seconds": {"plan": 0.1}, "model_calls": 1,
     "input_tokens": 100, "output_tokens": 20, "cost_usd": 2.7e-05, "last_input_tokens": 100,
     "by_model": {"m": {"calls": 1, "input_tokens": 100, "output_tokens": 20, "cost_usd": 2.7e-05}},
     "last_prompt_tokens": 900, "peak_prompt_tokens": 900},
    {"steps": 1, "active_seconds": 0.3, "node_seconds": {"act": 0.3}, "tool_calls": 2,
     "tool_calls_by_name": {"fetch": 1, "read_file": 1}, "tool_seconds": 0.25},
    {"steps": 1, "active_seconds": 0.01, "node_seconds": {"observe": 0.01}},
    {"steps": 1, "active_seconds": 0.2, "node_seconds": {"plan": 0.2}, "model_calls": 1,
     "input_tokens": 50, "output_tokens": 5, "cost_usd": 1.1e-05, "last_input_tokens": 50,
     "by_model": {"n": {"calls": 1, "input_tokens": 50, "output_tokens": 5, "cost_usd": 1.1e-05}},
     "last_prompt_tokens": 400, "peak_prompt_tokens": 400, "summary_calls": 1},
    {"steps": 1, "active_seconds": 0.02, "node_seconds": {"approve": 0.02}, "rejections": 1},
]


@pytest.mark.parametrize("cut", range(len(USAGE_DELTAS) + 1))
def test_usage_reducer_is_batching_invariant(cut: int) -> None:
    """Replaying deltas in any batches gives the counters the nodes computed one by one."""
    one_by_one = empty_usage()
    for delta in USAGE_DELTAS:
        one_by_one = add_usage(one_by_one, delta)
    split = add_usage_batch(add_usage_batch(empty_usage(), USAGE_DELTAS[:cut]), USAGE_DELTAS[cut:])
    assert split == add_usage_batch(empty_usage(), USAGE_DELTAS) == one_by_one
    assert (one_by_one["model_calls"], one_by_one["tool_calls"], one_by_one["steps"]) == (2, 2, 5)
    assert one_by_one["last_prompt_tokens"] == 400 and one_by_one["peak_prompt_tokens"] == 900
    assert one_by_one["by_model"] == {
        "m": {"calls": 1, "input_tokens": 100, "output_tokens": 20, "cost_usd": 2.7e-05},
        "n": {"calls": 1, "input_tokens": 50, "output_tokens": 5, "cost_usd": 1.1e-05},
    }


def test_usage_reducer_starts_a_never_written_channel_from_zero() -> None:
    """A DeltaChannel starts from `{}`: the first delta yields complete counters."""
    assert add_usage_batch({}, [{"steps": 1}]) == empty_usage() | {"steps": 1}  # type: ignore[typeddict-item]


def test_merged_deltas_apply_as_the_two_in_turn() -> None:
    """`plan` writes the summary model's usage and its own call as one merged delta."""
    first, second = USAGE_DELTAS[0], USAGE_DELTAS[3]
    assert add_usage(add_usage(None, first), second) == add_usage(None, merge_usage(first, second))


def loop_updates(window: int) -> list[LoopUpdate]:
    rng = random.Random(6)
    updates: list[LoopUpdate] = []
    for i in range(40):
        update = LoopUpdate(keep=window, calls=[f"c{i}"])
        if i % 3 == 0:
            update["errors"] = [f"e{i % 2}"]
        else:
            update["observations"] = [f"o{rng.randrange(5)}", f"o{i}"]
        if i % 7 == 6:
            update |= {"strikes": i // 7, "last": f"loop {i}"}
        updates.append(update)
    return updates


@pytest.mark.parametrize("cut", [0, 1, 5, 17, 39, 40])
def test_loop_reducer_is_batching_invariant_and_keeps_the_windows(cut: int) -> None:
    """Appending fingerprints and trimming to the window, in any batches, gives the
    windows `push` kept when nodes wrote whole loop states."""
    updates = loop_updates(window=6)
    split = add_loop_batch(add_loop_batch(empty_loop_state(), updates[:cut]), updates[cut:])
    whole = add_loop_batch(empty_loop_state(), updates)
    expected = empty_loop_state()
    for update in updates:
        for name in ("calls", "errors", "observations"):
            expected[name] = push(expected[name], update.get(name, []), 6)  # type: ignore[literal-required]
        if "strikes" in update:
            expected["strikes"], expected["last"] = update["strikes"], update["last"]
    assert split == whole == expected
    assert len(whole["calls"]) == 6 and whole["calls"][-1] == "c39"
    assert (whole["strikes"], whole["last"]) == (4, "loop 34")


def test_loop_update_without_fingerprints_keeps_the_windows() -> None:
    state = add_loop_batch(empty_loop_state(), [LoopUpdate(calls=["a", "b"], keep=5)])
    assert add_loop_batch(state, [LoopUpdate(strikes=1, last="x")]) == {
        "calls": ["a", "b"], "errors": [], "observations": [], "strikes": 1, "last": "x"
    }


# --- compact versions ----------------------------------------------------------------

OLD_FORMS = [
    "0000000062.15f493aa",  # Warden before compact versions
    "00000000000000000000000000000062.0.8391645523178254",  # the stock saver
]


def test_compact_versions_sort_as_their_counters() -> None:
    counters = [*range(1, 300), 3843, 3844, 3845, 238327, 238328, 10**9]
    versions = [compact_version(c) for c in counters]
    assert sorted(versions) == versions
    assert [version_counter(v) for v in versions] == counters
    assert all(is_compact(v) for v in versions)
    assert len(compact_version(3843)) == 8  # a letter, two digits, a five-digit tag


@pytest.mark.parametrize("old", OLD_FORMS)
def test_next_version_continues_an_older_thread_in_order(old: str) -> None:
    saver = WardenSaver.__new__(WardenSaver)  # get_next_version reads no state
    new = saver.get_next_version(old, None)
    assert is_compact(new) and not is_compact(old)
    assert version_counter(new) == 63 and new > old
    assert max([*OLD_FORMS, new]) == new
    # Even a low counter outranks the digit-led forms, so a thread never goes backwards.
    assert compact_version(1) > "9" * 40


def test_versions_of_one_step_differ_by_their_tag() -> None:
    """Two forks of one checkpoint get distinct versions for the same step."""
    saver = WardenSaver.__new__(WardenSaver)
    versions = {saver.get_next_version("b10abcde", None) for _ in range(50)}
    assert len(versions) == 50
    assert {version_counter(v) for v in versions} == {63}
    assert all(set(v) <= set(string.ascii_letters + string.digits) for v in versions)


SUMMARY_ONLY: dict[str, Any] = {
    # The summary model's usage as `plan` merges it: by_model counts it, model_calls not.
    "by_model": {"s": {"calls": 1, "input_tokens": 700, "output_tokens": 60, "cost_usd": 1.4e-04}},
    "input_tokens": 700, "output_tokens": 60, "cost_usd": 1.4e-04, "summary_calls": 1,
}


@pytest.mark.parametrize("delta", [*USAGE_DELTAS, SUMMARY_ONLY, {}])
def test_compact_usage_deltas_add_up_as_the_long_ones(delta: dict[str, Any]) -> None:
    """Nodes write deltas with short keys and without what the rest implies; they add
    to the counters (and to older, long deltas) exactly as the long form does."""
    compact = compact_usage(delta)
    start = add_usage(None, USAGE_DELTAS[1])
    assert add_usage(start, compact) == add_usage(start, delta)
    assert add_usage_batch(start, [compact, USAGE_DELTAS[2]]) == add_usage_batch(start, [delta, USAGE_DELTAS[2]])
    assert merge_usage(compact, USAGE_DELTAS[0]) == merge_usage(delta, USAGE_DELTAS[0])
    assert {k: v for k, v in usage_spent(compact).items() if v or k in delta} == delta
    if delta:
        assert len(JsonPlusSerializer().dumps_typed(compact)[1]) < len(JsonPlusSerializer().dumps_typed(delta)[1]) / 2


def test_a_node_step_is_written_in_a_quarter_of_the_bytes() -> None:
    """What `plan`, `act` and `observe` write per tool call: ~470 bytes long, ~130 compact."""
    long, short = (sum(len(JsonPlusSerializer().dumps_typed(f(d))[1]) for d in USAGE_DELTAS[:3])
                   for f in (dict, compact_usage))
    assert short * 3 < long
    assert [expand_usage(compact_usage(d)) for d in USAGE_DELTAS[:3]] == USAGE_DELTAS[:3]


@pytest.mark.parametrize(
    "ts",
    ["2026-11-21T14:11:45.238268+00:00", "2026-11-21T14:11:44+00:00",
     "2024-05-04T06:32:42.235444+00:00"],
)
def test_a_timestamp_is_stored_as_microseconds_from_its_checkpoint_id(ts: str) -> None:
    checkpoint_id = "1f1e5b57-b8af-6043-bfff-6e7e21c0c996"  # uuid6 of 14:11:44.974035 UTC
    stored = encode_ts(ts, checkpoint_id)
    assert isinstance(stored, int) and decode_ts(stored, checkpoint_id) == ts


@pytest.mark.parametrize(
    ("ts", "checkpoint_id"),
    [("2026-11-21T16:11:45.238268+02:00", "1f1e5b57-b8af-6043-bfff-6e7e21c0c996"),  # not UTC
     ("2026-11-21T14:11:45.238268", "1f1e5b57-b8af-6043-bfff-6e7e21c0c996"),  # naive
     ("2026-11-21T14:11:44.000000+00:00", "1f1e5b57-b8af-6043-bfff-6e7e21c0c996"),  # not isoformat()
     ("2026-11-21T14:11:45.238268+00:00", "1"),  # not a uuid6 id
     ("2026-11-21T14:11:45.238268+00:00", str(uuid.uuid4())),
     ("not a time", "1f1e5b57-b8af-6043-bfff-6e7e21c0c996")],
)
def test_other_timestamps_are_stored_as_they_are(ts: str, checkpoint_id: str) -> None:
    assert encode_ts(ts, checkpoint_id) == ts and decode_ts(ts, checkpoint_id) == ts
