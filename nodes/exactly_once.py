"""Run a tool call at most once across crashes, resumes and racing processes.

`act` hands every call to `run_once`, which consults the idempotency ledger
(`checkpoints.ledger`) around the actual execution:

- a call that already finished is not run again: its stored result is replayed;
- a call whose earlier attempt has no recorded outcome is *in doubt*. It runs again
  only when that is known to be safe: the tool's reconcile hook says the effect is
  absent (or confirms it happened, and then its result is used), the tool is
  idempotent, or a human approved this very attempt. Anything else comes back as an
  `InDoubtRecord`, which `act` stores and `approve` puts to a human;
- the arguments must hash-match the ones the call was first claimed with: an
  idempotency key never covers a different call.

Read-tier tools (no side effects) run without the ledger, under their key. Without a
Postgres pool (`InMemorySaver` tests, the no-checkpointer benchmark) every call simply
runs, as before the ledger existed.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import ToolCall, ToolMessage

from checkpoints.db import Pool
from checkpoints.ledger import LedgerEntry, claim, ledger_key, record_outcome, take_over
from graph.loops import args_hash
from graph.state import InDoubtRecord
from nodes.results import tool_message
from tools.idempotency import idempotency_key
from tools.registry import Reconciled, ToolSpec

Runner = Callable[[], Awaitable[ToolMessage]]


def replay(call: ToolCall, entry: LedgerEntry) -> ToolMessage:
    """Rebuild the result message of a call that already ran, from the ledger."""
    stored = entry.result or {}
    meta = {**dict(stored.get("meta") or {}), "replayed": True}
    return tool_message(
        call, str(stored.get("content", "")), status=str(stored.get("status", "success")), **meta
    )


def in_doubt_record(entry: LedgerEntry, call: ToolCall) -> InDoubtRecord:
    """Describe an unfinished attempt for the reviewer."""
    return InDoubtRecord(
        tool_call_id=str(call["id"]),
        tool=entry.tool,
        attempt=entry.attempts,
        started_at=entry.started_at.isoformat(),
        detail=(
            f"attempt {entry.attempts} of `{entry.tool}` started at "
            f"{entry.started_at.isoformat(timespec='seconds')} and no outcome was recorded "
            "(the process running it stopped, or another one is running it now); "
            f"idempotency key {entry.key}"
        ),
    )


async def _attempt(pool: Pool, entry: LedgerEntry, run: Runner) -> ToolMessage:
    """Run a claimed call under its idempotency key and record the outcome."""
    with idempotency_key(entry.key):
        message = await run()
    ok = message.status == "success"
    await record_outcome(
        pool,
        entry,
        status="succeeded" if ok else "failed",
        result={
            "content": message.text,
            "status": message.status,
            "meta": message.response_metadata.get("warden", {}),
        },
        error=None if ok else message.text[:1000],
    )
    return message


async def reconcile(spec: ToolSpec, args: dict[str, Any], key: str) -> Reconciled:
    """Ask the tool's reconcile hook (sync or async) what became of an in-doubt call."""
    if spec.reconcile is None:
        return Reconciled("unknown")
    found = spec.reconcile(args, key)
    return await found if inspect.isawaitable(found) else found


async def run_once(
    pool: Pool | None,
    *,
    thread_id: str | None,
    turn_id: str,
    spec: ToolSpec,
    call: ToolCall,
    args: dict[str, Any],
    approved_attempt: int | None,
    run: Runner,
) -> ToolMessage | InDoubtRecord:
    """Run `call` unless the ledger shows it ran or may have run; see the module docstring.

    `approved_attempt` is the ledger attempt a human allowed to run again, if any.
    """
    if pool is None or thread_id is None:
        return await run()
    ids = {"thread_id": thread_id, "turn_id": turn_id, "tool_call_id": str(call["id"])}
    if spec.tier == "read":
        # A read-tier tool has no side effect to run twice, so it skips the ledger's two
        # round trips: after a crash it simply reads again (its earlier result never
        # reached a checkpoint, so the model never saw it). It still gets its key.
        with idempotency_key(ledger_key(**ids)):
            return await run()
    digest = args_hash(args)
    won, entry = await claim(pool, **ids, tool=spec.name, args_hash=digest)
    if entry.args_hash != digest:
        return tool_message(
            call,
            f"refused: these arguments differ from the ones this call was first started "
            f"with (idempotency key {entry.key}); the call was not run",
            status="error",
            refused="args_mismatch",
            error="args_mismatch",
        )
    if won:
        return await _attempt(pool, entry, run)
    if entry.status != "started":
        return replay(call, entry)
    found = await reconcile(spec, args, entry.key)
    if found.state == "done":
        message = tool_message(
            call,
            found.result or f"{spec.name} had already taken effect (confirmed by reconciliation)",
            reconciled=True,
            tier=spec.tier,
        )
        if await record_outcome(
            pool, entry, status="succeeded", result={
                "content": message.text, "status": "success", "meta": {"reconciled": True}
            }
        ):
            return message
    elif found.state == "absent" or spec.idempotent or approved_attempt == entry.attempts:
        taken = await take_over(pool, entry)
        if taken is not None:
            return await _attempt(pool, taken, run)
    # Lost a race to another process, or nothing says running it again is safe.
    _, latest = await claim(pool, **ids, tool=spec.name, args_hash=digest)
    if latest.status != "started":
        return replay(call, latest)
    return in_doubt_record(latest, call)

