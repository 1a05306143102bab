"""Profile benchmark [4] (resume) on its own: `python -m bench.profile_resume`.

Builds one Warden thread of `--calls` tool calls (the bench workload) in a scratch
database, then times `--samples` resumes. Each sample resumes a fresh copy of that
thread (`acopy_thread`), so every sample loads the same history, and reports, besides
wall time, the process CPU time of `aget_state` and of the continuation (one
`ainvoke` with a new task), which a machine shared with other work disturbs far less.
`--profile` prints cProfile's top functions for one load and one continuation, with
the context-window assembly run inline (it normally runs in a worker thread, which
cProfile does not see).

Database: `WARDEN_BENCH_DATABASE_URL` (or the embedded server), as `python -m bench`;
the scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.checkpointing import OBS_BYTES, runner_for
from bench.db import fresh_database
from bench.harness import log
from bench.workload import Runner, make_model, make_tool
from checkpoints.saver import open_saver
from checkpoints.warden_saver import WardenSaver

BASE_THREAD = "profile-resume-base"


async def timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """Run `work`; return (wall ms, process CPU ms)."""
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


async def sample(saver: WardenSaver, runner: Runner, k: int) -> dict[str, float]:
    """Resume a fresh copy of the base thread once: load alone, then the continuation."""
    thread = f"profile-resume-{uuid.uuid4().hex[:8]}"
    await saver.acopy_thread(BASE_THREAD, thread)
    gc.collect()
    load_wall, load_cpu = await timed(lambda: runner.app.aget_state(runner.config(thread)))
    cont_wall, cont_cpu = await timed(lambda: runner.start(thread, task=f"continue {k}"))
    await saver.adelete_thread(thread)
    return {"load_wall": load_wall, "load_cpu": load_cpu, "wall": cont_wall, "cpu": cont_cpu}


async def _inline(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


async def profile(saver: WardenSaver, runner: Runner, top: int, args_sort: str = "tottime") -> None:
    """Print cProfile's view of one load and one continuation."""
    import nodes.context_window as context_window

    context_window.asyncio.to_thread = _inline  # type: ignore[assignment]
    thread = f"profile-resume-{uuid.uuid4().hex[:8]}"
    await saver.acopy_thread(BASE_THREAD, thread)
    for name, work in (
        ("aget_state", lambda: runner.app.aget_state(runner.config(thread))),
        ("continuation", lambda: runner.start(thread, task="continue")),
    ):
        gc.collect()
        profiler = cProfile.Profile()
        profiler.enable()
        await work()
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args_sort).print_stats(top)
        print(f"--- {name} (by own time)\n{out.getvalue()}")
    await saver.adelete_thread(thread)


async def amain(args: argparse.Namespace) -> None:
    async with fresh_database() as (url, where), open_saver(url, auto_migrate=True) as saver:
        log(f"database: {where}")
        model = make_model(args.calls, extra_turns=args.samples + 4)
        runner = runner_for("warden", model, make_tool(OBS_BYTES), saver, args.calls, args.samples + 4)
        t0 = time.perf_counter()
        runner.check(await runner.start(BASE_THREAD), args.calls)
        log(f"built a {args.calls}-call thread in {time.perf_counter() - t0:.1f} s")
        await sample(saver, runner, -1)  # warm-up: first-use costs (tokenizer, schemas)
        rows = [await sample(saver, runner, k) for k in range(args.samples)]
        for key, label in (
            ("load_cpu", "aget_state CPU"),
            ("load_wall", "aget_state wall"),
            ("cpu", "continuation CPU"),
            ("wall", "continuation wall"),
        ):
            values = sorted(r[key] for r in rows)
            print(
                f"{label:18} median {statistics.median(values):7.1f} ms   "
                f"min {values[0]:7.1f}   max {values[-1]:7.1f}   ({len(values)} samples)"
            )
        if args.profile:
            await profile(saver, runner, args.top, args.sort)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_resume", description=__doc__)
    parser.add_argument("--calls", type=int, default=500, help="tool calls in the thread")
    parser.add_argument("--samples", type=int, default=15, help="resumes timed")
    parser.add_argument("--profile", action="store_true", help="print cProfile output")
    parser.add_argument("--top", type=int, default=30, help="functions shown per profile")
    parser.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative)")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
