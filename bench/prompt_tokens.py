"""Prompt tokens per step: Warden's budgeted context vs stock `create_agent` (issue #7).

The same scripted 200-call workload as the other benchmarks (3 KB observations). The
prompt each model call receives is captured with a callback handler and counted with
the offline tokenizer Warden uses (`nodes.tokens`), tool schemas included. Stock
`create_agent` sends the whole history, so its prompts grow with every step; Warden's
stay within the context budget (by default the model's window minus the answer's
room; the scripted model has no profile, so 128k - 4096). Run alone with
`python -m bench.prompt_tokens`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from langchain_core.messages import BaseMessage

from bench.harness import Env, Line
from bench.workload import Runner, make_model, make_tool, stock_app, warden_app, warden_context
from nodes.context_window import tool_schemas
from nodes.tokens import TokenCounter
from tests.support.prompts import PromptRecorder

STEPS = (10, 100, 200)
OBS_BYTES = 3072
TIGHT_BUDGET = 16_000


def prompt_tokens(prompt: list[BaseMessage], schemas: list[dict[str, Any]]) -> int:
    """Count one prompt as sent: messages and tool schemas."""
    counter = TokenCounter(None)
    return counter.messages(prompt) + counter.schemas(schemas)


async def sizes(flavour: str, budget: int | None) -> dict[int, int]:
    """Run the workload once and return the prompt size after N tool calls, for each N."""
    calls = max(STEPS)
    tool = make_tool(OBS_BYTES)
    model = make_model(calls)
    recorder = PromptRecorder()
    if flavour == "warden":
        ctx = dataclasses.replace(warden_context(calls), context_budget_tokens=budget)
        runner = Runner("warden", warden_app(model, tool, None), ctx, calls, durable=False)
    else:
        runner = Runner("stock", stock_app(model, tool, None), None, calls, durable=False)
    config = runner.config(f"prompt-tokens-{flavour}")
    config["callbacks"] = [recorder]
    payload: Any = (
        {"task": "fetch the records"}
        if flavour == "warden"
        else {"messages": [{"role": "user", "content": "fetch the records"}]}
    )
    result = await runner.app.ainvoke(payload, config, context=runner.ctx, **runner.kwargs)
    runner.check(result, calls)
    schemas = tool_schemas([tool])
    return {n: prompt_tokens(recorder.prompts[n], schemas) for n in STEPS}


async def bench_prompt_tokens() -> dict[str, Any]:
    """Return prompt tokens at each step for stock, Warden (default budget) and Warden (16k)."""
    return {
        "steps": list(STEPS),
        "stock": await sizes("stock", None),
        "warden": await sizes("warden", None),
        "warden_16k": await sizes("warden", TIGHT_BUDGET),
    }


def report_prompt_tokens(res: dict[str, Any]) -> list[str]:
    """Format the result as benchmark lines."""
    lines = ["[6] prompt tokens per step (after N tool calls of 3 KB): warden / stock (create_agent sends everything)"]
    for n in res["steps"]:
        stock, warden, tight = res["stock"][n], res["warden"][n], res["warden_16k"][n]
        lines.append(
            f"    step {n:4}  stock {stock:8d}   warden {warden:8d} ({warden / stock:5.2f}x)"
            f"   warden at {TIGHT_BUDGET} budget {tight:6d} ({tight / stock:5.2f}x)"
        )
    return lines


async def prompt_tokens_line(env: Env) -> Line:
    """Prompt tokens per step, Warden vs stock create_agent, for `make bench` (issue #7)."""
    del env  # in-memory runs: the prompts, not the database, are measured
    res = await bench_prompt_tokens()
    ratios = [res["warden"][n] / res["stock"][n] for n in res["steps"]]
    return Line(
        title="prompt tokens per step after N tool calls of 3 KB (warden / stock create_agent)",
        figure=" ".join(f"step {n}: {r:.2f}x" for n, r in zip(res["steps"], ratios, strict=True)),
        goal="stays under the context budget; stock grows without bound",
        stock=" ".join(f"step {n}: {res['stock'][n]}" for n in res["steps"]),
        met=None,
        details=report_prompt_tokens(res)[1:],
        data=res,
    )


def main() -> None:
    res = asyncio.run(bench_prompt_tokens())
    print("\n".join(report_prompt_tokens(res)))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
