"""The bench harness: shared work runs once, and every line shows figure, goal and stock."""

from __future__ import annotations

import argparse

from langgraph.checkpoint.memory import InMemorySaver

from bench.__main__ import BENCHMARKS
from bench.checkpointing import (
    BARE,
    SMALL_REPEATS,
    memory,
    repeated_small,
    resume,
    run_time,
    storage,
    throughput,
)
from bench.harness import Env, Line, render


async def test_shared_work_runs_once() -> None:
    env = Env(url="", savers={}, args=argparse.Namespace())
    calls: list[int] = []

    async def work() -> int:
        calls.append(1)
        return len(calls)

    assert await env.once("k", work) == 1
    assert await env.once("k", work) == 1
    assert calls == [1]


def test_each_line_prints_figure_goal_verdict_and_stock() -> None:
    lines = [
        Line(title="a", figure="1.5x", goal="<= 2.00x", stock="9x", met=True, details=["more"]),
        Line(title="b", figure="3", goal=">= 5", stock="4", met=False),
    ]
    assert render(lines) == [
        "[1] a",
        "    warden 1.5x   goal <= 2.00x  MET   stock 9x",
        "    more",
        "[2] b",
        "    warden 3   goal >= 5  MISSED   stock 4",
    ]


def test_the_issue_benchmarks_come_first_in_order() -> None:
    assert BENCHMARKS[:5] == [storage, run_time, throughput, resume, memory]


async def test_line_2_repeats_the_smallest_runs_for_its_median() -> None:
    # In-memory savers: both flavours run the real workload without a database.
    savers = {"warden": InMemorySaver(), "stock": InMemorySaver()}
    env = Env(url="", savers=savers, args=argparse.Namespace())
    again = await repeated_small(env, 2)
    assert sorted(again) == ["stock", "warden", BARE]
    assert all(len(seconds) == SMALL_REPEATS and min(seconds) > 0 for seconds in again.values())
    # Each flavour's runs went through its own saver; the bare series through none.
    threads = {name: {t for t in saver.storage if t.startswith(("warden", "stock"))} for name, saver in savers.items()}
    assert len(threads["warden"]) == len(threads["stock"]) == SMALL_REPEATS
    assert all(t.startswith("warden-small-") for t in threads["warden"])
