"""`python -m bench`: Warden next to stock create_agent + AsyncPostgresSaver (issue #6).

One process, one fresh database, the same scripted workload for both. Runs every
function in `BENCHMARKS` (bench/harness.py says how to add one) and prints one line per
benchmark. See bench/README.md for what each line measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from bench import checkpointing, prompt_tokens
from bench.db import fresh_database
from bench.harness import Benchmark, Env, Line, log, render
from checkpoints.saver import open_saver

# In print order. Append a new benchmark here (its own module under bench/).
BENCHMARKS: list[Benchmark] = [*checkpointing.BENCHMARKS, prompt_tokens.prompt_tokens_line]


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    """Run every benchmark on a fresh database; return the results."""
    res: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "command": "make bench" + (" BENCH_ARGS=--quick" if args.quick else ""),
    }
    lines: list[Line] = []
    async with fresh_database() as (url, where):
        res["database"] = where
        async with (
            open_saver(url, auto_migrate=True) as warden_saver,  # also runs the stock setup()
            AsyncPostgresSaver.from_conn_string(url) as stock_saver,
        ):
            env = Env(url=url, savers={"warden": warden_saver, "stock": stock_saver}, args=args)
            t0 = time.perf_counter()
            for bench in BENCHMARKS:
                log(f"running {bench.__module__}.{bench.__name__}")
                lines.append(await bench(env))
            res["bench_seconds"] = time.perf_counter() - t0
    res["results"] = [
        {"title": ln.title, "warden": ln.figure, "goal": ln.goal, "stock": ln.stock,
         "met": ln.met, "data": ln.data}
        for ln in lines
    ]
    res["table"] = [
        f"Warden vs stock create_agent + AsyncPostgresSaver ({res['mode']}; {res['date']}; "
        f"{res['machine']})",
        f"database: {res['database']}",
        "",
        *render(lines),
    ]
    return res


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10/100 calls, 20 concurrent runs")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="concurrent runs (default 200; 20 with --quick)",
    )
    parser.add_argument("--steps", type=int, default=20, help="model calls per concurrent run")
    parser.add_argument("--delay", type=float, default=0.02, help="simulated model latency (s)")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    res = asyncio.run(amain(args))
    print("\n".join(res["table"]))
    print(f"\n(bench took {res['bench_seconds']:.0f} s; results in {args.output})")
    args.output.write_text(json.dumps(res, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
