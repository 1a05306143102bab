"""`warden metrics serve` and `warden report`: observability over stored runs.

CLI runs are short separate processes, so nothing is left in memory to scrape after
they exit. `warden metrics serve` therefore exports gauges computed from the database
(every thread in `warden_threads`, its latest run), refreshed every `--interval`
seconds: a Prometheus scrape of it sees all CLI/embedded workers sharing that Postgres.
Live per-process counters (`warden_runs_total`, latencies, ...) are served by the
LangGraph server's `/metrics` (graph/http_app.py) and by any embedding app that
exposes prometheus_client's default registry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from graph.cli import _settings, app, fail, guarded, out
from graph.errors import BadInput
from graph.report_html import render_html
from graph.runstats import aggregate, load_summaries, parse_since
from graph.runtime import open_warden

metrics_app = typer.Typer(help="Prometheus metrics.", no_args_is_help=True)
app.add_typer(metrics_app, name="metrics")


class StoredRuns(Collector):
    """Prometheus gauges over the latest `aggregate` of stored runs."""

    def __init__(self) -> None:
        self.report: dict[str, Any] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield one gauge family per aggregate (nothing before the first refresh)."""
        r = self.report
        if r is None:
            return
        yield _labelled("warden_stored_runs", "Stored runs by status.", "status", r["by_status"])
        yield _labelled("warden_stored_halts", "Ended runs by halt reason.", "reason", r["halts_by_reason"])
        yield GaugeMetricFamily("warden_stored_model_calls", "Model calls.", value=r["model_calls"])
        yield _labelled("warden_stored_tokens", "Tokens by kind.", "kind", r["tokens"])
        yield GaugeMetricFamily("warden_stored_cost_usd", "Cost in USD.", value=r["cost_usd"]["total"])
        tools = r["tools"]
        yield _labelled("warden_stored_tool_calls", "Tool results by tool.", "tool",
                        {n: t["calls"] for n, t in tools.items()})
        yield _labelled("warden_stored_tool_errors", "Tool error results by tool.", "tool",
                        {n: t["errors"] for n, t in tools.items()})
        yield _labelled("warden_stored_decisions", "Human decisions by kind.", "decision", r["decisions"])
        quantiles = {
            q: v for q, v in (("0.5", r["duration_seconds"]["p50"]), ("0.95", r["duration_seconds"]["p95"]))
            if v is not None
        }
        yield _labelled("warden_stored_run_active_seconds", "Active seconds per ended run.",
                        "quantile", quantiles)


def _labelled(name: str, doc: str, label: str, values: dict[str, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([str(key)], float(value))
    return family


@metrics_app.command("serve")
def metrics_serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve /metrics on.")] = 9464,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between database refreshes.")] = 15.0,
    since: Annotated[str | None, typer.Option(help="Only runs updated within, e.g. 7d.")] = None,
) -> None:
    """Serve Prometheus gauges over the runs stored in the database."""
    settings = _settings()
    window = parse_window(since)
    collector = StoredRuns()
    registry = CollectorRegistry()
    registry.register(collector)

    async def work() -> None:
        async with open_warden(settings) as warden:
            collector.report = aggregate(await load_summaries(warden, since=window))
            try:
                start_http_server(port, addr=host, registry=registry)
            except OSError as exc:
                raise BadInput(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
            out.print(f"serving metrics on http://{host}:{port}/metrics", soft_wrap=True)
            while True:
                await asyncio.sleep(interval)
                collector.report = aggregate(await load_summaries(warden, since=window))

    try:
        guarded(work)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def parse_window(since: str | None) -> timedelta | None:
    """Parse `--since` for a command, exiting with a one-line error when it is bad."""
    try:
        return None if since is None else parse_since(since)
    except BadInput as exc:
        fail(str(exc))


@app.command("report")
def report_command(
    since: Annotated[str | None, typer.Option(help="Only runs updated within, e.g. 7d, 12h.")] = "7d",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML page.")] = None,
) -> None:
    """Report over many runs: success rate, halts, p50/p95 duration, cost, tool errors."""
    settings = _settings()
    window = parse_window(since)

    async def work() -> dict[str, Any]:
        async with open_warden(settings) as warden:
            return aggregate(await load_summaries(warden, since=window))

    data = guarded(work) | {"since": since}
    if html is not None:
        try:
            html.write_text(render_html(data), encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {html}: {exc.strerror or exc}", 1)
    if as_json:
        print(json.dumps(data, default=str))
        return
    for line in report_lines(data):
        out.print(line, soft_wrap=True)
    if html is not None:
        out.print(f"wrote {html}")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report_lines(data: dict[str, Any]) -> list[str]:
    """Describe the aggregate report for a person at the terminal."""
    rate = data["success_rate"]
    lines = [
        f"runs: {data['runs']} ({data['ended']} ended) since {data['since'] or 'the start'}",
        f"success rate: {'-' if rate is None else f'{rate:.1%}'}",
        "halts: " + (", ".join(f"{k} {v}" for k, v in data["halts_by_reason"].items()) or "none"),
        f"duration (active s): p50 {_num(data['duration_seconds']['p50'], '.3f')}, "
        f"p95 {_num(data['duration_seconds']['p95'], '.3f')}",
        f"cost: total ${data['cost_usd']['total']:.6f}, per run "
        f"${_num(data['cost_usd']['per_run'], '.6f')}",
    ]
    for name, t in data["tools"].items():
        lines.append(f"tool {name}: {t['calls']} call(s), {t['errors']} error(s) ({t['error_rate']:.1%})")
    return lines
