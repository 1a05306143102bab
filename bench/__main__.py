"""`python -m bench`: Warden next to stock create_agent + AsyncPostgresSaver (issue #6).

One process, one fresh database, the same scripted workload for both. See
bench/README.md for what each line measures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from bench.db import fresh_database, thread_storage
from bench.prompt_tokens import bench_prompt_tokens, report_prompt_tokens
from bench.workload import Runner, make_model, make_tool, stock_app, warden_app, warden_context
from checkpoints.saver import open_saver

OBS_BYTES = 3072  # secrets.token_hex(1536)
FLAVOURS = ("warden", "stock")


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def runner_for(
    flavour: str, model: Any, tool: Any, saver: Any, calls: int, extra: int = 0
) -> Runner:
    if flavour == "warden":
        app = warden_app(model, tool, saver)
        return Runner("warden", app, warden_context(calls, extra), calls, saver is not None)
    return Runner("stock", stock_app(model, tool, saver), None, calls, saver is not None)


async def bench_sequential(
    url: str, savers: dict[str, Any], sizes: list[int], resume_samples: int
) -> tuple[dict[int, Any], dict[str, Any]]:
    """(1) storage and (2) run time per size; (4) resume on the largest size's thread."""
    tool = make_tool(OBS_BYTES)
    out: dict[int, Any] = {}
    largest: dict[str, tuple[Runner, str]] = {}
    for n in sizes:
        out[n] = {}
        for flavour in FLAVOURS:
            extra = resume_samples + 2 if n == sizes[-1] else 0
            model = make_model(n, extra_turns=extra)
            runner = runner_for(flavour, model, tool, savers[flavour], n, extra)
            thread = f"{flavour}-seq-{n}-{uuid.uuid4().hex[:8]}"
            gc.collect()
            t0 = time.perf_counter()
            result = await runner.start(thread)
            elapsed = time.perf_counter() - t0
            runner.check(result, n)
            storage = await thread_storage(url, thread)
            raw = n * OBS_BYTES
            out[n][flavour] = {
                "seconds": elapsed,
                "storage": storage,
                "raw_observation_bytes": raw,
                "storage_ratio": storage["total"] / raw,
            }
            log(
                f"{flavour:6} {n:4} calls: {elapsed:8.2f} s, {storage['total'] / 1e6:9.2f} MB "
                f"({storage['total'] / raw:.2f}x raw)"
            )
            if n == sizes[-1]:
                largest[flavour] = (runner, thread)
    resume: dict[str, Any] = {"tool_calls": sizes[-1]}
    for flavour in FLAVOURS:
        runner, thread = largest[flavour]
        cfg = runner.config(thread)
        total, load = [], []
        for k in range(resume_samples):
            gc.collect()
            t0 = time.perf_counter()
            await runner.app.aget_state(cfg)
            t1 = time.perf_counter()
            result = await runner.start(thread, task=f"continue {k}")
            t2 = time.perf_counter()
            if flavour == "warden" and result.get("halt_reason") != "completed":
                raise RuntimeError(f"warden resume did not complete: {result.get('halt_detail')}")
            total.append((t2 - t0) * 1000)
            load.append((t1 - t0) * 1000)
        resume[flavour] = {
            "p50_ms": pct(total, 0.5),
            "p95_ms": pct(total, 0.95),
            "aget_state_p50_ms": pct(load, 0.5),
            "aget_state_p95_ms": pct(load, 0.95),
            "samples_ms": total,
        }
        log(f"{flavour:6} resume: p50 {pct(total, 0.5):.1f} ms, p95 {pct(total, 0.95):.1f} ms")
    return out, resume


async def run_concurrent(flavour: str, saver: Any, n_runs: int, steps: int, delay: float) -> float:
    """Run `n_runs` concurrent runs of `steps` model calls; return seconds."""
    calls = steps - 1  # steps = model calls: `calls` tool-calling turns + the final answer
    model = make_model(calls, delay=delay)
    runner = runner_for(flavour, model, make_tool(OBS_BYTES), saver, calls)
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


async def bench_concurrent(
    savers: dict[str, Any], n_runs: int, steps: int, delay: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(3) throughput with the saver vs none, and (5) tracemalloc peak with the saver."""
    total_steps = n_runs * steps
    thr: dict[str, Any] = {"runs": n_runs, "steps_per_run": steps, "model_delay_s": delay}
    for flavour in FLAVOURS:
        none_s = await run_concurrent(flavour, None, n_runs, steps, delay)
        saver_s = await run_concurrent(flavour, savers[flavour], n_runs, steps, delay)
        thr[flavour] = {
            "no_checkpointer_steps_per_s": total_steps / none_s,
            "saver_steps_per_s": total_steps / saver_s,
            "ratio": none_s / saver_s,
        }
        log(
            f"{flavour:6} concurrent: {total_steps / none_s:.0f} steps/s without checkpointer, "
            f"{total_steps / saver_s:.0f} with"
        )
    mem: dict[str, Any] = {"runs": n_runs, "steps_per_run": steps, "method": "tracemalloc peak"}
    for flavour in FLAVOURS:
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        await run_concurrent(flavour, savers[flavour], n_runs, steps, delay)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        mem[flavour] = {"peak_bytes": peak - base}
        log(f"{flavour:6} memory: peak {(peak - base) / 1e6:.1f} MB")
    return thr, mem


def report(res: dict[str, Any]) -> list[str]:
    sizes = res["sizes"]
    big = sizes[-1]
    note = "" if big == 500 else f" [quick: 500-call goal applied at {big}]"
    lines = [
        f"Warden vs stock create_agent + AsyncPostgresSaver  ({res['mode']}; {res['date']}; "
        f"{res['machine']})",
        f"database: {res['database']}",
        "",
        "[1] storage: checkpoint bytes / raw observation bytes (3 KB incompressible each)",
    ]
    for n in sizes:
        w, s = res["sequential"][n]["warden"], res["sequential"][n]["stock"]
        goal = (
            f"goal <= 2.00  {verdict(w['storage_ratio'] <= 2.0)}{note}"
            if n == big
            else "goal: (at 500)"
        )
        lines.append(
            f"    {n:4} calls  warden {w['storage_ratio']:8.2f}x ({w['storage']['total'] / 1e6:8.2f} MB)"
            f"   stock {s['storage_ratio']:8.2f}x ({s['storage']['total'] / 1e6:8.2f} MB)   {goal}"
        )
    lines.append("[2] run time: warden / stock")
    for n in sizes:
        w, s = res["sequential"][n]["warden"], res["sequential"][n]["stock"]
        ratio = w["seconds"] / s["seconds"]
        if n == 10:
            goal = f"goal <= 1.00  {verdict(ratio <= 1.0)}"
        elif n == big:
            goal = f"goal <= 0.25  {verdict(ratio <= 0.25)}{note}"
        else:
            goal = "goal: -"
        lines.append(
            f"    {n:4} calls  warden/stock {ratio:6.2f}x   (warden {w['seconds']:7.2f} s, "
            f"stock {s['seconds']:7.2f} s)   {goal}"
        )
    t = res["throughput"]
    w, s = t["warden"], t["stock"]
    lines += [
        f"[3] concurrent throughput: {t['runs']} runs x {t['steps_per_run']} steps (model calls), "
        f"{t['model_delay_s'] * 1000:.0f} ms model latency; steps/s with saver / without",
        f"    warden {w['ratio']:5.2f}  ({w['saver_steps_per_s']:.0f} / {w['no_checkpointer_steps_per_s']:.0f} steps/s)"
        f"   stock {s['ratio']:5.2f}  ({s['saver_steps_per_s']:.0f} / {s['no_checkpointer_steps_per_s']:.0f} steps/s)"
        f"   goal >= 0.50  {verdict(w['ratio'] >= 0.5)}",
    ]
    r = res["resume"]
    w, s = r["warden"], r["stock"]
    ok = w["p95_ms"] <= 50 and w["p95_ms"] <= s["p95_ms"]
    lines += [
        f"[4] resume: aget_state + one more invoke on a {r['tool_calls']}-call thread "
        f"({len(w['samples_ms'])} samples)",
        f"    warden p50 {w['p50_ms']:7.1f} ms  p95 {w['p95_ms']:7.1f} ms"
        f"   stock p50 {s['p50_ms']:7.1f} ms  p95 {s['p95_ms']:7.1f} ms"
        f"   goal p95 <= 50 ms and <= stock  {verdict(ok)}"
        + ("" if r["tool_calls"] == 500 else f" [quick: {r['tool_calls']}-call thread]"),
        f"    (aget_state alone: warden p50 {w['aget_state_p50_ms']:.1f} / p95 {w['aget_state_p95_ms']:.1f} ms,"
        f" stock p50 {s['aget_state_p50_ms']:.1f} / p95 {s['aget_state_p95_ms']:.1f} ms)",
    ]
    m = res["memory"]
    w, s = m["warden"]["peak_bytes"], m["stock"]["peak_bytes"]
    lines += [
        f"[5] peak memory (tracemalloc) for {m['runs']} concurrent runs x {m['steps_per_run']} steps, with saver",
        f"    warden {w / 1e6:8.1f} MB   stock {s / 1e6:8.1f} MB   warden/stock {w / s:5.2f}x"
        f"   goal <= stock  {verdict(w <= s)}",
    ]
    return lines + report_prompt_tokens(res["prompt_tokens"])


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [10, 100] if args.quick else [10, 100, 500]
    n_runs = args.concurrency or (20 if args.quick else 200)
    resume_samples = 10 if args.quick else 20
    res: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "sizes": sizes,
    }
    async with fresh_database() as (url, where):
        res["database"] = where
        async with (
            open_saver(url, auto_migrate=True) as warden_saver,  # also runs the stock setup()
            AsyncPostgresSaver.from_conn_string(url) as stock_saver,
        ):
            savers = {"warden": warden_saver, "stock": stock_saver}
            t0 = time.perf_counter()
            res["sequential"], res["resume"] = await bench_sequential(
                url, savers, sizes, resume_samples
            )
            res["throughput"], res["memory"] = await bench_concurrent(
                savers, n_runs, args.steps, args.delay
            )
            res["prompt_tokens"] = await bench_prompt_tokens()
            res["bench_seconds"] = time.perf_counter() - t0
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
    lines = report(res)
    print("\n".join(lines))
    print(f"\n(bench took {res['bench_seconds']:.0f} s; results in {args.output})")
    res["table"] = lines
    args.output.write_text(json.dumps(res, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
