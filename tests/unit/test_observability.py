"""Pure helpers of the observability layer: usage sums, windows, percentiles, HTML."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest

from graph.errors import BadInput
from graph.logs import ContextFilter, HumanFormatter, JsonFormatter, log_fields
from graph.report_html import bar_chart
from graph.runstats import parse_since, percentile
from graph.state import add_usage, empty_usage
from nodes.accounting import NodeClock, run_profile


def test_add_usage_sums_nested_per_node_and_per_model_counters() -> None:
    first = add_usage(
        empty_usage(),
        {"node_seconds": {"plan": 0.5}, "by_model": {"m": {"calls": 1, "cost_usd": 0.25}}},
    )
    second = add_usage(
        first,
        {
            "node_seconds": {"plan": 0.25, "act": 1.0},
            "by_model": {"m": {"calls": 1, "cost_usd": 0.5}, "n": {"calls": 2}},
            "tool_calls_by_name": {"read_file": 1},
            "last_input_tokens": 7,
        },
    )
    assert second["node_seconds"] == {"plan": 0.75, "act": 1.0}
    assert second["by_model"] == {"m": {"calls": 2, "cost_usd": 0.75}, "n": {"calls": 2}}
    assert second["tool_calls_by_name"] == {"read_file": 1}
    assert second["last_input_tokens"] == 7
    assert first["node_seconds"] == {"plan": 0.5}  # inputs are not mutated


def test_run_profile_reads_usage_checkpointed_before_the_timing_fields() -> None:
    old = {k: v for k, v in empty_usage().items() if k not in ("node_seconds", "by_model")}
    assert run_profile(old)["node_seconds"] == {} and run_profile(old)["by_model"] == {}


def test_node_clock_outside_a_graph_counts_no_node() -> None:
    usage, _ = NodeClock().usage(None)
    assert usage["steps"] == 1 and usage["node_seconds"] == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)), ("7d", timedelta(days=7)),
     ("2w", timedelta(weeks=2)), (" 1.5D ", timedelta(days=1.5))],
)  # fmt: skip
def test_parse_since(text: str, expected: timedelta) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "0h", "nand", "infd"])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(BadInput, match="--since"):
        parse_since(text)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, None), ([3.0], 95, 3.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
     ([1.0, 2.0, 3.0, 4.0], 95, 3.85), ([5.0, 1.0, 3.0], 50, 3.0)],
)  # fmt: skip
def test_percentile(values: list[float], q: float, expected: Any) -> None:
    assert percentile(values, q) == (pytest.approx(expected) if expected is not None else None)


def test_bar_chart_escapes_labels_and_shows_values() -> None:
    svg = bar_chart("Halts", {"<script>": 2, "loop": 1})
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count("<rect") == 2 and ">2</text>" in svg
    assert 'class="none"' in bar_chart("Empty", {})


def test_log_lines_carry_bound_fields_and_are_redacted() -> None:
    thread = "3d83ca69-0712-4ed2-a6b4-f78a2f332088"  # digits a phone detector could eat
    record = logging.LogRecord(
        "graph.run", logging.INFO, __file__, 1,
        "tool said: mail alice@example.com, token sk-abcdefghijklmnopqrstuvwx", None, None,
    )  # fmt: skip
    record.error = "password=hunter22 rejected for +1 415 555 0100"
    with log_fields(thread_id=thread, run_id="r-1"):
        assert ContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert (line["thread_id"], line["run_id"], line["node"], line["step"]) == (thread, "r-1", None, None)
    assert line["message"] == "tool said: mail [REDACTED:email], token [REDACTED:secret]"
    assert "hunter22" not in line["error"] and "555" not in line["error"]
    human = HumanFormatter().format(record)
    assert human == "INFO    [3d83ca69] tool said: mail [REDACTED:email], token [REDACTED:secret]"
