"""`warden report` and `warden metrics serve` over runs made by real `warden` processes.

Four CLI runs (two completed, one halted at max_steps, one left awaiting approval) on
this module's own database; the report's numbers are checked against the runs' own
JSON, the HTML page is rendered by headless Chromium, and the metrics server is
scraped over HTTP before and after a further run.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import call, turn
from tests.integration.test_cli import WARDEN, Cli, make_cli, one_line_error
from tests.support.net import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Cli, list[dict[str, Any]]]:
    """Make four runs through the CLI; return the CLI and each run's --json output."""
    root = tmp_path_factory.mktemp("report")
    ws = root / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("alpha\n")
    cli = make_cli(database_url, root / "data", ws)
    scripts = {
        "errors": [turn("a", call("read_file", path="notes.txt")),
                   turn("b", call("read_file", path="missing.txt")), turn("done", tokens=(200, 20))],
        "plain": [turn("just an answer", tokens=(50, 5))],
        "halts": [turn("1", call("list_files")), turn("2", call("list_files")), turn("never")],
        "asks": [turn("mail", call("send_email", to="o@example.com", subject="s", body="b"))],
    }  # fmt: skip
    codes = {"errors": 0, "plain": 0, "halts": 3, "asks": 4}
    results = []
    for name, turns in scripts.items():
        script = root / f"{name}.json"
        script.write_text(json.dumps({"model": "gpt-4o-mini", "turns": turns}))
        args = ["run", f"task {name}", "--model", f"scripted:{script}", "--workspace", str(ws)]
        if name == "halts":
            args += ["--max-steps", "2"]
        results.append(cli.ok_json(*args, "--no-input", code=codes[name]))
    return cli, results


def test_report_json_numbers_match_the_runs(runs: tuple[Cli, list[dict[str, Any]]]) -> None:
    cli, results = runs
    data = cli.ok_json("report", "--since", "1d", code=0)
    ended = [r for r in results if r["halt_reason"] is not None]
    assert (data["runs"], data["ended"]) == (4, 3)
    assert data["by_status"] == {"awaiting_approval": 1, "completed": 2, "halted": 1}
    assert data["success_rate"] == pytest.approx(2 / 3)
    assert data["halts_by_reason"] == {"completed": 2, "max_steps": 1}
    durations = [r["usage"]["active_seconds"] for r in ended]
    assert data["duration_seconds"]["p50"] == pytest.approx(statistics.median(durations))
    p95 = statistics.quantiles(durations, n=100, method="inclusive")[94]
    assert data["duration_seconds"]["p95"] == pytest.approx(p95)
    cost = sum(r["usage"]["cost_usd"] for r in results)
    assert cost > 0
    assert data["cost_usd"]["per_run"] == pytest.approx(cost / 4)
    assert data["tools"]["read_file"] == {"calls": 2, "errors": 1, "error_rate": 0.5}
    assert data["tools"]["list_files"]["errors"] == 0
    assert data["model_calls"] == sum(r["usage"]["model_calls"] for r in results)

    human = cli("report", "--since", "1d")
    assert human.code == 0, str(human)
    assert "success rate: 66.7%" in human.out
    assert "tool read_file: 2 call(s), 1 error(s) (50.0%)" in human.out


def test_report_since_excludes_older_runs_and_refuses_bad_windows(
    runs: tuple[Cli, list[dict[str, Any]]],
) -> None:
    cli, _ = runs
    with psycopg.connect(cli.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE warden_threads SET updated_at = now() - interval '3 days' "
            "WHERE task = 'task plain'"
        )
    try:
        assert cli.ok_json("report", "--since", "2d", code=0)["runs"] == 3
        assert cli.ok_json("report", "--since", "4d", code=0)["runs"] == 4
    finally:
        with psycopg.connect(cli.database_url, autocommit=True) as conn:
            conn.execute("UPDATE warden_threads SET updated_at = now() WHERE task = 'task plain'")
    one_line_error(cli("report", "--since", "7x"), 2, "--since")
    one_line_error(cli("report", "--since", "-1d"), 2, "--since")


def test_html_report_renders_in_headless_chromium(
    runs: tuple[Cli, list[dict[str, Any]]], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is installed by .ci/run"
    cli, _ = runs
    page = tmp_path / "report.html"
    data = cli.ok_json("report", "--since", "1d", "--html", str(page), code=0)
    source = page.read_text()
    assert "src=" not in source and "href=" not in source and "<script" not in source
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert '<b id="runs">4</b>' in dom
    assert '<b id="success-rate">66.7%</b>' in dom
    assert f'<b id="p50">{data["duration_seconds"]["p50"]:.3f}</b>' in dom
    assert f'<b id="cost-per-run">{data["cost_usd"]["per_run"]:.6f}</b>' in dom
    assert dom.count("<svg") == 3 and dom.count("<rect") >= 6  # statuses, halts, tool errors
    assert "<td>read_file</td><td>2</td><td>1</td><td>50.0%</td>" in dom


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def metrics_server(runs: tuple[Cli, list[dict[str, Any]]], tmp_path: Path) -> Iterator[str]:
    """Start `warden metrics serve` on a free port; yield its /metrics URL."""
    cli, _ = runs
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(WARDEN), "metrics", "serve", "--port", str(port), "--interval", "0.5"],
        env=cli.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        yield url
    finally:
        proc.kill()
        proc.wait()
        log.close()


# Last in the module: it adds a run to the module's database.
def test_metrics_serve_exports_stored_runs_and_refreshes(
    runs: tuple[Cli, list[dict[str, Any]]], metrics_server: str, write_script: Any
) -> None:
    cli, results = runs
    first = scrape(metrics_server)
    assert first[("warden_stored_runs", (("status", "completed"),))] == 2
    assert first[("warden_stored_halts", (("reason", "max_steps"),))] == 1
    assert first[("warden_stored_tool_errors", (("tool", "read_file"),))] == 1
    assert first[("warden_stored_tool_calls", (("tool", "read_file"),))] == 2
    assert first[("warden_stored_cost_usd", ())] == pytest.approx(
        sum(r["usage"]["cost_usd"] for r in results)
    )
    script = write_script([turn("another answer")], name="more.json")
    cli.ok_json("run", "one more", "--model", f"scripted:{script}", code=0)
    while scrape(metrics_server)[("warden_stored_runs", (("status", "completed"),))] == 2:
        time.sleep(0.2)  # the server refreshes from the database every 0.5 s
    assert scrape(metrics_server)[("warden_stored_runs", (("status", "completed"),))] == 3
