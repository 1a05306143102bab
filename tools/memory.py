"""Long-term memory across threads: `remember` (tier write) and `recall` (tier read).

Facts live in LangGraph's `PostgresStore`, in the run's own database (the pool comes
from `checkpoints.db.current_pool()`, so the CLI, embedded apps and the LangGraph
server all reach the same store without passing one around). Each tenant has its own
namespace, `("warden_memory", <tenant>)`, derived from the run's Context — never from
the model's arguments — so one tenant never reads another's memory.

Recall is semantic when `Context.memory_embeddings` names an embedding model and the
database has pgvector (the embedded pgserver ships it); otherwise, and always when
asked by keyword, Postgres full-text search ranks the tenant's facts. LangGraph's
store ignores a search query without a vector index, which is why keyword recall is a
query of its own over the store's table.

Memory poisoning is a known attack: text planted in a tool result gets the model to
save "instructions" that a later run recalls as facts. A write passes the injection
detector first (on the original text); a flagged write is refused and quarantined in
`("warden_memory", <tenant>, "quarantine")`, which recall never reads, with its
findings, for an operator to review; `observe` records the same findings as flags of
kind `memory_write` and taints the run (see `memory_write_flags`). A clean write is
redacted (`Context.redact`) before it is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import StructuredTool
from langgraph.config import get_config
from langgraph.store.postgres.aio import AsyncPostgresStore
from pydantic import BaseModel, ConfigDict, Field

from checkpoints.db import Pool, current_pool
from graph.context import Context, current_run_context
from graph.errors import ConfigError
from graph.injection import Finding, flag_record, scan
from graph.redaction import redact
from tools.errors import ToolError, ToolRefused
from tools.registry import ToolSpec

MEMORY = "warden_memory"
QUARANTINE = "quarantine"
REMEMBER = "remember"
RECALL = "recall"
MAX_MEMORY_CHARS = 2000
MAX_QUERY_TERMS = 16


def tenant_label(tenant: str) -> str:
    """Return the tenant as a store namespace label (labels may not contain dots)."""
    return quote(tenant, safe="").replace(".", "%2E")


def namespace(tenant: str, *sub: str) -> tuple[str, ...]:
    """Return the tenant's memory namespace."""
    return (MEMORY, tenant_label(tenant), *sub)


def load_embeddings(spec: str) -> Embeddings:
    """Resolve `provider:model` with `init_embeddings`, or `pkg.module:factory` by import."""
    left, _, right = spec.partition(":")
    if not right:
        raise ConfigError(f"memory_embeddings {spec!r}: expected provider:model or pkg.module:factory")
    try:
        if "." in left:
            factory = getattr(importlib.import_module(left), right)
            made = factory()
        else:
            from langchain.embeddings import init_embeddings

            made = init_embeddings(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"memory_embeddings {spec!r}: {exc}") from None
    if not isinstance(made, Embeddings):
        raise ConfigError(f"memory_embeddings {spec!r} is not a LangChain Embeddings object")
    return made


async def has_pgvector(pool: Pool) -> bool:
    """Tell whether the database can load pgvector (the system server may not have it)."""
    async with pool.connection() as conn:
        row = await (
            await conn.execute("SELECT 1 AS ok FROM pg_available_extensions WHERE name = 'vector'")
        ).fetchone()
    return row is not None


class Memory:
    """One tenant's long-term memory over a pool."""

    def __init__(self, pool: Pool, tenant: str, embeddings: Embeddings | None = None, dims: int = 1536):
        self.pool = pool
        self.tenant = tenant
        self.embeddings = embeddings
        index = {"dims": dims, "embed": embeddings, "fields": ["text"]} if embeddings else None
        self.store = AsyncPostgresStore(pool, index=index)  # type: ignore[arg-type]

    async def setup_vectors(self) -> None:
        """Create pgvector's extension and the store's vector table (idempotent).

        Its dimensions depend on the embedding model, so it is set up on first use with
        embeddings rather than by `warden db migrate`.
        """
        await self.store.setup()

    async def remember(self, text: str, *, thread_id: str | None, redact_kinds: Iterable[str]) -> str:
        """Store a fact (redacted); return its key. Refuse and quarantine a poisoned one."""
        findings = scan(text)
        if findings:
            key = hashlib.sha256(text.encode()).hexdigest()[:32]
            await self.store.aput(
                namespace(self.tenant, QUARANTINE),
                key,
                {
                    "text": redact(text, redact_kinds),
                    "flags": [flag_record(f, source="memory_write", tool=REMEMBER, redact_kinds=redact_kinds) for f in findings],
                    "thread_id": thread_id,
                    "quarantined_at": datetime.now(UTC).isoformat(),
                },
                index=False,
            )
            reasons = "; ".join(sorted({f.reason for f in findings}))
            raise ToolRefused(
                f"memory write refused: it reads like instructions ({reasons}); it was "
                "quarantined for review and will not be recalled"
            )
        clean = redact(text, redact_kinds)
        key = hashlib.sha256(clean.encode()).hexdigest()[:32]
        await self.store.aput(
            namespace(self.tenant),
            key,
            {"text": clean, "thread_id": thread_id, "saved_at": datetime.now(UTC).isoformat()},
            index=["text"] if self.embeddings else False,
        )
        return key

    async def recall(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        """Return the tenant's facts that best match `query`, best first."""
        if self.embeddings is not None:
            items = await self.store.asearch(namespace(self.tenant), query=query, limit=limit)
            return [
                {"memory": i.value["text"], "saved_at": i.value.get("saved_at"), "score": round(i.score or 0.0, 4)}
                for i in items
            ]
        return await self.keyword_recall(query, limit)

    async def keyword_recall(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        """Rank the tenant's facts by Postgres full-text match on any of the query's words."""
        terms = list(dict.fromkeys(re.findall(r"\w+", query.lower())))[:MAX_QUERY_TERMS]
        if not terms:
            return []
        prefix = ".".join(namespace(self.tenant))
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    """
                    SELECT value, ts_rank(to_tsvector('simple', value->>'text'), q) AS score
                    FROM store, to_tsquery('simple', %s) AS q
                    WHERE prefix = %s AND prefix LIKE 'warden_memory.%%'
                      AND to_tsvector('simple', value->>'text') @@ q
                      AND (expires_at IS NULL OR expires_at > now())
                    ORDER BY score DESC, updated_at DESC
                    LIMIT %s
                    """,
                    (" | ".join(terms), prefix, limit),
                )
            ).fetchall()
        return [
            {"memory": r["value"]["text"], "saved_at": r["value"].get("saved_at"), "score": round(float(r["score"]), 4)}
            for r in rows
        ]


# Process-wide: pools whose vector tables are known to exist. A cache of a fact about
# the database (idempotent setup), not run state.
_VECTORS_READY: set[tuple[int, int]] = set()


async def memory_for_run() -> Memory:
    """Return the memory of the running tool call's tenant, or refuse clearly."""
    ctx = current_run_context()
    pool = current_pool()
    if ctx is None or pool is None:
        raise ToolError("long-term memory needs a Warden run on its Postgres database; none here")
    embeddings = None
    if ctx.memory_embeddings is not None and await has_pgvector(pool):
        # Resolving imports provider modules and builds clients: off the event loop.
        embeddings = await asyncio.to_thread(load_embeddings, ctx.memory_embeddings)
    memory = Memory(pool, ctx.tenant, embeddings, ctx.memory_embedding_dims)
    if embeddings is not None and (id(pool), ctx.memory_embedding_dims) not in _VECTORS_READY:
        await memory.setup_vectors()
        _VECTORS_READY.add((id(pool), ctx.memory_embedding_dims))
    return memory


def run_thread_id() -> str | None:
    """Return the running graph's thread id, if any."""
    try:
        return (get_config().get("configurable") or {}).get("thread_id")
    except RuntimeError:
        return None


class RememberArgs(BaseModel):
    """Arguments of `remember`."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_MEMORY_CHARS, description="The fact to keep.")


class RecallArgs(BaseModel):
    """Arguments of `recall`."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=500, description="What to look for.")
    limit: int = Field(default=5, ge=1, le=20, description="How many facts at most.")


def memory_tools() -> list[ToolSpec]:
    """Return `remember` (tier write) and `recall` (tier read)."""

    async def remember(text: str) -> str:
        """Save a fact to long-term memory, for later runs of this tenant to recall.

        Save facts, not instructions: text that reads like instructions is refused.
        """
        ctx = current_run_context() or Context()
        memory = await memory_for_run()
        key = await memory.remember(text, thread_id=run_thread_id(), redact_kinds=ctx.redact)
        return f"remembered (memory {key[:8]})"

    async def recall(query: str, limit: int = 5) -> str:
        """Recall facts saved in long-term memory by earlier runs, best match first."""
        memory = await memory_for_run()
        found = await memory.recall(query, limit)
        return json.dumps(found, ensure_ascii=False) if found else "no memories match"

    return [
        ToolSpec(
            tool=StructuredTool.from_function(coroutine=remember, name=REMEMBER, args_schema=RememberArgs),
            tier="write",
            scopes=frozenset({"memory:write"}),
            timeout=30.0,
            idempotent=True,  # the key is the text's hash: saving twice stores one fact
        ),
        ToolSpec(
            tool=StructuredTool.from_function(coroutine=recall, name=RECALL, args_schema=RecallArgs),
            tier="read",
            scopes=frozenset({"memory:read"}),
            timeout=30.0,
            idempotent=True,
        ),
    ]


def memory_write_flags(
    turn: AIMessage | None, results: Sequence[ToolMessage], redact_kinds: Iterable[str]
) -> list[dict[str, Any]]:
    """Return flag records for instruction-like text the model tried to `remember`.

    `observe` records them beside the flags from tool output, so a poisoning attempt
    taints the run and shows in its flags, whether or not the write was refused.
    """
    if turn is None:
        return []
    answered = {r.tool_call_id for r in results}
    flags: list[dict[str, Any]] = []
    for call in turn.tool_calls:
        if call["name"] != REMEMBER or call["id"] not in answered:
            continue
        findings: list[Finding] = scan(str(call["args"].get("text") or ""))
        flags += [
            flag_record(f, source="memory_write", tool=REMEMBER, tool_call_id=call["id"], redact_kinds=redact_kinds)
            for f in findings
        ]
    return flags
