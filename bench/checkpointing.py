"""The five benchmarks of issue #6: Warden next to stock create_agent + AsyncPostgresSaver.

Both flavours run the same scripted workload (`bench.workload`) on the same database;
Warden runs the whole product (budgets, loop detection, approval policy) with its saver.
See bench/README.md for the exact definitions.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from bench.db import thread_storage
from bench.harness import Env, Line, log, pct
from bench.workload import Runner, make_model, make_tool, stock_app, warden_app, warden_context

OBS_BYTES = 3072  # secrets.token_hex(1536): incompressible
FLAVOURS = ("warden", "stock")
FULL_SIZES = [10, 100, 500]
QUICK_SIZES = [10, 100]


def runner_for(
    flavour: str, model: Any, tool: Any, saver: Any, calls: int, extra: int = 0
) -> Runner:
    """Build the flavour's app over `saver` (None: no checkpointer) and its runner."""
    if flavour == "warden":
        app = warden_app(model, tool, saver)
        return Runner("warden", app, warden_context(calls, extra), calls, saver is not None)
    return Runner("stock", stock_app(model, tool, saver), None, calls, saver is not None)


def sizes(env: Env) -> list[int]:
    """Tool-call counts of the sequential runs."""
    return QUICK_SIZES if env.args.quick else FULL_SIZES


def resume_samples(env: Env) -> int:
    """How many continuations the resume benchmark times."""
    return 10 if env.args.quick else 20


def quick_note(env: Env) -> str:
    """Say when a 500-call goal is applied to a smaller run."""
    big = sizes(env)[-1]
    return "" if big == 500 else f" [quick: 500-call goal applied at {big}]"


async def sequential(env: Env) -> dict[str, Any]:
    """One run per size and flavour: seconds and stored bytes; keeps the largest threads."""
    tool = make_tool(OBS_BYTES)
    for flavour in FLAVOURS:
        # Warm-up, not measured: first-use costs (imports, schemas, pool connections)
        # would otherwise land on whichever run comes first.
        warm = runner_for(flavour, make_model(2), tool, env.savers[flavour], 2)
        warm.check(await warm.start(f"{flavour}-warmup-{uuid.uuid4().hex[:8]}"), 2)
    runs: dict[int, dict[str, Any]] = {}
    largest: dict[str, tuple[Runner, str]] = {}
    for n in sizes(env):
        runs[n] = {}
        for flavour in FLAVOURS:
            extra = resume_samples(env) + 2 if n == sizes(env)[-1] else 0
            runner = runner_for(
                flavour, make_model(n, extra_turns=extra), tool, env.savers[flavour], n, extra
            )
            thread = f"{flavour}-seq-{n}-{uuid.uuid4().hex[:8]}"
            gc.collect()
            t0 = time.perf_counter()
            result = await runner.start(thread)
            elapsed = time.perf_counter() - t0
            runner.check(result, n)
            storage = await thread_storage(env.url, thread)
            raw = n * OBS_BYTES
            runs[n][flavour] = {
                "seconds": elapsed,
                "storage": storage,
                "raw_observation_bytes": raw,
                "storage_ratio": storage["total"] / raw,
            }
            log(
                f"{flavour:6} {n:4} calls: {elapsed:8.2f} s, {storage['total'] / 1e6:9.2f} MB "
                f"({storage['total'] / raw:.2f}x raw)"
            )
            largest[flavour] = (runner, thread)
    return {"runs": runs, "largest": largest}


async def storage(env: Env) -> Line:
    """(1) Checkpoint bytes of a run / raw observation bytes (goal <= 2.0 at 500 calls)."""
    seq = await env.once("sequential", lambda: sequential(env))
    runs = seq["runs"]
    big = sizes(env)[-1]
    w, s = runs[big]["warden"], runs[big]["stock"]
    return Line(
        title=f"storage: checkpoint bytes / raw observation bytes, {big} tool calls of 3 KB",
        figure=f"{w['storage_ratio']:.2f}x ({w['storage']['total'] / 1e6:.2f} MB)",
        goal="<= 2.00x" + quick_note(env),
        stock=f"{s['storage_ratio']:.2f}x ({s['storage']['total'] / 1e6:.2f} MB)",
        met=w["storage_ratio"] <= 2.0,
        details=[
            "by size: "
            + "; ".join(
                f"{n} calls warden {runs[n]['warden']['storage_ratio']:.2f}x "
                f"stock {runs[n]['stock']['storage_ratio']:.2f}x"
                for n in sizes(env)
            ),
            "warden bytes by table at {}: {}".format(
                big, ", ".join(f"{k} {v}" for k, v in w["storage"].items())
            ),
        ],
        data={str(n): runs[n] for n in runs},
    )


SMALL_REPEATS = 9
"""Extra interleaved runs of the smallest size, for a median beside the single run."""


BARE = "warden_no_checkpointer"
"""Line [2]'s third series: the Warden graph compiled with no checkpointer at all."""


async def interleaved(
    series: Mapping[str, tuple[str, Any]],
    rounds: int,
    calls: int,
    *,
    tag: str,
    during: Callable[[str], AbstractContextManager[Any]] = lambda name: nullcontext(),
) -> dict[str, dict[str, list[Any]]]:
    """Run each named (flavour, saver) series `rounds` times on the workload, the order
    reversed every other round so that neither goes first; return, per series, each
    run's wall and process CPU seconds and its thread (`{name}-{tag}-...`). `during(name)`
    is entered around each of that series' runs."""
    tool = make_tool(OBS_BYTES)
    out: dict[str, dict[str, list[Any]]] = {
        name: {"wall_s": [], "cpu_s": [], "threads": []} for name in series
    }
    order = list(series)
    for k in range(rounds):
        for name in order if k % 2 == 0 else order[::-1]:
            flavour, saver = series[name]
            runner = runner_for(flavour, make_model(calls), tool, saver, calls)
            thread = f"{name}-{tag}-{uuid.uuid4().hex[:8]}"
            with during(name):
                gc.collect()
                wall, cpu = time.perf_counter(), time.process_time()
                result = await runner.start(thread)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            runner.check(result, calls)
            out[name]["wall_s"].append(wall)
            out[name]["cpu_s"].append(cpu)
            out[name]["threads"].append(thread)
    return out


async def repeated_small(env: Env, calls: int) -> dict[str, list[float]]:
    """Seconds of SMALL_REPEATS more runs of `calls` calls per flavour, interleaved.

    A 10-call run takes tens of milliseconds, so one run's ratio moves with the
    machine's noise; these runs are a detail beside line [2]'s figure, not a new figure.
    A third series (`BARE`) runs the Warden graph with no checkpointer, so with no
    audit trail or spend ledger either (both live in the saver's database): the graph's
    own work, what no saver change can take away.
    """
    series = {
        **{flavour: (flavour, env.savers[flavour]) for flavour in FLAVOURS},
        BARE: ("warden", None),
    }
    found = await interleaved(series, SMALL_REPEATS, calls, tag="small")
    return {name: runs["wall_s"] for name, runs in found.items()}


async def run_time(env: Env) -> Line:
    """(2) Run time warden / stock (goals: <= 1.0 at 10 calls, <= 0.25 at 500)."""
    seq = await env.once("sequential", lambda: sequential(env))
    runs = seq["runs"]
    small, big = sizes(env)[0], sizes(env)[-1]
    ratio = {n: runs[n]["warden"]["seconds"] / runs[n]["stock"]["seconds"] for n in runs}
    again = await repeated_small(env, small)
    median = {name: pct(seconds, 0.5) for name, seconds in again.items()}
    met = ratio[small] <= 1.0 and ratio[big] <= 0.25
    return Line(
        title="run time: warden / stock, same runs as [1]",
        figure=f"{ratio[small]:.2f}x at {small} calls, {ratio[big]:.2f}x at {big}",
        goal=f"<= 1.00x at 10 and <= 0.25x at 500{quick_note(env)}",
        stock="1.00x by definition ("
        + ", ".join(f"{n} calls {runs[n]['stock']['seconds']:.2f} s" for n in runs)
        + ")",
        met=met,
        details=[
            "warden: " + ", ".join(f"{n} calls {runs[n]['warden']['seconds']:.2f} s" for n in runs)
            + "; ratio by size: "
            + ", ".join(f"{n} {ratio[n]:.2f}x" for n in runs),
            f"{small} calls, median of {SMALL_REPEATS} more interleaved runs each: warden "
            f"{median['warden'] * 1000:.0f} ms, stock {median['stock'] * 1000:.0f} ms, "
            f"{median['warden'] / median['stock']:.2f}x",
            f"{small} calls, warden with no checkpointer (so no audit trail or spend ledger "
            f"either), median of {SMALL_REPEATS}: {median[BARE] * 1000:.0f} ms, "
            f"{median[BARE] / median['stock']:.2f}x stock with its saver",
        ],
        data={
            "ratio": {str(n): r for n, r in ratio.items()},
            f"repeated_{small}_calls_seconds": again,
            f"repeated_{small}_calls_median_ratio": median["warden"] / median["stock"],
            f"repeated_{small}_calls_no_checkpointer_ratio": median[BARE] / median["stock"],
        },
    )


async def run_concurrent(
    flavour: str, saver: Any, n_runs: int, steps: int, delay: float
) -> float:
    """Run `n_runs` concurrent runs of `steps` model calls; return seconds."""
    calls = steps - 1  # steps = model calls: `calls` tool-calling turns + the final answer
    runner = runner_for(flavour, make_model(calls, delay=delay), make_tool(OBS_BYTES), saver, calls)
    tag = uuid.uuid4().hex[:8]
    gc.collect()
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(runner.start(f"{flavour}-conc-{tag}-{i}") for i in range(n_runs))
    )
    elapsed = time.perf_counter() - t0
    for r in results:
        runner.check(r, calls)
    return elapsed


def concurrency(env: Env) -> int:
    """Concurrent runs for [3] and [5]."""
    return int(env.args.concurrency or (20 if env.args.quick else 200))


async def throughput(env: Env) -> Line:
    """(3) Steps/s with the saver / steps/s with no checkpointer (goal >= 0.5)."""
    n_runs, steps, delay = concurrency(env), env.args.steps, env.args.delay
    total = n_runs * steps
    out: dict[str, Any] = {}
    for flavour in FLAVOURS:
        none_s = await run_concurrent(flavour, None, n_runs, steps, delay)
        saver_s = await run_concurrent(flavour, env.savers[flavour], n_runs, steps, delay)
        out[flavour] = {
            "no_checkpointer_steps_per_s": total / none_s,
            "saver_steps_per_s": total / saver_s,
            "ratio": none_s / saver_s,
        }
        log(
            f"{flavour:6} concurrent: {total / none_s:.0f} steps/s without checkpointer, "
            f"{total / saver_s:.0f} with"
        )
    w, s = out["warden"], out["stock"]
    return Line(
        title=f"concurrent throughput: {n_runs} runs x {steps} steps (model calls), "
        f"{delay * 1000:.0f} ms model latency; steps/s with the saver / without",
        figure=f"{w['ratio']:.2f} ({w['saver_steps_per_s']:.0f} / "
        f"{w['no_checkpointer_steps_per_s']:.0f} steps/s)",
        goal=">= 0.50",
        stock=f"{s['ratio']:.2f} ({s['saver_steps_per_s']:.0f} / "
        f"{s['no_checkpointer_steps_per_s']:.0f} steps/s)",
        met=w["ratio"] >= 0.5,
        details=[
            f"warden with its saver / stock with its saver: "
            f"{w['saver_steps_per_s'] / s['saver_steps_per_s']:.2f}x"
        ],
        data=out,
    )


async def resume(env: Env) -> Line:
    """(4) Load and continue the largest thread: one `ainvoke` with a new task, p50/p95."""
    seq = await env.once("sequential", lambda: sequential(env))
    out: dict[str, Any] = {"tool_calls": sizes(env)[-1]}
    for flavour in FLAVOURS:
        runner, thread = seq["largest"][flavour]
        cfg = runner.config(thread)
        cont, load = [], []
        for k in range(resume_samples(env)):
            gc.collect()
            t0 = time.perf_counter()
            await runner.app.aget_state(cfg)
            t1 = time.perf_counter()
            result = await runner.start(thread, task=f"continue {k}")
            t2 = time.perf_counter()
            if flavour == "warden" and result.get("halt_reason") != "completed":
                raise RuntimeError(f"warden resume did not complete: {result.get('halt_detail')}")
            load.append((t1 - t0) * 1000)
            cont.append((t2 - t1) * 1000)
        out[flavour] = {
            "p50_ms": pct(cont, 0.5),
            "p95_ms": pct(cont, 0.95),
            "aget_state_p50_ms": pct(load, 0.5),
            "aget_state_p95_ms": pct(load, 0.95),
            "samples_ms": cont,
        }
        log(f"{flavour:6} resume: p50 {pct(cont, 0.5):.1f} ms, p95 {pct(cont, 0.95):.1f} ms")
    w, s = out["warden"], out["stock"]
    return Line(
        title=f"resume: load and continue a {out['tool_calls']}-call thread (one ainvoke: "
        f"new task, one model turn), {resume_samples(env)} samples",
        figure=f"p50 {w['p50_ms']:.1f} ms, p95 {w['p95_ms']:.1f} ms",
        goal="p95 <= 50 ms and <= stock" + quick_note(env),
        stock=f"p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms",
        met=w["p95_ms"] <= 50 and w["p95_ms"] <= s["p95_ms"],
        details=[
            f"aget_state alone: warden p50 {w['aget_state_p50_ms']:.1f} / "
            f"p95 {w['aget_state_p95_ms']:.1f} ms, stock p50 {s['aget_state_p50_ms']:.1f} / "
            f"p95 {s['aget_state_p95_ms']:.1f} ms"
        ],
        data=out,
    )


async def memory(env: Env) -> Line:
    """(5) Peak traced memory over a pass of [3] with each saver (goal <= stock)."""
    n_runs, steps, delay = concurrency(env), env.args.steps, env.args.delay
    peak: dict[str, int] = {}
    for flavour in FLAVOURS:
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        await run_concurrent(flavour, env.savers[flavour], n_runs, steps, delay)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak[flavour] = top - base
        log(f"{flavour:6} memory: peak {peak[flavour] / 1e6:.1f} MB")
    w, s = peak["warden"], peak["stock"]
    return Line(
        title=f"peak memory (tracemalloc) of the worker for {n_runs} concurrent runs x {steps} "
        "steps with the saver",
        figure=f"{w / 1e6:.1f} MB ({w / s:.2f}x stock)",
        goal="<= stock",
        stock=f"{s / 1e6:.1f} MB",
        met=w <= s,
        data={"peak_bytes": peak},
    )


BENCHMARKS = [storage, run_time, throughput, resume, memory]
