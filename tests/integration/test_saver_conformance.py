"""The upstream checkpoint conformance suite against WardenSaver, on every backend.

Each test of `langgraph-checkpoint-conformance` runs as its own pytest test, so a
failure names the capability and the check; one more test runs the suite's own
`validate()` and requires every capability to be detected and passed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.conformance.spec import (
    test_copy_thread,
    test_delete_for_runs,
    test_delete_thread,
    test_get_tuple,
    test_list,
    test_prune,
    test_put,
    test_put_writes,
)

from checkpoints.saver import open_saver
from checkpoints.warden_saver import WardenSaver

pytestmark = pytest.mark.postgres

SUITES: dict[str, list[Callable[[Any], Awaitable[None]]]] = {
    "put": test_put.ALL_PUT_TESTS,
    "put_writes": test_put_writes.ALL_PUT_WRITES_TESTS,
    "get_tuple": test_get_tuple.ALL_GET_TUPLE_TESTS,
    "list": test_list.ALL_LIST_TESTS,
    "delete_thread": test_delete_thread.ALL_DELETE_THREAD_TESTS,
    "delete_for_runs": test_delete_for_runs.ALL_DELETE_FOR_RUNS_TESTS,
    "copy_thread": test_copy_thread.ALL_COPY_THREAD_TESTS,
    "prune": test_prune.ALL_PRUNE_TESTS,
}
CASES = [
    pytest.param(check, id=f"{capability}-{check.__name__.removeprefix('test_')}")
    for capability, checks in SUITES.items()
    for check in checks
]


def test_every_capability_has_cases() -> None:
    assert set(SUITES) == {c.value for c in ALL_CAPABILITIES}
    assert all(SUITES.values())


@pytest.mark.parametrize("check", CASES)
async def test_conformance(
    database_url: str, check: Callable[[WardenSaver], Awaitable[None]]
) -> None:
    async with open_saver(database_url, auto_migrate=False) as saver:
        assert isinstance(saver, WardenSaver)
        await check(saver)


async def test_validate_reports_full_conformance(database_url: str) -> None:
    @checkpointer_test(name="WardenSaver")
    async def warden_saver() -> AsyncIterator[WardenSaver]:
        async with open_saver(database_url, auto_migrate=False) as saver:
            yield saver

    report = await validate(warden_saver)
    failures = {cap: r.failures for cap, r in report.results.items() if not r.passed}
    assert failures == {}
    assert set(report.results) == {c.value for c in ALL_CAPABILITIES}
    assert all(r.detected for r in report.results.values())
