"""`warden audit`: verify a thread's hash chain, anchor chain heads, show and export events.

Anchors are signed with HMAC-SHA256 under a key the database never sees:
`WARDEN_AUDIT_KEY` (the secret itself) or `WARDEN_AUDIT_KEY_FILE` (a file holding it).
Someone who can rewrite the table and re-hash the chain still cannot produce an anchor
that matches, and cutting off a chain's tail shows against the last anchored head.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TextIO, TypeVar

import typer
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.table import Table

from checkpoints.audit_chain import (
    EVENT_FIELDS,
    Base,
    Finding,
    anchor_is_authentic,
    format_at,
    latest_head,
    sign_anchor,
    verify_chain,
)
from checkpoints.audit_store import (
    chain_base,
    chain_heads,
    read_events,
    retention_records,
)
from checkpoints.db import Pool
from checkpoints.saver import open_saver, resolve_database_url, saver_pool
from graph.cli import _settings, app, fail, guarded, out
from graph.errors import ConfigError, first_error
from graph.loops import canonical_json

audit_app = typer.Typer(help="Audit trail: verify, anchor, show, export.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

MIN_KEY_BYTES = 16
T = TypeVar("T")


class AuditSettings(BaseSettings):
    """Where the anchor signing key comes from (never from the database)."""

    model_config = SettingsConfigDict(env_prefix="WARDEN_AUDIT_", extra="ignore")

    key: SecretStr | None = Field(default=None, description="The HMAC key itself.")
    key_file: Path | None = Field(default=None, description="A file holding the HMAC key.")


def audit_key() -> bytes:
    """Return the anchor signing key, or raise a one-line ConfigError saying how to set it."""
    try:
        settings = AuditSettings()
    except ValidationError as exc:
        raise ConfigError(f"audit key setting {first_error(exc)}") from None
    if settings.key is not None and settings.key.get_secret_value().strip():
        key = settings.key.get_secret_value().strip().encode()
    elif settings.key_file is not None:
        try:
            key = settings.key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read WARDEN_AUDIT_KEY_FILE {settings.key_file}: {exc.strerror}") from None
    else:
        raise ConfigError(
            "no audit key: set WARDEN_AUDIT_KEY or WARDEN_AUDIT_KEY_FILE to a secret kept "
            "outside the database"
        )
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"the audit key is too short: use at least {MIN_KEY_BYTES} bytes")
    return key


def read_anchors(path: Path) -> list[dict[str, Any]]:
    """Read an anchor file (one JSON anchor per line, oldest first)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read anchor file {path}: {exc.strerror}") from None
    anchors: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            anchor = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"anchor file {path} line {number} is not JSON") from None
        if not isinstance(anchor, dict) or not isinstance(anchor.get("heads"), list):
            raise ConfigError(f"anchor file {path} line {number} is not an anchor")
        anchors.append(anchor)
    if not anchors:
        raise ConfigError(f"anchor file {path} holds no anchor")
    return anchors


@asynccontextmanager
async def audit_pool() -> AsyncIterator[Pool]:
    """Open the database the CLI is configured for (embedded unless WARDEN_DATABASE_URL)."""
    settings = _settings()
    url, embedded = await asyncio.to_thread(
        resolve_database_url, settings.database_url, settings.data_dir
    )
    async with open_saver(
        url, auto_migrate=embedded, prepare_threshold=settings.prepare_threshold, max_size=2
    ) as saver:
        yield saver_pool(saver)


def audit_key_or_fail() -> bytes:
    """Return the audit key, or exit 2 with the one-line reason."""
    try:
        return audit_key()
    except ConfigError as exc:
        fail(str(exc))


def guarded_sync(read: Callable[[Path], T], path: Path) -> T:
    """Call a file reader, turning its ConfigError into a one-line error and exit 2."""
    try:
        return read(path)
    except ConfigError as exc:
        fail(str(exc))


def check_thread(
    rows: list[dict[str, Any]],
    base: Base,
    anchors: list[dict[str, Any]] | None,
    key: bytes | None,
    thread_id: str,
) -> tuple[Finding | None, Mapping[str, Any] | None]:
    """Verify the anchors' signatures, then the chain against the latest anchored head."""
    head = None
    if anchors is not None and key is not None:
        for number, anchor in enumerate(anchors, 1):
            if not anchor_is_authentic(key, anchor):
                return (
                    Finding(None, f"anchor {number} fails its signature check (forged, altered "
                            "or signed with another key)"),
                    None,
                )
        head = latest_head(anchors, thread_id)
    return verify_chain(rows, base, head), head


@audit_app.command("verify")
def verify(
    thread_id: Annotated[str, typer.Argument(help="Thread whose chain to check.")],
    anchor: Annotated[
        Path | None, typer.Option(help="Anchor file from `warden audit anchor` (latest line wins).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Recompute a thread's hash chain: exit 0 if intact, 1 at the first broken link."""
    key = audit_key_or_fail() if anchor is not None else None
    anchors = guarded_sync(read_anchors, anchor) if anchor is not None else None

    async def work() -> tuple[list[dict[str, Any]], Base, list[dict[str, Any]]]:
        async with audit_pool() as pool:
            rows = await read_events(pool, thread_id)
            return rows, await chain_base(pool, thread_id), await retention_records(pool, thread_id)

    rows, base, purges = guarded(work)
    if not rows and not purges:
        fail(f"no audit events for thread {thread_id!r}")
    finding, head = check_thread(rows, base, anchors, key, thread_id)
    purged = [
        {
            "events": p["events"],
            "head_seq": p["head_seq"],
            "removed_at": format_at(p["removed_at"]),
            "by": p["by"],
        }
        for p in purges
    ]
    summary: dict[str, Any] = {
        "thread_id": thread_id,
        "intact": finding is None,
        "events": len(rows),
        "first_seq": rows[0]["seq"] if rows else None,
        "last_seq": rows[-1]["seq"] if rows else None,
        "head_hash": rows[-1]["hash"] if rows else base.hash,
        "broken": None if finding is None else {"seq": finding.seq, "problem": finding.problem},
        "anchor": None if head is None else {"seq": head["seq"], "hash": head["hash"]},
        "purged": purged,
    }
    if as_json:
        print(json.dumps(summary))
    elif finding is not None:
        where = f"at seq {finding.seq}" if finding.seq is not None else ""
        out.print(f"[red]BROKEN[/] thread {thread_id} {where}: {finding.problem}", soft_wrap=True)
    else:
        span = f"seq {summary['first_seq']}..{summary['last_seq']}" if rows else "no events left"
        out.print(f"[green]intact[/] thread {thread_id}: {len(rows)} events ({span})", soft_wrap=True)
        for p in purged:
            out.print(f"  purged by {p['by']} at {p['removed_at']}: {p['events']} events up to seq {p['head_seq']}")
        if anchor is not None:
            out.print(
                f"  matches the anchor at seq {head['seq']}" if head is not None
                else "  [yellow]the anchor file does not list this thread[/]"
            )
    raise typer.Exit(0 if finding is None else 1)


@contextmanager
def output(path: Path | None, *, append: bool = False) -> Iterator[TextIO]:
    """Yield stdout, or the file at `path` (appended to or replaced)."""
    if path is None:
        yield sys.stdout
        return
    try:
        with path.open("a" if append else "w", encoding="utf-8") as handle:
            yield handle
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")


@audit_app.command("anchor")
def anchor_cmd(
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Append the anchor to this file (default: stdout).")
    ] = None,
) -> None:
    """Export every thread's chain head, signed with WARDEN_AUDIT_KEY, for safekeeping."""
    key = audit_key_or_fail()

    async def work() -> list[dict[str, Any]]:
        async with audit_pool() as pool:
            return await chain_heads(pool)

    signed = sign_anchor(key, guarded(work), datetime.now(UTC))
    with output(out_file, append=True) as handle:
        handle.write(json.dumps(signed) + "\n")
    if out_file is not None:
        out.print(f"anchored {len(signed['heads'])} chain head(s) to {out_file}")


def exported(row: Mapping[str, Any]) -> dict[str, Any]:
    """Return an event as `warden audit export` writes it: the hashed fields and the hash."""
    return {**{f: row[f] for f in EVENT_FIELDS}, "at": format_at(row["at"]), "hash": row["hash"]}


@audit_app.command("export")
def export(
    thread_id: Annotated[str | None, typer.Argument(help="Thread to export.")] = None,
    all_threads: Annotated[bool, typer.Option("--all", help="Export every thread.")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write here (default: stdout).")] = None,
) -> None:
    """Write audit events as JSON Lines (hashed fields and hash), in chain order."""
    if (thread_id is None) == (not all_threads):
        fail("give a THREAD_ID or --all (not both)")

    async def work() -> list[dict[str, Any]]:
        async with audit_pool() as pool:
            return await read_events(pool, thread_id)

    rows = guarded(work)
    if thread_id is not None and not rows:
        fail(f"no audit events for thread {thread_id!r}")
    with output(out_file) as handle:
        for row in rows:
            handle.write(canonical_json(exported(row)) + "\n")
    if out_file is not None:
        out.print(f"exported {len(rows)} event(s) to {out_file}")


def summarise(kind: str, p: Mapping[str, Any]) -> str:
    """Return a one-line description of an event for the timeline."""
    if kind == "run_started":
        return f"task: {p.get('task')!s} · model {p.get('model')} · tenant {p.get('tenant')}"
    if kind == "model_call":
        calls = ", ".join(c["name"] for c in p.get("tool_calls") or [])
        text = " ".join(str(p.get("text") or "").split())[:80]
        return (
            f"{text!r}{' → ' + calls if calls else ''} · {p.get('input_tokens')}+"
            f"{p.get('output_tokens')} tokens · ${float(p.get('cost_usd') or 0):.6f}"
        )
    if kind in ("tool_requested", "tool_validated", "approval_requested"):
        return f"{p.get('name')} {canonical_json(p.get('args'))[:100]}"
    if kind == "policy_decision":
        return f"{p.get('name')}: {p.get('decision')} ({p.get('reason')})"
    if kind == "approval_decision":
        edits = f" → {canonical_json((p.get('edits') or {}).get('to'))[:80]}" if p.get("edits") else ""
        return f"{p.get('name')}: {p.get('decision')} by {p.get('reviewer')}{edits}"
    if kind == "tool_result":
        took = f" {p['duration_ms']:.0f}ms" if p.get("duration_ms") is not None else ""
        return f"{p.get('name')}: {p.get('status')}{took} sha256 {str(p.get('sha256'))[:12]}…"
    if kind == "halt":
        return f"{p.get('reason')}: {p.get('detail')}"
    if kind == "injection_flag":
        return f"{p.get('kind')} in {p.get('source')}: {p.get('reason')}"
    if kind == "budget_warning":
        return str(p.get("warning"))
    return canonical_json(p)[:100]


@audit_app.command("show")
def show(thread_id: Annotated[str, typer.Argument(help="Thread to show.")]) -> None:
    """Print a thread's audit timeline."""

    async def work() -> list[dict[str, Any]]:
        async with audit_pool() as pool:
            return await read_events(pool, thread_id)

    rows = guarded(work)
    if not rows:
        fail(f"no audit events for thread {thread_id!r}")
    table = Table(title=f"audit trail of thread {thread_id}", expand=False)
    for column in ("seq", "time (UTC)", "node", "event", "what"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["seq"]),
            row["at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            row["node"],
            row["kind"],
            summarise(row["kind"], row["payload"]),
        )
    # Piped or redirected, the timeline is not squeezed into 80 columns.
    Console(highlight=False, width=None if out.is_terminal else 160).print(table)
