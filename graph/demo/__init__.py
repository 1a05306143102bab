"""`warden demo`: the bundled offline scenario, end to end on Postgres.

It shows plan, act and observe on a small workspace, an approval of an irreversible
email (interactive on a terminal, auto-approved with a notice otherwise), a resume
from Postgres in a fresh runtime, and a loop halt, then prints the run report.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from rich.console import Console

from graph.cli import prompt_decisions, show_progress
from graph.runtime import open_warden
from graph.settings import Settings, make_context

HERE = Path(__file__).parent
SCRIPT = HERE / "script.json"
WORKSPACE = HERE / "workspace"
TASK = (
    "Summarise the incident notes in the workspace and email the summary to "
    "oncall@example.com."
)


def _count_lines(path: Path) -> int:
    """Count records in a JSON-lines file (0 when it does not exist)."""
    return path.read_text().count("\n") if path.exists() else 0


async def run_demo(settings: Settings, *, interactive: bool) -> int:
    """Run the scenario; return 0 when every stage behaved as designed."""
    console = Console(stderr=True, highlight=False)
    workspace = settings.data_dir / "demo-workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.copytree(WORKSPACE, workspace)
    ctx = make_context({"model": f"scripted:{SCRIPT}", "max_steps": 12, "max_tool_calls": 12})
    where = settings.database_url or f"embedded Postgres in {settings.data_dir / 'pgdata'}"
    outbox = settings.data_dir / "outbox" / "outbox.jsonl"
    sent_before = _count_lines(outbox)
    console.rule("[bold]Warden demo")
    console.print(f"task: {TASK}\nmodel: scripted ({SCRIPT.name})\ndatabase: {where}", soft_wrap=True)

    async with open_warden(settings, progress=show_progress) as warden:
        first = await warden.run(TASK, context=ctx, workspace=workspace)
        if first.status != "awaiting_approval" or not first.pending_approval:
            console.print(f"[red]expected an approval, got {first.status}[/]")
            return 1
        checkpoints = len((await warden.history(first.thread_id))["checkpoints"])
    console.rule("approval")
    console.print(
        f"The run paused before an irreversible call. Its state is in Postgres "
        f"(thread {first.thread_id}, {checkpoints} checkpoints); this process holds nothing.",
        soft_wrap=True,
    )
    if interactive:
        decisions = await asyncio.to_thread(prompt_decisions, first.pending_approval, "demo-user")
    else:
        console.print("[yellow]notice:[/] no terminal, so the demo approves the email automatically.")
        decisions = {"decisions": [{"type": "approve"}], "reviewer": "demo (auto-approved)"}

    console.rule("resume from Postgres")
    async with open_warden(settings, progress=show_progress) as warden:
        final = await warden.resume(first.thread_id, decisions=decisions)
        history = await warden.history(first.thread_id)

    console.rule("report")
    summary = {
        "thread_id": final.thread_id,
        "status": final.status,
        "halt_reason": final.halt_reason,
        "halt_detail": final.halt_detail,
        "usage": final.usage,
        "warnings": final.warnings,
        "decisions": [
            {k: a[k] for k in ("tool", "decision", "reviewer")} for a in history["approvals"]
        ],
        "checkpoints": len(history["checkpoints"]),
        "emails_sent": _count_lines(outbox) - sent_before,
        "outbox": str(outbox),
    }
    console.print_json(json.dumps(summary, default=str))
    console.print(
        f"Inspect it with: warden history {final.thread_id}   |   warden status {final.thread_id} --json",
        soft_wrap=True,
    )
    return 0 if final.halt_reason in ("loop", "rejected", "completed") else 1
