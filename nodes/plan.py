"""`plan`: take the task, call the model with the conversation and tool schemas."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.runnables import Runnable
from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from graph.context import Context, context_to_json, run_context, with_policy
from graph.errors import ConfigError, ScriptExhaustedError
from graph.injection import flag_record, sanitize_task
from graph.pricing import cost_usd, lookup_price
from graph.ratelimit import RateLimitExceedsBudget, limiter_for
from graph.routing import soft_warnings
from graph.state import (
    State,
    StopSignal,
    Usage,
    add_usage,
    empty_loop_state,
    empty_usage,
    merge_usage,
)
from nodes.accounting import NodeClock
from nodes.context_window import ContextOverflowError, build_prompt, render_tool_message
from nodes.spending import Refusal, hold_spend, metered
from tools.registry import ToolRegistry


class ModelFactory(Protocol):
    """Resolve a model string to a chat model, with the provider SDK's retry count."""

    def __call__(self, spec: str, retries: int | None = None) -> BaseChatModel: ...


WARDEN_NAME = "warden"


def latest_instruction(messages: Sequence[AnyMessage]) -> str | None:
    """Return the text of the latest human message that did not come from Warden."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage) and message.name != WARDEN_NAME:
            return message.text
    return None


def render_for_model(messages: Sequence[AnyMessage], nonce: str) -> list[BaseMessage]:
    """Render the whole history for the model: tool results fenced with provenance.

    Each tool result goes between `<<warden-data nonce=...>>` delimiters (see
    `nodes.context_window.render_tool_message`). `plan` itself assembles a budgeted
    prompt with `nodes.context_window.build_prompt`; this renders everything, in full.
    """
    step = 0
    rendered: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage):
            step += 1
        rendered.append(
            render_tool_message(message, nonce, step) if isinstance(message, ToolMessage) else message
        )
    return rendered


def screen_task(
    history: list[AnyMessage], new_messages: list[AnyMessage], ctx: Context
) -> tuple[list[AnyMessage], list[AnyMessage], list[dict[str, Any]]]:
    """Apply the input limits to a new run's task: strip control characters, flag injection.

    The latest human instruction (from `task` or chat messages) loses its control
    characters (newlines and tabs kept); a stored message is replaced in place by id.
    The injection detector runs on it when `Context.flag_injection_in_task` is set;
    findings are recorded as flags of kind `task` and nothing is blocked.
    """
    for index in range(len(history) - 1, -1, -1):
        message = history[index]
        if isinstance(message, HumanMessage) and message.name != WARDEN_NAME:
            break
    else:
        return history, new_messages, []
    clean, findings = sanitize_task(message.text)
    if not ctx.flag_injection_in_task:
        findings = [f for f in findings if f.kind == "control_chars"]
    flags = [flag_record(f, source="task", redact_kinds=ctx.redact) for f in findings]
    if clean != message.text:
        cleaned = message.model_copy(update={"content": clean})
        history = [*history[:index], cleaned, *history[index + 1 :]]
        if any(m is message for m in new_messages):
            new_messages = [cleaned if m is message else m for m in new_messages]
        elif message.id is not None:
            new_messages = [*new_messages, cleaned]  # replaces the stored message by id
    return history, new_messages, flags


def estimate_tokens(messages: Sequence[BaseMessage]) -> int:
    """Estimate prompt tokens when a provider reports none (about 4 characters a token)."""
    return sum(len(m.text) + 16 for m in messages) // 4 + 1


def make_plan_node(
    *,
    model: BaseChatModel | None,
    model_factory: ModelFactory,
    tools: ToolRegistry,
    locked_policy: Mapping[str, Any] | None = None,
) -> Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]:
    """Build the `plan` node around a model, or a factory that resolves `Context.model`.

    `locked_policy` holds policy fields the operator pinned; they replace the run's own.
    """


    def resolve(ctx: Context) -> BaseChatModel:
        if ctx.model is not None:
            return model_factory(ctx.model, retries=ctx.model_retries)
        if model is None:
            raise ConfigError("no model configured: set the run's `model` (e.g. scripted:PATH)")
        return model

    async def plan(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        clock = NodeClock()
        update: dict[str, Any] = {}
        new_messages: list[AnyMessage] = []
        previous = state.get("usage")
        warnings_seen = list(state.get("budget_warnings") or [])
        new_run = not previous or state.get("halt_reason") is not None
        # A DeltaChannel reads as `{}` before its first write: that thread has had no run.
        usage: Usage = empty_usage() if new_run or previous is None else previous

        def usage_write(spent: dict[str, Any]) -> Any:
            # Usage is written as a delta; a new run's counters replace the last run's.
            return Overwrite(add_usage(empty_usage(), spent)) if new_run else spent

        if new_run:
            ctx = runtime.context or Context()
            if locked_policy is not None:
                ctx = with_policy(ctx, locked_policy)
        else:
            ctx = run_context(state, runtime.context)
        if new_run:
            # A new run on this thread: budgets and loop history start afresh, under the
            # Context this run was started with.
            warnings_seen = []
            update |= {
                "run_context": context_to_json(ctx),
                "run_id": str(uuid.uuid4()),
                "data_nonce": secrets.token_hex(8),
                "tainted": False,
                "loop": Overwrite(empty_loop_state()),
                "stop": None,
                "halt_reason": None,
                "halt_detail": None,
                "final_answer": None,
                "report": None,
                "budget_warnings": Overwrite([]),
            }
        if state.get("task"):
            new_messages.append(HumanMessage(content=state["task"]))
            update["task"] = None
        history = [*state.get("messages", []), *new_messages]
        if new_run:
            history, new_messages, task_flags = screen_task(history, new_messages, ctx)
            if task_flags:
                update["flags"] = task_flags
        objective = latest_instruction(history)

        spent_on_window: dict[str, Any] = {}  # the summary model's usage, once a prompt is built

        def stopped(reason: str, detail: str) -> dict[str, Any]:
            return update | {
                "messages": new_messages,
                "objective": objective or "",
                "usage": usage_write(merge_usage(spent_on_window, clock.delta())),
                "stop": StopSignal(reason=reason, detail=detail),  # type: ignore[typeddict-item]
            }

        if objective is None:
            return stopped("error", "no task: send a `task` or a human message")
        if len(objective) > ctx.max_task_chars:
            return stopped(
                "error", f"task is {len(objective)} characters; the limit is {ctx.max_task_chars}"
            )
        try:
            chat = resolve(ctx)
            fallbacks = [model_factory(m, retries=ctx.model_retries) for m in ctx.fallback_models]
        except (ConfigError, ValueError, ImportError) as exc:
            return stopped("error", f"model configuration: {exc}")
        policy = ctx.policy
        tiers = tools.tiers()
        offered = [s.tool for n, s in tools.items() if policy.decide(n, tiers) != "deny"]

        def with_tools(chat_model: BaseChatModel) -> Runnable[Any, Any]:
            return chat_model.bind_tools(offered) if offered else chat_model

        # Retries (429/5xx/timeouts, Retry-After) happen inside each model's provider SDK;
        # the fallbacks are tried in order only once the primary has spent its retries.
        bound = with_tools(chat)
        if fallbacks:
            bound = bound.with_fallbacks([with_tools(f) for f in fallbacks])
        nonce = update.get("data_nonce") or state.get("data_nonce")
        if not nonce:  # a run started before data fences existed
            nonce = update["data_nonce"] = secrets.token_hex(8)
        try:
            window = await build_prompt(
                ctx=ctx,
                model=chat,
                nonce=nonce,
                offered=offered,
                history=history,
                summaries=state.get("summaries") or [],
                resolve_summary_model=lambda spec: model_factory(spec, retries=ctx.model_retries),
                time_left=ctx.max_seconds - usage["active_seconds"] - (time.perf_counter() - clock.started),
            )
        except ContextOverflowError as exc:
            return stopped("error", f"context: {exc}")
        spent_on_window = dict(window.usage)
        usage = add_usage(usage, spent_on_window)
        if window.summary is not None:
            update["summaries"] = [window.summary]
        context_warnings = [
            w for w in [window.warning] if w and not any(s.startswith(w[:24]) for s in warnings_seen)
        ]
        turn = sum(isinstance(m, AIMessage) for m in history)
        remaining = (
            ctx.max_seconds - usage["active_seconds"] - (time.perf_counter() - clock.started)
        )
        limiter = limiter_for(
            ctx.model or str(getattr(chat, "model_name", None) or type(chat).__name__),
            ctx.requests_per_minute,
            ctx.tokens_per_minute,
        )
        estimated = 0
        waited = 0.0
        if limiter is not None:
            # Waiting for the limiter is wall-clock time the run is active: it counts
            # against max_seconds, and a wait that would pass the budget ends the run now.
            estimated = window.tokens
            try:
                waited = await limiter.acquire(estimated, max_wait=remaining)
            except RateLimitExceedsBudget as exc:
                return stopped(
                    "max_seconds",
                    f"waiting {exc.wait:.1f}s for the model rate limit would pass the "
                    f"{ctx.max_seconds:g}s budget",
                )
            remaining -= waited
        # Global per-tenant caps: hold the estimated cost first, settle the actual below.
        # The estimate starts from the assembled prompt's counted size (tool schemas included).
        hold = await hold_spend(
            ctx, usage, lambda: window.tokens, getattr(chat, "model_name", None)
        )
        if isinstance(hold, Refusal):
            return stopped("global_budget", hold.detail)
        called = time.perf_counter()
        try:
            # The prompt is rendered here, for the call alone (`Window.messages`).
            response = await asyncio.wait_for(
                metered(hold, bound.ainvoke(window.messages, config={"metadata": {"warden_turn": turn}})),
                timeout=max(remaining, 0.001),
            )
        except TimeoutError:
            return stopped("max_seconds", f"model call passed the {ctx.max_seconds:g}s budget")
        except ScriptExhaustedError as exc:
            return stopped("error", str(exc))
        if not isinstance(response, AIMessage):
            if hold is not None:
                await hold.settle(0.0)
            return stopped("error", f"model returned {type(response).__name__}, not a message")
        model_seconds = time.perf_counter() - called
        meta = response.usage_metadata
        input_tokens = meta["input_tokens"] if meta else window.tokens
        output_tokens = meta["output_tokens"] if meta else estimate_tokens([response])
        # The prompt's size is kept with the turn it produced: a per-step record for audits.
        warden_meta: dict[str, Any] = {"prompt_tokens": window.tokens}
        if limiter is not None:
            limiter.settle(estimated, input_tokens + output_tokens)
            warden_meta["rate_limit_wait_s"] = round(waited, 3)
        # The response is this call's own new message: its metadata is updated in place
        # rather than through `model_copy`, which copies the message (and its field set)
        # for every turn of every run.
        response.response_metadata = {
            **response.response_metadata,
            "warden": {**(response.response_metadata.get("warden") or {}), **warden_meta},
        }
        model_name = str(
            response.response_metadata.get("model_name") or ctx.model or "unknown"
        )
        price = lookup_price(model_name, ctx.price_table)
        cost = cost_usd(price, input_tokens, output_tokens)
        step = clock.delta(
            model_calls=1,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            last_input_tokens=input_tokens,
            model_seconds=model_seconds,
            by_model={
                model_name: {
                    "calls": 1,
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "cost_usd": cost,
                }
            },
            last_prompt_tokens=window.tokens,
            peak_prompt_tokens=window.tokens,
        )
        spent = merge_usage(spent_on_window, step)
        new_usage = add_usage(empty_usage() if new_run else previous, spent)
        if hold is not None:
            await hold.settle(new_usage["cost_usd"] - usage["cost_usd"])
        warnings = [*context_warnings, *soft_warnings(new_usage, ctx, warnings_seen)]
        if price is None and not any(w.startswith("price:") for w in warnings_seen):
            warnings.append(f"price: no price for model {model_name!r}; its cost counts as 0")
        result = update | {"messages": [*new_messages, response], "usage": usage_write(spent)}
        # Channels are written only when they change: every write is stored.
        if new_run or objective != state.get("objective"):  # audit's run_started reads it
            result["objective"] = objective
        if "budget_warnings" in update:
            result["budget_warnings"] = Overwrite(warnings)
        elif warnings:
            result["budget_warnings"] = warnings
        if response.invalid_tool_calls:
            # The call happened and is paid for; its turn is kept for the record, then the run stops.
            bad = response.invalid_tool_calls[0]
            result["stop"] = StopSignal(
                reason="error",
                detail=f"model returned a malformed tool call {bad.get('name')!r}: {bad.get('error')}",
            )
        return result

    return plan
