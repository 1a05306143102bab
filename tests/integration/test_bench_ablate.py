"""`python -m bench.ablate`: the variants switch off what they say, and only while they run."""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.memory import InMemorySaver

import graph.audit
import nodes.plan
from bench.ablate import VARIANTS, ablate, switched_off
from checkpoints.audit_store import read_events


def test_switched_off_replaces_and_puts_back() -> None:
    record, hold = graph.audit.record, nodes.plan.hold_spend
    with switched_off(audit=True, spend=False):
        assert graph.audit.record is not record
        assert nodes.plan.hold_spend is hold
    with switched_off(audit=False, spend=True):
        assert graph.audit.record is record
        assert nodes.plan.hold_spend is not hold
    assert (graph.audit.record, nodes.plan.hold_spend) == (record, hold)


async def test_each_variant_runs_and_only_the_audited_ones_leave_a_trail(saver: Any) -> None:
    found = await ablate({"warden": saver, "stock": InMemorySaver()}, runs=1, calls=2)

    assert list(found) == list(VARIANTS)
    assert all(len(s["wall_ms"]) == len(s["cpu_ms"]) == 1 for s in found.values())
    trail = {
        name: len(await read_events(saver.conn, series["threads"][0]))
        for name, series in found.items()
        if name != "stock with its saver"
    }
    assert trail["whole product"] > 0 and trail["no spend ledger"] > 0
    assert trail["no audit append"] == trail["neither"] == trail["no checkpointer"] == 0
