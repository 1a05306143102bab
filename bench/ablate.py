"""Where line [2]'s 10-call time goes: `python -m bench.ablate [--runs N] [--calls N]`.

Times the bench workload (`bench.workload`) in one process, interleaved, in six
variants: Warden's whole product over its saver; the same without the audit append;
without the spend ledger; without both; Warden's graph with no checkpointer (so with
neither, and no checkpoints); and stock `create_agent` with the stock
`AsyncPostgresSaver`. It prints each variant's median wall time and process CPU time per
run. CPU time is the steadier figure on a shared machine.

A diagnostic, not a product setting: the audit append and the spend ledger are switched
off by replacing `graph.audit.record` and `nodes.plan.hold_spend` with no-ops for the
duration of a run (`switched_off`), which nothing else does. The database is a fresh
one, as for `python -m bench` (`WARDEN_BENCH_DATABASE_URL` or the embedded server).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import graph.audit
import nodes.plan
from bench.checkpointing import interleaved
from bench.db import fresh_database
from bench.harness import log
from checkpoints.saver import open_saver

# name: (flavour, saver key, audit on, spend ledger on)
VARIANTS: dict[str, tuple[str, str | None, bool, bool]] = {
    "whole product": ("warden", "warden", True, True),
    "no audit append": ("warden", "warden", False, True),
    "no spend ledger": ("warden", "warden", True, False),
    "neither": ("warden", "warden", False, False),
    "no checkpointer": ("warden", None, False, False),
    "stock with its saver": ("stock", "stock", True, True),
}


async def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


@contextmanager
def switched_off(*, audit: bool, spend: bool) -> Iterator[None]:
    """Turn the audit append and/or the spend ledger into no-ops for a while."""
    record, hold = graph.audit.record, nodes.plan.hold_spend
    if audit:
        graph.audit.record = _nothing  # type: ignore[assignment]
    if spend:
        nodes.plan.hold_spend = _nothing  # type: ignore[assignment]
    try:
        yield
    finally:
        graph.audit.record, nodes.plan.hold_spend = record, hold


async def ablate(savers: dict[str, Any], runs: int, calls: int = 10) -> dict[str, dict[str, Any]]:
    """Run every variant `runs` times (after one warm-up round), interleaved; return per
    variant the wall and CPU milliseconds of each run and the threads it used."""

    def during(name: str) -> AbstractContextManager[None]:
        _, _, audit, spend = VARIANTS[name]
        return switched_off(audit=not audit, spend=not spend)

    series = {
        name: (flavour, savers[key] if key else None)
        for name, (flavour, key, _, _) in VARIANTS.items()
    }
    found = await interleaved(series, runs + 1, calls, tag="ablate", during=during)
    # The first round warms up every variant.
    return {
        name: {
            "wall_ms": [s * 1000 for s in timed["wall_s"][1:]],
            "cpu_ms": [s * 1000 for s in timed["cpu_s"][1:]],
            "threads": timed["threads"][1:],
        }
        for name, timed in found.items()
    }


async def amain(args: argparse.Namespace) -> None:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    async with (
        fresh_database() as (url, where),
        open_saver(url, auto_migrate=True) as saver,
        AsyncPostgresSaver.from_conn_string(url) as stock,
    ):
        await stock.setup()
        log(f"database: {where}")
        found = await ablate({"warden": saver, "stock": stock}, args.runs, args.calls)
    print(f"{args.calls}-call runs, {args.runs} each, interleaved; medians per run")
    for name, series in found.items():
        print(
            f"  {name:22} wall {statistics.median(series['wall_ms']):7.1f} ms   "
            f"CPU {statistics.median(series['cpu_ms']):7.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ablate", description=__doc__)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant")
    parser.add_argument("--calls", type=int, default=10, help="tool calls per run")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
