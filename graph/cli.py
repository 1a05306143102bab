"""The `warden` command line. Its commands, flags, JSON and exit codes are a contract."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from langgraph.types import Overwrite
from psycopg import OperationalError
from psycopg_pool import PoolTimeout
from rich.console import Console

from checkpoints.locks import thread_is_busy
from graph.context import Context
from graph.errors import BadInput, WardenError
from graph.hitl import ALL_DECISIONS
from graph.logs import configure_logging
from graph.runtime import RunOutcome, Warden, open_warden
from graph.settings import (
    Settings,
    load_config_file,
    load_settings,
    make_context,
    operator_policy,
)
from graph.toolset import build_toolset

app = typer.Typer(
    name="warden",
    help="Warden: a production agent runtime with budgets, approvals and durable runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
T = TypeVar("T")
CANCEL_POLL_SECONDS = 0.2
# After `Warden.cancel`, a thread still unfinished is one another process holds: the
# cancel was stored as a request that process honours at its next node boundary.
UNFINISHED = ("in_progress", "awaiting_approval")

NO_MODEL_HELP = (
    "no model configured: pass --model (e.g. --model openai:gpt-4o-mini with OPENAI_API_KEY "
    "set, --base-url URL for an OpenAI-compatible server, or --model scripted:PATH for an "
    "offline script), set WARDEN_MODEL, or try `warden demo`"
)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def guarded(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run async work, mapping expected failures to one-line errors and exit codes."""
    try:
        return asyncio.run(work())
    except BadInput as exc:
        fail(str(exc), 2)
    except (OperationalError, PoolTimeout) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(f"database unavailable: {first}; stored runs are untouched, retry when it is back", 1)
    except WardenError as exc:
        fail(str(exc), 1)


def interactive() -> bool:
    """Tell whether a person is at the terminal to answer prompts."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def show_progress(node: str, update: dict[str, Any], ctx: Context) -> None:
    """Print one progress line per node: node, step and budget use."""
    usage = update.get("usage")
    if not usage:
        return
    tokens = usage["input_tokens"] + usage["output_tokens"]
    err.print(
        f"[cyan]{node:>7}[/] step {usage['steps']:>3} | model calls "
        f"{usage['model_calls']}/{ctx.max_steps} | tool calls {usage['tool_calls']}/"
        f"{ctx.max_tool_calls} | tokens {tokens}/{ctx.max_tokens} | "
        f"${usage['cost_usd']:.4f}/${ctx.max_cost:g} | {usage['active_seconds']:.1f}s/"
        f"{ctx.max_seconds:g}s",
        soft_wrap=True,
    )
    warnings = update.get("budget_warnings") or []
    if isinstance(warnings, Overwrite):  # a new run resets its warnings
        warnings = warnings.value or []
    for warning in warnings:
        err.print(f"[yellow]warning:[/] budget {warning}")


def prompt_decisions(request: dict[str, Any], reviewer: str) -> dict[str, Any]:
    """Ask the person at the terminal to decide each action request."""
    decisions: list[dict[str, Any]] = []
    actions = request["action_requests"]
    for i, action in enumerate(actions):
        err.rule(f"approval {i + 1} of {len(actions)}")
        err.print(action.get("description", ""), soft_wrap=True)
        err.print_json(json.dumps(action["args"]))
        while True:
            choice = typer.prompt("[a]pprove, [e]dit, [r]eject or re[s]pond", default="a", err=True)
            kind = {"a": "approve", "e": "edit", "r": "reject", "s": "respond"}.get(
                choice.strip().lower()[:1]
            )
            if kind == "approve":
                decisions.append({"type": "approve"})
            elif kind == "edit":
                raw = typer.prompt("edited arguments (JSON)", default=json.dumps(action["args"]), err=True)
                decisions.append({"type": "edit", "edited_action": {"name": action["name"], "args": raw}})
            elif kind == "reject":
                message = typer.prompt("reason (optional)", default="", err=True)
                decisions.append({"type": "reject", "message": message or None})
            elif kind == "respond":
                message = typer.prompt("answer returned as the tool's result", err=True)
                decisions.append({"type": "respond", "message": message})
            else:
                err.print(f"choose one of {', '.join(ALL_DECISIONS)}")
                continue
            break
    return {"decisions": decisions, "reviewer": reviewer}


def default_reviewer() -> str:
    """Return the reviewer name used when --reviewer is not given."""
    return f"cli:{os.environ.get('USER') or os.environ.get('USERNAME') or 'unknown'}"


def report(outcome: RunOutcome, as_json: bool) -> NoReturn:
    """Print the outcome (JSON or human) and exit with its code."""
    if as_json:
        print(json.dumps(outcome.as_json(), default=str))
        raise typer.Exit(outcome.exit_code)
    u = outcome.usage
    if outcome.status == "awaiting_approval":
        names = ", ".join(a["name"] for a in (outcome.pending_approval or {}).get("action_requests", []))
        out.print(f"[yellow]awaiting approval[/] for {names} — thread {outcome.thread_id}")
        out.print(f"  decide with: warden resume {outcome.thread_id} --approve | --reject [MESSAGE] | --decisions FILE")
    else:
        colour = {"completed": "green", "error": "red"}.get(outcome.status, "yellow")
        out.print(
            f"[{colour}]{outcome.status}[/] ({outcome.halt_reason}: {outcome.halt_detail}) — "
            f"thread {outcome.thread_id}",
            soft_wrap=True,
        )
        if outcome.final_answer:
            out.print(f"\n{outcome.final_answer}\n", soft_wrap=True)
    out.print(
        f"  model calls {u['model_calls']}, tool calls {u['tool_calls']}, tokens "
        f"{u['input_tokens']}+{u['output_tokens']}, cost ${u['cost_usd']:.6f}, active "
        f"{u['active_seconds']:.2f}s"
    )
    for line in profile_lines(outcome.report):
        out.print(f"  {line}", soft_wrap=True)
    raise typer.Exit(outcome.exit_code)


def profile_lines(profile: dict[str, Any]) -> list[str]:
    """Describe where a run's time and money went, for the human report."""
    nodes = ", ".join(f"{name} {secs:.3f}s" for name, secs in profile["node_seconds"].items())
    lines = [
        f"time: model {profile['model_seconds']:.3f}s, tools {profile['tool_seconds']:.3f}s"
        + (f"; per node: {nodes}" if nodes else "")
    ]
    for name, m in profile["by_model"].items():
        lines.append(
            f"model {name}: {int(m['calls'])} call(s), tokens {int(m['input_tokens'])}+"
            f"{int(m['output_tokens'])}, cost ${m['cost_usd']:.6f}"
        )
    return lines


async def settle(
    warden: Warden,
    outcome: RunOutcome,
    *,
    approve_all: bool,
    no_input: bool,
    reviewer: str,
) -> RunOutcome:
    """Answer approvals as the flags say: approve all, ask at the terminal, or stop (exit 4)."""
    while outcome.status == "awaiting_approval" and outcome.pending_approval:
        count = len(outcome.pending_approval["action_requests"])
        if approve_all and any(outcome.pending_approval.get("in_doubt") or ()):
            # Approving a call that may already have taken effect is a human's call.
            err.print(
                "[yellow]warning:[/] a call is in doubt after a crash; --approve-all does not "
                f"approve it: decide with `warden resume {outcome.thread_id}`"
            )
            return outcome
        if approve_all:
            err.print(f"[yellow]warning:[/] --approve-all: approving {count} call(s) without review")
            decisions = {"decisions": [{"type": "approve"}] * count, "reviewer": f"{reviewer} (--approve-all)"}
        elif no_input or not interactive():
            return outcome
        else:
            decisions = await asyncio.to_thread(prompt_decisions, outcome.pending_approval, reviewer)
        try:
            outcome = await warden.resume(outcome.thread_id, decisions=decisions)
        except BadInput as exc:
            if approve_all:
                raise
            err.print(f"[red]refused:[/] {exc}")
    return outcome


@app.command()
def run(
    task: Annotated[str, typer.Argument(help="What the agent should do.")],
    model: Annotated[str | None, typer.Option(help="Model: openai:gpt-4o-mini, scripted:PATH, ...")] = None,
    thread_id: Annotated[str | None, typer.Option(help="Thread id (default: a new one).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    workspace: Annotated[Path | None, typer.Option(help="Directory the file tools are confined to.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Maximum model calls.")] = None,
    max_tool_calls: Annotated[int | None, typer.Option(help="Maximum tool calls.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Maximum input + output tokens.")] = None,
    max_cost: Annotated[float | None, typer.Option(help="Maximum cost in USD.")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Maximum active seconds.")] = None,
    approve_all: Annotated[bool, typer.Option("--approve-all", help="Approve every call (warns).")] = False,
    no_input: Annotated[bool, typer.Option("--no-input", help="Never prompt; exit 4 at an approval.")] = False,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint (OPENAI_BASE_URL).")] = None,
    reviewer: Annotated[str | None, typer.Option(help="Reviewer name for interactive approvals.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run a task."""
    if approve_all and no_input:
        fail("--approve-all and --no-input cannot be combined")
    settings, ctx, ws = _prepare(
        config, model, base_url, workspace,
        {
            "max_steps": max_steps,
            "max_tool_calls": max_tool_calls,
            "max_tokens": max_tokens,
            "max_cost": max_cost,
            "max_seconds": max_seconds,
        },
    )

    async def work() -> RunOutcome:
        progress = None if as_json else show_progress
        async with open_warden(settings, progress=progress) as warden:
            outcome = await warden.run(
                task,
                context=ctx,
                workspace=ws,
                thread_id=thread_id,
                config_path=config.resolve() if config is not None else None,
            )
            return await settle(
                warden, outcome, approve_all=approve_all, no_input=no_input,
                reviewer=reviewer or default_reviewer(),
            )

    report(guarded(work), as_json)


def _prepare(
    config: Path | None,
    model: str | None,
    base_url: str | None,
    workspace: Path | None,
    overrides: dict[str, Any],
) -> tuple[Settings, Context, Path]:
    """Merge defaults, environment, config file and flags into settings and a Context."""
    try:
        settings = load_settings()
        file = load_config_file(config)
    except WardenError as exc:
        fail(str(exc))
    base_url = base_url or file.base_url or settings.openai_base_url
    settings = settings.model_copy(update={"openai_base_url": base_url})
    chosen = model or file.model or settings.model
    if chosen is None:
        if settings.openai_api_key or base_url:
            chosen = "openai:gpt-4o-mini"
        else:
            fail(NO_MODEL_HELP)
    if chosen.startswith("scripted:"):
        chosen = "scripted:" + str(Path(chosen.removeprefix("scripted:")).expanduser().resolve())
    ws = (workspace or file.workspace or Path.cwd()).expanduser().resolve()
    if not ws.is_dir():
        fail(f"workspace {ws} is not a directory")
    try:
        # Built here so that bad tool entries and profiles naming unknown tools fail now,
        # with one line, before anything is stored.
        names = [spec.name for spec in build_toolset(ws, settings.data_dir, file)]
        policy = operator_policy(file, names) if config is not None else {}
        fields = policy | file.context_fields()
        fields |= {k: v for k, v in overrides.items() if v is not None}
        ctx = make_context(fields | {"model": chosen})
    except WardenError as exc:
        fail(str(exc))
    return settings, ctx, ws


def _read_decisions(source: str, reviewer: str | None) -> dict[str, Any]:
    """Read a decisions document from a file or stdin (`-`)."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read decisions from {source}: {exc.strerror or exc}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"decisions in {source} are not valid JSON: {exc.msg} at line {exc.lineno}")
    if isinstance(doc, list):
        doc = {"decisions": doc}
    if not isinstance(doc, dict):
        fail("decisions must be a JSON object with a 'decisions' list, or a list")
    if reviewer:
        doc["reviewer"] = reviewer
    doc.setdefault("reviewer", default_reviewer())
    return doc


@app.command()
def resume(
    thread_id: Annotated[str, typer.Argument(help="Thread to resume.")],
    approve: Annotated[bool, typer.Option("--approve", help="Approve every pending call.")] = False,
    reject: Annotated[
        str | None,
        typer.Option("--reject", is_flag=False, flag_value="", help="Reject every pending call, with an optional message."),
    ] = None,
    decisions: Annotated[str | None, typer.Option("--decisions", help="JSON decisions file, or - for stdin.")] = None,
    reviewer: Annotated[str | None, typer.Option(help="Who decides.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Answer a pending approval, or continue a run that stopped mid-way."""
    if sum([approve, reject is not None, decisions is not None]) > 1:
        fail("choose one of --approve, --reject and --decisions")
    settings = _settings()
    doc = _read_decisions(decisions, reviewer) if decisions is not None else None

    async def work() -> RunOutcome:
        async with open_warden(settings, progress=None if as_json else show_progress) as warden:
            payload = doc
            if approve or reject is not None:
                current = await warden.status(thread_id)
                if current.status != "awaiting_approval" or not current.pending_approval:
                    if current.status == "in_progress":
                        await warden.ensure_idle(thread_id)  # "busy" says more than that
                        # Idle now: say where it stands now, but never approve a request
                        # that came up since (nobody has seen it).
                        current = await warden.status(thread_id)
                    raise BadInput(f"thread {thread_id} is not awaiting approval (status: {current.status})")
                count = len(current.pending_approval["action_requests"])
                one = {"type": "approve"} if approve else {"type": "reject", "message": reject or None}
                payload = {"decisions": [one] * count, "reviewer": reviewer or default_reviewer()}
            outcome = await warden.resume(thread_id, decisions=payload)
            return await settle(
                warden, outcome, approve_all=False, no_input=as_json,
                reviewer=reviewer or default_reviewer(),
            )

    report(guarded(work), as_json)


def _settings() -> Settings:
    try:
        return load_settings()
    except WardenError as exc:
        fail(str(exc))


@app.command()
def status(
    thread_id: Annotated[str, typer.Argument(help="Thread to inspect.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show where a thread stands (exit code as for run: 0, 3, 4 or 1)."""
    settings = _settings()

    async def work() -> RunOutcome:
        async with open_warden(settings) as warden:
            return await warden.status(thread_id)

    report(guarded(work), as_json)


@app.command()
def cancel(
    thread_id: Annotated[str, typer.Argument(help="Thread to cancel.")],
    reason: Annotated[str, typer.Option(help="Why; recorded as the halt detail.")] = "cancelled by operator",
    reviewer: Annotated[str | None, typer.Option(help="Who cancels (default: cli:$USER).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="If the run is busy elsewhere, wait until it stops.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Cancel a thread (halt reason `cancelled`): now if idle, at its next node if running."""
    settings = _settings()
    who = reviewer or default_reviewer()

    async def work() -> RunOutcome:
        async with open_warden(settings) as warden:
            outcome = await warden.cancel(thread_id, reason=reason, requested_by=who)
            while wait and outcome.status in UNFINISHED:
                # The runner honours the request at its next node boundary; if it let go
                # (or died) without doing so, the thread is free and the cancel is direct.
                await asyncio.sleep(CANCEL_POLL_SECONDS)
                outcome = await warden.status(thread_id)
                if outcome.status in UNFINISHED and not await thread_is_busy(warden.pool, thread_id):
                    outcome = await warden.cancel(thread_id, reason=reason, requested_by=who)
            return outcome

    outcome = guarded(work)
    if outcome.status not in UNFINISHED:
        report(outcome, as_json)
    if as_json:
        print(json.dumps(outcome.as_json() | {"cancel_requested": True}, default=str))
    else:
        out.print(
            f"cancel requested for thread {thread_id}: another process is running it and stops "
            "it at its next node boundary"
        )


@app.command()
def history(
    thread_id: Annotated[str, typer.Argument(help="Thread to show.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a thread's messages, decisions and checkpoints."""
    settings = _settings()

    async def work() -> dict[str, Any]:
        async with open_warden(settings) as warden:
            return await warden.history(thread_id)

    data = guarded(work)
    if as_json:
        print(json.dumps(data, default=str))
        return
    out.print(f"thread {data['thread_id']}: {data['objective']}", soft_wrap=True)
    for m in data["messages"]:
        line = m["content"].replace("\n", " ")[:160]
        calls = "; ".join(f"{c['name']}({json.dumps(c['args'])})" for c in m.get("tool_calls", []))
        label = m["type"] if m["type"] != "tool" else f"tool:{m['name']}[{m['status']}]"
        out.print(f"  [bold]{label:>14}[/] {line} {calls}".rstrip(), soft_wrap=True)
    for a in data["approvals"]:
        out.print(f"  [magenta]decision[/] {a['decision']} {a['tool']} by {a['reviewer']} at {a['decided_at']}")
    out.print(f"  {len(data['checkpoints'])} checkpoints (oldest first; fork with `warden fork {thread_id} --at ID`)")
    for c in data["checkpoints"]:
        out.print(f"    {c['checkpoint_id']}  step {c['step']:>3}  {c['source'] or '':<6} {c['ts'] or ''}")


@app.command()
def threads(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many threads.")] = 50,
) -> None:
    """List recent threads."""
    settings = _settings()

    async def work() -> list[dict[str, Any]]:
        async with open_warden(settings) as warden:
            return await warden.threads(limit)

    rows = guarded(work)
    if as_json:
        print(json.dumps(rows, default=str))
        return
    for r in rows:
        out.print(
            f"{r['thread_id']}  {r['status']:<17} {r['halt_reason'] or '':<14} {r['updated_at'][:19]}  {r['task'][:60]}",
            soft_wrap=True,
        )


@app.command()
def demo() -> None:
    """Run the bundled scenario offline: plan, act, observe, approval, resume, loop halt."""
    from graph.demo import run_demo

    settings = _settings()
    raise typer.Exit(guarded(lambda: run_demo(settings, interactive=interactive())))


@db_app.command("migrate")
def db_migrate() -> None:
    """Create or update the checkpoint tables and Warden's own tables."""
    from checkpoints.migrations import migrate
    from checkpoints.pool import open_pool
    from checkpoints.saver import resolve_database_url

    settings = _settings()

    async def work() -> int:
        url, _ = resolve_database_url(settings.database_url, settings.data_dir)
        async with open_pool(url, prepare_threshold=settings.prepare_threshold) as pool:
            return await migrate(pool)

    applied = guarded(work)
    out.print(f"database migrated ({applied} Warden migration(s) applied)")


def optional_reject_message(argv: list[str]) -> list[str]:
    """Let `--reject` stand without a MESSAGE: Typer's parser has no optional option values."""
    fixed: list[str] = []
    for i, arg in enumerate(argv):
        fixed.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg == "--reject" and (following is None or (following.startswith("-") and following != "-")):
            fixed.append("")
    return fixed


def main() -> None:
    """Entry point of the `warden` script."""
    # The pool logs each failed connection attempt, and psycopg warns when it cannot close
    # a pipeline on a lost connection; the CLI reports one error line instead.
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)
    try:
        settings = load_settings()
    except WardenError:
        pass  # the command reports the bad setting as its one error line
    else:
        configure_logging(settings.log_format, settings.log_level)
    app(args=optional_reject_message(sys.argv[1:]))


from graph import cli_audit, cli_observe, cli_ops  # noqa: E402,F401  registers commands
