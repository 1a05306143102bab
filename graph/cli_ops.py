"""Operator commands: inject, fork, global spend caps. Registered on `graph.cli.app`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from checkpoints.spend import Period, release_stale, set_caps, spend_report
from graph.cli import (
    _settings,
    app,
    default_reviewer,
    fail,
    guarded,
    out,
    report,
    settle,
    show_progress,
)
from graph.control import fork as fork_thread
from graph.control import inject as inject_instruction
from graph.retention import PrunePlan
from graph.retention import prune as prune_threads
from graph.runtime import RunOutcome, open_warden

caps_app = typer.Typer(
    help="Global per-tenant spend caps (USD per UTC day and month).", no_args_is_help=True
)
app.add_typer(caps_app, name="caps")

AGE = re.compile(r"^(\d+)([smhdw])$")
AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """Parse an age like `30d`, `12h` or `90m`; a bad one is a one-line error."""
    match = AGE.match(text.strip())
    if not match:
        fail(f"bad age {text!r}: use a number and a unit s, m, h, d or w (e.g. 30d)")
    return timedelta(**{AGE_UNITS[match.group(2)]: int(match.group(1))})


@app.command()
def inject(
    thread_id: Annotated[str, typer.Argument(help="Thread to instruct.")],
    instruction: Annotated[str, typer.Argument(help="The instruction, as a human message.")],
    sender: Annotated[
        str | None,
        typer.Option("--sender", "--reviewer", help="Who sends it (default: cli:$USER)."),
    ] = None,
    no_input: Annotated[
        bool, typer.Option("--no-input", help="Never prompt; exit 4 at an approval.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Add an instruction to a paused, awaiting or ended thread and continue it.

    Pending approvals are answered "not executed" and the model re-plans; on an ended
    thread, a follow-up run starts. Output and exit codes as for `resume`.
    """
    settings = _settings()
    who = sender or default_reviewer()

    async def work() -> RunOutcome:
        async with open_warden(settings, progress=None if as_json else show_progress) as warden:
            outcome = await inject_instruction(warden, thread_id, instruction, sender=who)
            return await settle(
                warden, outcome, approve_all=False, no_input=no_input or as_json, reviewer=who
            )

    report(guarded(work), as_json)


@app.command()
def fork(
    thread_id: Annotated[str, typer.Argument(help="Thread to fork.")],
    at: Annotated[str, typer.Option("--at", help="Checkpoint id (see `warden history`).")],
    new_thread: Annotated[
        str | None, typer.Option("--thread", help="New thread id (default: a new one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Start a new thread from an earlier checkpoint; the original is not touched.

    The new thread stands where the original stood then; continue it with
    `warden resume` or `warden inject`.
    """
    settings = _settings()

    async def work() -> RunOutcome:
        async with open_warden(settings) as warden:
            return await fork_thread(warden, thread_id, at, new_thread_id=new_thread)

    outcome = guarded(work)
    if as_json:
        print(json.dumps(outcome.as_json(), default=str))
    else:
        out.print(
            f"forked {thread_id} at {at} into thread {outcome.thread_id} ({outcome.status}); "
            f"continue with: warden resume {outcome.thread_id}"
        )


@caps_app.command("set")
def caps_set(
    tenant: Annotated[
        str, typer.Argument(help="Tenant (Context.tenant; `tenant` in the config file).")
    ],
    daily: Annotated[float | None, typer.Option(min=0, help="USD per UTC day.")] = None,
    monthly: Annotated[float | None, typer.Option(min=0, help="USD per UTC month.")] = None,
    remove_daily: Annotated[
        bool, typer.Option("--remove-daily", help="Remove the daily cap.")
    ] = False,
    remove_monthly: Annotated[
        bool, typer.Option("--remove-monthly", help="Remove the monthly cap.")
    ] = False,
) -> None:
    """Set or remove a tenant's caps; runs that would cross one halt with `global_budget`."""
    if (daily is not None and remove_daily) or (monthly is not None and remove_monthly):
        fail("a period cannot be both set and removed")
    changes: dict[Period, float | None] = {}
    if daily is not None or remove_daily:
        changes["day"] = daily
    if monthly is not None or remove_monthly:
        changes["month"] = monthly
    if not changes:
        fail("give --daily and/or --monthly (or --remove-daily / --remove-monthly)")
    settings = _settings()

    async def work() -> list[dict[str, Any]]:
        async with open_warden(settings) as warden:
            await set_caps(warden.pool, tenant, changes)
            return await spend_report(warden.pool, tenant)

    print_caps(guarded(work), as_json=False)


@caps_app.command("show")
def caps_show(
    tenant: Annotated[str | None, typer.Argument(help="Only this tenant.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show caps, spend and open reservations for the current UTC day and month."""
    settings = _settings()

    async def work() -> list[dict[str, Any]]:
        async with open_warden(settings) as warden:
            return await spend_report(warden.pool, tenant)

    print_caps(guarded(work), as_json=as_json)


@caps_app.command("release")
def caps_release(
    older_than: Annotated[
        str, typer.Option(help="Age of reservations to release, e.g. 1h.")
    ] = "1h",
) -> None:
    """Release reservations whose run died before settling them (they count as unspent)."""
    age = parse_age(older_than)
    settings = _settings()

    async def work() -> int:
        async with open_warden(settings) as warden:
            return await release_stale(warden.pool, age)

    out.print(f"released {guarded(work)} reservation(s) older than {older_than}")


def print_caps(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    """Print the spend report as JSON or one line per tenant and period."""
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        out.print("no caps set and no spend recorded")
    for r in rows:
        cap = "no cap" if r["cap_usd"] is None else f"cap ${r['cap_usd']:.6f}"
        out.print(
            f"{r['tenant']:<20} {r['period']:<5} {r['period_start']}  {cap:<16} "
            f"spent ${r['spent_usd']:.6f}  reserved ${r['reserved_usd']:.6f}"
        )


@app.command()
def prune(
    older_than: Annotated[
        str | None, typer.Option(help="Threads idle longer than this, e.g. 30d.")
    ] = None,
    keep_latest: Annotated[
        int | None, typer.Option(min=0, help="Keep the N most recent threads.")
    ] = None,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete (default: dry run, print only).")
    ] = False,
    include_unfinished: Annotated[
        bool,
        typer.Option(
            "--include-unfinished", help="Also threads awaiting approval or stopped mid-way."
        ),
    ] = False,
    audit: Annotated[
        bool, typer.Option("--audit", help="Also delete their audit events (kept by default).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Delete old threads: checkpoints and Warden's rows for them (dry run by default)."""
    if older_than is None and keep_latest is None:
        fail("give --older-than AGE and/or --keep-latest N")
    age = parse_age(older_than) if older_than is not None else None
    settings = _settings()

    async def work() -> PrunePlan:
        async with open_warden(settings) as warden:
            return await prune_threads(
                warden,
                now=datetime.now(UTC),
                older_than=age,
                keep_latest=keep_latest,
                delete=delete,
                include_unfinished=include_unfinished,
                audit=audit,
            )

    plan = guarded(work)
    if as_json:
        print(json.dumps(plan.as_json()))
        return
    verb = "would delete" if plan.dry_run else "deleted"
    for c in plan.threads:
        out.print(
            f"{verb} {c.thread_id}  {c.status:<17} last active {c.last_activity[:19]}  {c.checkpoints} checkpoints"
        )
    for s in plan.skipped:
        out.print(f"kept  {s['thread_id']}  ({s['reason']})")
    summary = ", ".join(f"{k} {v}" for k, v in sorted(plan.deleted.items()))
    out.print(
        f"{len(plan.threads)} thread(s) {verb}"
        + (f" ({summary})" if summary else "")
        + ("; run again with --delete to delete them" if plan.dry_run and plan.threads else "")
    )
