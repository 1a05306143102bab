"""`plan`: take the task, call the model with the conversation and tool schemas."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from graph.context import Context, context_to_json, run_context
from graph.errors import ConfigError, ScriptExhaustedError
from graph.pricing import cost_usd, lookup_price
from graph.routing import soft_warnings
from graph.state import State, StopSignal, Usage, empty_loop_state, empty_usage
from nodes.accounting import NodeClock
from tools.registry import ToolRegistry

ModelFactory = Callable[[str], BaseChatModel]
WARDEN_NAME = "warden"


def latest_instruction(messages: Sequence[AnyMessage]) -> str | None:
    """Return the text of the latest human message that did not come from Warden."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage) and message.name != WARDEN_NAME:
            return message.text
    return None


def render_for_model(messages: Sequence[AnyMessage]) -> list[BaseMessage]:
    """Wrap tool results as untrusted data with their provenance; leave the rest as is."""
    step = 0
    rendered: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage):
            step += 1
        if isinstance(message, ToolMessage):
            body = message.text
            rendered.append(
                message.model_copy(
                    update={
                        "content": (
                            f'<tool_output tool="{message.name}" call_id="{message.tool_call_id}" '
                            f'step="{step}" trust="untrusted">\n{body}\n</tool_output>'
                        )
                    }
                )
            )
        else:
            rendered.append(message)
    return rendered


def estimate_tokens(messages: Sequence[BaseMessage]) -> int:
    """Estimate prompt tokens when a provider reports none (about 4 characters a token)."""
    return sum(len(m.text) + 16 for m in messages) // 4 + 1


def make_plan_node(
    *,
    model: BaseChatModel | None,
    model_factory: ModelFactory,
    tools: ToolRegistry,
) -> Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]:
    """Build the `plan` node around a model, or a factory that resolves `Context.model`."""

    def resolve(ctx: Context) -> BaseChatModel:
        if ctx.model is not None:
            return model_factory(ctx.model)
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
        ctx = (runtime.context or Context()) if new_run else run_context(state, runtime.context)
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
        except (ConfigError, ValueError, ImportError) as exc:
            return stopped("error", f"model configuration: {exc}")
        policy = ctx.policy
        tiers = tools.tiers()
        offered = [s.tool for n, s in tools.items() if policy.decide(n, tiers) != "deny"]
        bound = chat.bind_tools(offered) if offered else chat
        prompt = [SystemMessage(content=ctx.system_prompt), *render_for_model(history)]
        turn = sum(isinstance(m, AIMessage) for m in history)
        remaining = ctx.max_seconds - usage["active_seconds"]
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
