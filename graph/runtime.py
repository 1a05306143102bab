"""The runtime API over Postgres: start, resume, cancel and inspect runs.

The CLI and the demo are thin layers over this; an app can use it too. Each run's
configuration (its Context and workspace) is stored in `warden_threads`, so a run
resumed in another process keeps exactly the budgets it started with.

Redaction: the views this module writes for people and logs (the outcome's
`final_answer`, `halt_detail` and `warnings`; `history`, including the halt report;
the task column of `threads`) pass through `graph.redaction` with the run's
`Context.redact` kinds. A field can be exempted with `Warden(redact_skip_fields=...)`
(a key, or a dotted path such as `report.final_answer`). The pending approval request
is NOT redacted: a reviewer must see the real arguments of the call they approve.
Checkpoints keep the raw values, which resuming a run needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import patch_config
from langgraph._internal._constants import CONFIG_KEY_RUNTIME
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.errors import is_invalid_resume
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, StateSnapshot, StreamMode
from pydantic import BaseModel, ValidationError

from checkpoints.cancels import consume_cancel, request_cancel
from checkpoints.locks import thread_is_busy, thread_lock
from checkpoints.saver import open_saver, resolve_database_url, saver_pool
from graph.builder import build_graph, compile_graph
from graph.context import Context, context_from_json, context_to_json
from graph.errors import BadInput, ThreadBusy
from graph.hitl import PendingCall, first_error, response_schema
from graph.logs import log_fields
from graph.models import make_model_factory
from graph.redaction import redact, redact_obj
from graph.settings import Settings, load_config_file
from graph.state import StopSignal, empty_usage
from graph.toolset import build_toolset
from graph.tracing import Tracing
from nodes.accounting import run_profile
from nodes.plan import ModelFactory
from tools.builtin import default_tools
from tools.registry import ToolRegistry

Status = Literal["completed", "halted", "awaiting_approval", "error", "in_progress"]
EXIT_CODES: dict[Status, int] = {
    "completed": 0,
    "halted": 3,
    "awaiting_approval": 4,
    "error": 1,
    "in_progress": 1,
}
Progress = Callable[[str, dict[str, Any], Context], None]
log = logging.getLogger(__name__)
Setup = tuple[Path, Path | None]
"""Where a thread's tools come from: its workspace and its config file, if any."""


@dataclass
class RunOutcome:
    """Where a thread stands: the `--json` contract of the CLI."""

    thread_id: str
    status: Status
    halt_reason: str | None
    halt_detail: str | None
    final_answer: str | None
    usage: dict[str, Any]
    budgets: dict[str, Any]
    pending_approval: dict[str, Any] | None
    warnings: list[str]
    report: dict[str, Any]
    """Where the run's time and money went (`nodes.accounting.run_profile`)."""

    @property
    def exit_code(self) -> int:
        """Return the CLI exit code for this outcome."""
        return EXIT_CODES[self.status]

    def as_json(self) -> dict[str, Any]:
        """Return the JSON object printed by `--json`."""
        return asdict(self)


# Identifiers and timestamps in `history`: never secrets, and look-alikes of numbers.
HISTORY_SKIP_FIELDS = ("thread_id", "checkpoints", "tool_call_id", "args_hash", "decided_at")


def outcome_of(
    thread_id: str, snapshot: StateSnapshot, ctx: Context, *, skip_fields: Iterable[str] = ()
) -> RunOutcome:
    """Derive a thread's status from its latest checkpoint.

    `final_answer`, `halt_detail` and `warnings` are redacted with `ctx.redact` unless
    named in `skip_fields`; `pending_approval` never is (the reviewer needs the real
    arguments).
    """
    values = snapshot.values or {}
    pending = snapshot.interrupts[0].value if snapshot.interrupts else None
    reason = values.get("halt_reason")
    detail = values.get("halt_detail")
    status: Status
    if pending is not None:
        status = "awaiting_approval"
    elif snapshot.next or snapshot.tasks:
        # `tasks` without `next`: a node finished and its writes were saved, but the
        # process died before the next checkpoint. Resuming applies them and goes on.
        status = "in_progress"
    else:
        if reason is None:
            # Ended without passing through halt, e.g. "Mark as resolved" in Agent Chat UI.
            reason, detail = "cancelled", "the thread was ended without a halt"
        status = "completed" if reason == "completed" else "error" if reason == "error" else "halted"
    ended = status != "in_progress" and pending is None
    skip = set(skip_fields)

    def shown(field: str, text: str | None) -> str | None:
        return text if text is None or field in skip else redact(text, ctx.redact)

    return RunOutcome(
        thread_id=thread_id,
        status=status,
        halt_reason=reason if ended else None,
        halt_detail=shown("halt_detail", detail) if ended else None,
        final_answer=shown("final_answer", values.get("final_answer")),
        usage=dict(values.get("usage") or empty_usage()),
        budgets=ctx.budgets(),
        pending_approval=pending,
        warnings=[shown("warnings", w) or "" for w in values.get("budget_warnings") or []],
        report=run_profile(values.get("usage") or {}),
    )


def message_record(message: BaseMessage) -> dict[str, Any]:
    """Return a JSON-friendly view of one message for `history`."""
    record: dict[str, Any] = {"type": message.type, "content": message.text}
    if isinstance(message, AIMessage) and message.tool_calls:
        record["tool_calls"] = [
            {"id": c["id"], "name": c["name"], "args": c["args"]} for c in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        record |= {"tool_call_id": message.tool_call_id, "name": message.name, "status": message.status}
    if message.name and not isinstance(message, ToolMessage):
        record["name"] = message.name
    injected_by = (message.response_metadata.get("warden") or {}).get("injected_by")
    if injected_by:
        record["injected_by"] = injected_by  # an operator's `warden inject`
    return record


class Warden:
    """Run, resume, cancel and inspect threads over one Postgres saver."""

    def __init__(
        self,
        saver: AsyncPostgresSaver,
        *,
        outbox: Path,
        model_factory: ModelFactory,
        progress: Progress | None = None,
        redact_skip_fields: Iterable[str] = (),
        tracing: Tracing | None = None,
    ) -> None:
        self.saver = saver
        self.tracing = tracing or Tracing()
        self.redact_skip_fields = tuple(redact_skip_fields)
        self.pool = saver_pool(saver)
        self.outbox = outbox
        self.model_factory = model_factory
        self.progress = progress
        self._graphs: dict[Setup, CompiledStateGraph[Any, Any, Any, Any]] = {}
        self._args_models: dict[Setup, dict[str, type[BaseModel]]] = {}

    def graph(
        self, workspace: Path, config_path: Path | None = None
    ) -> CompiledStateGraph[Any, Any, Any, Any]:
        """Return the compiled graph whose tools are confined to `workspace`.

        With a config file, the tools are the ones it configures (built-ins and the
        user's own); without one, the default workspace and outbox tools.
        """
        key = (workspace, config_path)
        if key not in self._graphs:
            if config_path is None:
                tools = default_tools(workspace, self.outbox)
            else:
                tools = build_toolset(
                    workspace, self.outbox.parent, load_config_file(config_path)
                )
            registry = ToolRegistry.of(tools)
            self._args_models[key] = registry.args_models()
            builder = build_graph(tools=registry, model_factory=self.model_factory)
            self._graphs[key] = compile_graph(builder, self.saver)
        return self._graphs[key]

    @staticmethod
    def config(thread_id: str, ctx: Context) -> RunnableConfig:
        """Return the LangGraph config for a thread, with the recursion limit from the budget."""
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": ctx.recursion_limit()}

    def _outcome(self, thread_id: str, snapshot: StateSnapshot, ctx: Context) -> RunOutcome:
        return outcome_of(thread_id, snapshot, ctx, skip_fields=self.redact_skip_fields)

    async def _stored(self, thread_id: str) -> tuple[Context, Setup] | None:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT context, workspace, config_path FROM warden_threads "
                    "WHERE thread_id = %s",
                    (thread_id,),
                )
            ).fetchone()
        if row is None:
            return None
        config = Path(row["config_path"]) if row["config_path"] else None
        return context_from_json(row["context"]), (Path(row["workspace"]), config)

    async def _snapshot(self, thread_id: str, ctx: Context, setup: Setup) -> StateSnapshot:
        return await self.graph(*setup).aget_state(self.config(thread_id, ctx))

    async def _load(self, thread_id: str) -> tuple[Context, Setup, StateSnapshot]:
        stored = await self._stored(thread_id)
        if stored is None:
            raise BadInput(f"unknown thread {thread_id!r}: no run with this id in the database")
        ctx, setup = stored
        return ctx, setup, await self._snapshot(thread_id, ctx, setup)

    async def _drive(self, thread_id: str, ctx: Context, setup: Setup, payload: Any) -> RunOutcome:
        graph = self.graph(*setup)
        config = self.config(thread_id, ctx)
        traced = self.tracing.run_config(config, thread_id, ctx)
        run_id = traced["metadata"]["warden_run_id"]
        with self.tracing.scope(), log_fields(thread_id=thread_id, run_id=run_id):
            log.info("run started", extra={"model": ctx.model, "tenant": ctx.tenant})
            # Progress shows the counters after each node. A node's update carries only
            # what it added to `usage`, so they are read from the state LangGraph streams
            # after the step ("values"); nothing extra is streamed without progress.
            modes: list[StreamMode] = ["updates", "values"] if self.progress else ["updates"]
            steps: list[tuple[str, dict[str, Any]]] = []
            async for mode, chunk in graph.astream(
                payload, traced, context=ctx, stream_mode=modes, durability="sync"
            ):
                if self.progress is None or not isinstance(chunk, dict):
                    continue
                if mode == "updates":
                    steps += [
                        (node, update)
                        for node, update in chunk.items()
                        if node != "__interrupt__" and isinstance(update, dict)
                    ]
                    continue
                for node, update in steps:
                    shown = update | {"usage": chunk.get("usage")} if "usage" in update else update
                    self.progress(node, shown, ctx)
                steps = []
            outcome = self._outcome(thread_id, await graph.aget_state(config), ctx)
            log.info(
                "run stopped",
                extra={"status": outcome.status, "halt_reason": outcome.halt_reason},
            )
        return outcome

    async def run(
        self,
        task: str,
        *,
        context: Context,
        workspace: Path,
        thread_id: str | None = None,
        config_path: Path | None = None,
    ) -> RunOutcome:
        """Start a run (a new thread, or a follow-up on a thread whose last run ended).

        `config_path` names the config file whose tools the run uses; it is stored with
        the thread so a resume in another process rebuilds the same tools.
        """
        if not task.strip():
            raise BadInput("the task is empty")
        if len(task) > context.max_task_chars:
            raise BadInput(
                f"task is {len(task)} characters; the limit is {context.max_task_chars} "
                "(max_task_chars)"
            )
        if context.model is None:
            raise BadInput("no model configured")
        self.model_factory(context.model)  # a bad model string fails before anything is stored
        thread_id = thread_id or str(uuid.uuid4())
        async with thread_lock(self.pool, thread_id):
            return await self._start(task, context, workspace, thread_id, config_path)

    async def _start(
        self, task: str, context: Context, workspace: Path, thread_id: str, config_path: Path | None
    ) -> RunOutcome:
        stored = await self._stored(thread_id)
        if stored is not None:
            current = self._outcome(thread_id, await self._snapshot(thread_id, *stored), stored[0])
            if current.status in ("awaiting_approval", "in_progress"):
                raise BadInput(
                    f"thread {thread_id} has a run that has not ended ({current.status}); "
                    f"use `warden resume {thread_id}`"
                )
        # A request stored as an earlier run ended (after its `halt`, before its lock was
        # released) was meant for that run: it must not cancel this new one.
        await consume_cancel(self.pool, thread_id)
        async with self.pool.connection() as conn:
            await conn.execute(
                """
                INSERT INTO warden_threads (thread_id, task, context, workspace, config_path)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (thread_id) DO UPDATE
                SET task = EXCLUDED.task, context = EXCLUDED.context,
                    workspace = EXCLUDED.workspace, config_path = EXCLUDED.config_path,
                    updated_at = now()
                """,
                (
                    thread_id,
                    task,
                    json.dumps(context_to_json(context)),
                    str(workspace),
                    str(config_path) if config_path else None,
                ),
            )
        return await self._drive(thread_id, context, (workspace, config_path), {"task": task})

    async def resume(
        self, thread_id: str, *, decisions: dict[str, Any] | None = None
    ) -> RunOutcome:
        """Answer a pending approval, or continue a run that stopped mid-way.

        One process at a time: a second resume of the same thread (say, two reviewers
        approving at once) fails with ThreadBusy instead of running the call twice. A
        resume that cannot go ahead (an ended thread, decisions that do not fit the
        request) is refused before the lock, so it never reports "busy", except when the
        thread is not awaiting approval because another process is running it (it moved
        past the approval since it was read): that is ThreadBusy, as it would be a moment
        later under the lock.
        """
        _, _, current = await self._check_resume(thread_id, decisions, before_lock=True)
        if decisions is None and current.status == "awaiting_approval":
            return current
        async with thread_lock(self.pool, thread_id):
            # Again under the lock: another process may have moved the thread on.
            ctx, setup, current = await self._check_resume(thread_id, decisions)
            if decisions is None and current.status == "awaiting_approval":
                return current
            payload: Command[Any] | None = None if decisions is None else Command(resume=decisions)
            try:
                return await self._drive(thread_id, ctx, setup, payload)
            except ValidationError as exc:
                if is_invalid_resume(exc):
                    raise BadInput(f"decisions refused: {first_error(exc)}") from None
                raise

    async def ensure_idle(self, thread_id: str) -> None:
        """Raise ThreadBusy if another process is running the thread right now."""
        async with thread_lock(self.pool, thread_id):
            pass

    async def _check_resume(
        self, thread_id: str, decisions: dict[str, Any] | None, *, before_lock: bool = False
    ) -> tuple[Context, Setup, RunOutcome]:
        """Load a thread and refuse (BadInput) a resume that cannot go ahead.

        `before_lock`: decisions for a thread that is mid-run raise ThreadBusy if another
        process is running it. Only then: an ended thread, or decisions that do not fit,
        are refused without touching the lock, which a concurrent command may hold for
        a moment (a refusal must not turn into "busy").
        """
        ctx, setup, snapshot = await self._load(thread_id)
        current = self._outcome(thread_id, snapshot, ctx)
        if current.status == "awaiting_approval":
            if decisions is not None and current.pending_approval:
                self._check_decisions(setup, current.pending_approval, decisions)
            return ctx, setup, current
        if decisions is not None:
            if before_lock and current.status == "in_progress":
                await self.ensure_idle(thread_id)
            raise BadInput(
                f"thread {thread_id} is not awaiting approval (status: {current.status})"
            )
        if current.status != "in_progress":
            raise BadInput(
                f"thread {thread_id} already ended ({current.halt_reason}); "
                f"start a new run with `warden run --thread-id {thread_id} TASK`"
            )
        return ctx, setup, current

    def _check_decisions(
        self, setup: Setup, request: dict[str, Any], decisions: dict[str, Any]
    ) -> None:
        """Validate decisions with the schema `approve` will apply, before taking the lock."""
        count = len(request["action_requests"])
        pending = [
            PendingCall(
                id=call_id, name=action["name"], args=action["args"], tier=tier, reasoning="",
                in_doubt=bool(doubt),
            )
            for action, call_id, tier, doubt in zip(
                request["action_requests"],
                request["tool_call_ids"],
                request["tiers"],
                request.get("in_doubt") or [False] * count,
                strict=True,
            )
        ]
        self.graph(*setup)  # builds the thread's tools, and their argument models
        try:
            response_schema(pending, self._args_models[setup]).model_validate(decisions)
        except ValidationError as exc:
            raise BadInput(f"decisions refused: {first_error(exc)}") from None

    async def cancel(
        self, thread_id: str, *, reason: str = "cancelled by operator", requested_by: str = "operator"
    ) -> RunOutcome:
        """End a thread with halt reason `cancelled`, or ask the process running it to.

        A thread that is awaiting approval or stopped mid-way is ended here and now.
        One that another process is running (it holds the thread's lock) gets a cancel
        request in Postgres, which that run honours at its next node boundary; the
        outcome returned then is the thread's current one, still `in_progress`.

        A thread started outside this runtime (the LangGraph server, an embedding app)
        has no stored configuration and its runner takes no Warden lock: it always gets
        the request, honoured at its next node (for an approval: when it is resumed).
        """
        if await self._stored(thread_id) is None:
            current = await self.peek(thread_id)
            if current is None:
                raise BadInput(f"unknown thread {thread_id!r}: no run with this id in the database")
            if current.status not in ("awaiting_approval", "in_progress"):
                raise BadInput(f"thread {thread_id} already ended ({current.halt_reason})")
            await request_cancel(self.pool, thread_id, requested_by=requested_by, reason=reason)
            return current
        while True:
            try:
                async with thread_lock(self.pool, thread_id):
                    return await self._cancel_now(thread_id, reason)
            except ThreadBusy:
                await request_cancel(
                    self.pool, thread_id, requested_by=requested_by, reason=reason
                )
            if await thread_is_busy(self.pool, thread_id):
                return await self.status(thread_id)
            # The runner let go before it could see the request: withdraw it, go direct.
            await consume_cancel(self.pool, thread_id)

    async def _cancel_now(self, thread_id: str, reason: str) -> RunOutcome:
        ctx, setup, snapshot = await self._load(thread_id)
        current = self._outcome(thread_id, snapshot, ctx)
        if current.status not in ("awaiting_approval", "in_progress"):
            raise BadInput(f"thread {thread_id} already ended ({current.halt_reason})")
        graph = self.graph(*setup)
        config = self.config(thread_id, ctx)
        if not snapshot.next and snapshot.tasks:
            # A node finished and its writes were saved, but no checkpoint followed (the
            # process died). Commit those writes first, stopping before any further node,
            # so the results of work already done are kept.
            await graph.ainvoke(
                None, config, context=ctx, interrupt_before="*", durability="sync"
            )
            snapshot = await graph.aget_state(config)
        pending = snapshot.next[0] if snapshot.next else "approve"
        if pending != "halt":
            # Write the stop as if the pending node had run and asked for it: that node's
            # trigger is consumed (it never runs) and its router sends the run to `halt`.
            # update_state gives routers no run context; LangGraph reads the runtime from
            # this config key (as `abulk_update_state` does for the store), so pass it there.
            with_runtime = patch_config(
                config, configurable={CONFIG_KEY_RUNTIME: Runtime(context=ctx)}
            )
            await graph.aupdate_state(
                with_runtime,
                {"stop": StopSignal(reason="cancelled", detail=reason)},
                as_node=pending,
            )
        return await self._drive(thread_id, ctx, setup, None)

    async def peek(self, thread_id: str) -> RunOutcome | None:
        """Return where any thread with checkpoints stands, or None if it has none.

        Unlike `status`, it needs no `warden_threads` row, so it also reads threads
        started by the LangGraph server or an embedding app; their budgets and
        redaction are shown as the defaults.
        """
        ctx = Context()
        snapshot = await self.graph(Path.cwd()).aget_state(self.config(thread_id, ctx))
        return self._outcome(thread_id, snapshot, ctx) if snapshot.values else None

    async def status(self, thread_id: str) -> RunOutcome:
        """Return where a thread stands."""
        ctx, _, snapshot = await self._load(thread_id)
        return self._outcome(thread_id, snapshot, ctx)

    async def history(self, thread_id: str) -> dict[str, Any]:
        """Return a thread's messages, human decisions, flags and checkpoints, redacted."""
        ctx, _, snapshot = await self._load(thread_id)
        checkpoints = [
            {
                "checkpoint_id": t.config["configurable"]["checkpoint_id"],
                "step": t.metadata.get("step"),
                "source": t.metadata.get("source"),
                "ts": t.checkpoint.get("ts"),
            }
            async for t in self.saver.alist(self.config(thread_id, ctx))
        ]
        values = snapshot.values or {}
        view = {
            "thread_id": thread_id,
            "objective": values.get("objective"),
            "messages": [message_record(m) for m in values.get("messages", [])],
            "approvals": list(values.get("approvals") or []),
            "warnings": list(values.get("budget_warnings") or []),
            "tainted": bool(values.get("tainted")),
            "flags": list(values.get("flags") or []),
            "report": values.get("report"),
            "checkpoints": checkpoints[::-1],
        }
        return redact_obj(
            view, ctx.redact, skip_fields=(*HISTORY_SKIP_FIELDS, *self.redact_skip_fields)
        )

    async def threads(self, limit: int = 50) -> list[dict[str, Any]]:
        """List recent threads started through the runtime, newest first."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT thread_id, task, created_at, updated_at FROM warden_threads "
                    "ORDER BY updated_at DESC LIMIT %s",
                    (limit,),
                )
            ).fetchall()
        listed = []
        for row in rows:
            ctx, _, snapshot = await self._load(row["thread_id"])
            result = self._outcome(row["thread_id"], snapshot, ctx)
            task = row["task"]
            if "task" not in self.redact_skip_fields:
                task = redact(task, ctx.redact)
            listed.append(
                {
                    "thread_id": row["thread_id"],
                    "task": task,
                    "status": result.status,
                    "halt_reason": result.halt_reason,
                    "created_at": row["created_at"].isoformat(),
                    "updated_at": row["updated_at"].isoformat(),
                }
            )
        return listed


@asynccontextmanager
async def open_warden(settings: Settings, *, progress: Progress | None = None) -> AsyncIterator[Warden]:
    """Open the runtime: database (embedded unless configured), pool, saver, models."""
    # Starting the embedded server is blocking work; keep it off the event loop.
    url, embedded = await asyncio.to_thread(
        resolve_database_url, settings.database_url, settings.data_dir
    )
    tracing = Tracing.configure(
        requested=settings.langsmith_tracing,
        api_key=settings.langsmith_api_key,
        endpoint=settings.langsmith_endpoint,
        project=settings.langsmith_project,
        otel_endpoint=settings.otel_endpoint,
    )
    async with open_saver(
        url,
        auto_migrate=embedded,
        prepare_threshold=settings.prepare_threshold,
        max_size=settings.pool_max_size,
    ) as saver:
        try:
            yield Warden(
                saver,
                outbox=settings.data_dir / "outbox",
                model_factory=make_model_factory(
                    base_url=settings.openai_base_url, api_key=settings.openai_api_key
                ),
                progress=progress,
                redact_skip_fields=settings.redact_skip_fields,
                tracing=tracing,
            )
        finally:
            await asyncio.to_thread(tracing.flush)
