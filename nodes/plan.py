"""`plan`: take the task, call the model with the conversation and tool schemas."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from graph.context import Context, context_to_json, run_context, with_policy
from graph.errors import ConfigError, ScriptExhaustedError
from graph.injection import data_contract, fence, flag_record, sanitize_task
from graph.pricing import cost_usd, lookup_price
from graph.ratelimit import RateLimitExceedsBudget, limiter_for
from graph.routing import soft_warnings
from graph.state import State, StopSignal, Usage, empty_loop_state, empty_usage
from nodes.accounting import NodeClock
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


class RenderCache:
    """Rendered tool messages, by the identity of the stored message, nonce and step.

    `plan` renders the whole history at every step; a stored message keeps its identity
    for the life of a run in this process, and its rendering never changes, so each is
    rendered once instead of at every later step (which made long runs quadratic).
    Bounded: when full it starts over, so finished runs' messages are not kept.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: dict[tuple[int, str, int], tuple[BaseMessage, BaseMessage]] = {}

    def get(self, message: BaseMessage, nonce: str, step: int) -> BaseMessage | None:
        """Return the cached rendering of this very message object, if any."""
        hit = self._items.get((id(message), nonce, step))
        return hit[1] if hit is not None and hit[0] is message else None

    def put(self, message: BaseMessage, nonce: str, step: int, rendered: BaseMessage) -> None:
        """Remember a rendering (the message itself is kept so its id stays its own)."""
        if len(self._items) >= self.size:
            self._items.clear()
        self._items[(id(message), nonce, step)] = (message, rendered)


def render_for_model(
    messages: Sequence[AnyMessage], nonce: str, cache: RenderCache | None = None
) -> list[BaseMessage]:
    """Fence tool results as untrusted data, with provenance and the run's nonce.

    Each tool result goes between `<<warden-data nonce=...>>` delimiters (see
    `graph.injection.fence`); fence markers and the nonce inside the data are
    neutralised, so data cannot close its fence or forge one. Two kinds of tool
    message carry no outside data and are shown as what they are instead: a human
    reviewer's answer given in place of running the tool, and Warden's own refusals.
    The rest of the conversation is left as is.
    """
    step = 0
    rendered: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage):
            step += 1
        if not isinstance(message, ToolMessage):
            rendered.append(message)
            continue
        if cache is not None and (hit := cache.get(message, nonce, step)) is not None:
            rendered.append(hit)
            continue
        meta = message.response_metadata.get("warden") or {}
        if meta.get("responded_by"):
            content = (
                f"[answer from human reviewer {meta['responded_by']}, given instead of running "
                f"{message.name}]\n{message.text}"
            )
        elif meta.get("refused"):
            content = f"[warden: call not executed ({meta['refused']})]\n{message.text}"
        else:
            content = fence(
                message.text,
                nonce,
                tool=message.name,
                call_id=message.tool_call_id,
                step=step,
                status="error" if message.status == "error" else None,
            )
        copy = message.model_copy(update={"content": content})
        if cache is not None:
            cache.put(message, nonce, step, copy)
        rendered.append(copy)
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


def schema_tokens(offered: Sequence[BaseTool]) -> int:
    """Estimate the tokens the tool schemas add to a prompt (about 4 characters a token)."""
    return len(json.dumps([convert_to_openai_tool(t) for t in offered])) // 4


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

    renders = RenderCache()

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
        new_run = previous is None or state.get("halt_reason") is not None
        usage: Usage = empty_usage() if previous is None or new_run else previous
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
                "data_nonce": secrets.token_hex(8),
                "tainted": False,
                "loop": empty_loop_state(),
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

        def stopped(reason: str, detail: str) -> dict[str, Any]:
            return update | {
                "messages": new_messages,
                "objective": objective or "",
                "usage": clock.usage(usage),
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
        prompt = [
            SystemMessage(content=f"{ctx.system_prompt}\n\n{data_contract(nonce)}"),
            *render_for_model(history, nonce, renders),
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
            estimated = estimate_tokens(prompt) + schema_tokens(offered)
            try:
                waited = await limiter.acquire(estimated, max_wait=remaining)
            except RateLimitExceedsBudget as exc:
                return stopped(
                    "max_seconds",
                    f"waiting {exc.wait:.1f}s for the model rate limit would pass the "
                    f"{ctx.max_seconds:g}s budget",
                )
            remaining -= waited
        try:
            response = await asyncio.wait_for(
                bound.ainvoke(prompt, config={"metadata": {"warden_turn": turn}}),
                timeout=max(remaining, 0.001),
            )
        except TimeoutError:
            return stopped("max_seconds", f"model call passed the {ctx.max_seconds:g}s budget")
        except ScriptExhaustedError as exc:
            return stopped("error", str(exc))
        if not isinstance(response, AIMessage):
            return stopped("error", f"model returned {type(response).__name__}, not a message")
        meta = response.usage_metadata
        input_tokens = meta["input_tokens"] if meta else estimate_tokens(prompt)
        output_tokens = meta["output_tokens"] if meta else estimate_tokens([response])
        if limiter is not None:
            limiter.settle(estimated, input_tokens + output_tokens)
            response = response.model_copy(
                update={
                    "response_metadata": {
                        **response.response_metadata,
                        "warden": {"rate_limit_wait_s": round(waited, 3)},
                    }
                }
            )
        model_name = str(
            response.response_metadata.get("model_name") or ctx.model or "unknown"
        )
        price = lookup_price(model_name, ctx.price_table)
        new_usage = clock.usage(
            usage,
            model_calls=1,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd(price, input_tokens, output_tokens),
            last_input_tokens=input_tokens,
        )
        warnings = soft_warnings(new_usage, ctx, warnings_seen)
        if price is None and not any(w.startswith("price:") for w in warnings_seen):
            warnings.append(f"price: no price for model {model_name!r}; its cost counts as 0")
        result = update | {
            "messages": [*new_messages, response],
            "objective": objective,
            "usage": new_usage,
            "budget_warnings": warnings if "budget_warnings" not in update else Overwrite(warnings),
        }
        if response.invalid_tool_calls:
            # The call happened and is paid for; its turn is kept for the record, then the run stops.
            bad = response.invalid_tool_calls[0]
            result["stop"] = StopSignal(
                reason="error",
                detail=f"model returned a malformed tool call {bad.get('name')!r}: {bad.get('error')}",
            )
        return result

    return plan
