"""Tracing without network: a LangSmith endpoint and an OTLP receiver on 127.0.0.1.

Both receivers are real HTTP servers that record what the real clients post (the
LangSmith client's batch ingestion, the OpenTelemetry OTLP/HTTP exporter's protobuf).
Runs go through `Warden` (the runtime the CLI uses) on the real graph and Postgres.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langsmith import utils as ls_utils
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from graph.context import Context
from graph.models import make_model_factory
from graph.runtime import Warden
from graph.tracing import Tracing
from tests.conftest import call, turn

SECRET_TASK = "Read notes.txt and tell alice@example.com, token sk-abcdefghijklmnopqrstuvwx"
BATCH_CONFIG = {
    "use_multipart_endpoint": False,
    "scale_up_qsize_trigger": 1000,
    "scale_up_nthreads_limit": 1,
    "scale_down_nempty_trigger": 4,
    "size_limit": 100,
    "size_limit_bytes": 20_000_000,
}


@dataclass
class Receiver:
    """Requests recorded by a loopback HTTP server: (method, path, body)."""

    url: str
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A loopback HTTP server answering LangSmith's /info and recording every request."""
    recorded: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            recorded.append((self.command, self.path, self.rfile.read(length)))
            body = json.dumps(
                {"version": "0.0.0", "batch_ingest_config": BATCH_CONFIG}
                if self.path.endswith("/info") else {}
            ).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", recorded)
    server.shutdown()
    thread.join()


def warden_with(saver: Any, tmp_path: Path, tracing: Tracing) -> Warden:
    return Warden(saver, outbox=tmp_path / "outbox", model_factory=make_model_factory(), tracing=tracing)


def posted_runs(receiver: Receiver) -> dict[str, dict[str, Any]]:
    """Merge the LangSmith batches' posts and patches into one record per run id."""
    runs: dict[str, dict[str, Any]] = {}
    for method, path, body in receiver.requests:
        if method == "POST" and path.endswith("/runs/batch"):
            batch = json.loads(body)
            for run in [*batch.get("post", []), *batch.get("patch", [])]:
                runs.setdefault(run["id"], {}).update({k: v for k, v in run.items() if v is not None})
    return runs


async def test_langsmith_trace_tree_metadata_and_redaction(
    saver: Any, tmp_path: Path, workspace: Path, write_script: Any, receiver: Receiver
) -> None:
    script = write_script([turn("reading", call("read_file", path="notes.txt")), turn("Told alice@example.com.")])
    tracing = Tracing.configure(
        requested=True, api_key="test-key", endpoint=receiver.url, project="warden-tests",
        otel_endpoint=None,
    )  # fmt: skip
    warden = warden_with(saver, tmp_path, tracing)
    ctx = Context(model=f"scripted:{script}", max_steps=5, tenant="acme")
    outcome = await warden.run(SECRET_TASK, context=ctx, workspace=workspace)
    assert outcome.status == "completed"
    tracing.flush()

    raw = b"".join(body for _, _, body in receiver.requests)
    assert b"alice@example.com" not in raw and b"sk-abcdefghijklmnopqrstuvwx" not in raw
    assert b"[REDACTED:email]" in raw and b"[REDACTED:secret]" in raw

    runs = posted_runs(receiver)
    roots = [r for r in runs.values() if not r.get("parent_run_id")]
    assert len(roots) == 1
    [root] = roots
    meta = root["extra"]["metadata"]
    assert meta["warden_thread_id"] == outcome.thread_id
    assert meta["warden_run_id"] == root["id"]
    assert meta["warden_model"] == ctx.model
    assert meta["warden_tenant"] == "acme"
    assert meta["warden_budgets"]["max_steps"] == 5
    assert {"warden", "tenant:acme"} <= set(root["tags"])
    assert root["session_name"] == "warden-tests"
    children = [r for r in runs.values() if r.get("parent_run_id") == root["id"]]
    assert sorted(r["name"] for r in children) == ["act", "halt", "observe", "plan", "plan"]
    [halt] = [r for r in children if r["name"] == "halt"]
    [mark] = [r for r in runs.values() if r["name"] == "warden.halt"]
    assert mark["parent_run_id"] == halt["id"]
    assert mark["extra"]["metadata"]["warden_halt_reason"] == "completed"
    assert mark["extra"]["metadata"]["warden_cost_usd"] == pytest.approx(outcome.usage["cost_usd"])
    assert mark["extra"]["metadata"]["warden_thread_id"] == outcome.thread_id  # inherited
    assert "halt:completed" in mark["tags"]


async def test_requested_without_a_destination_stays_off_and_quiet(
    saver: Any, tmp_path: Path, workspace: Path, write_script: Any,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    ls_utils.get_env_var.cache_clear()
    assert ls_utils.tracing_is_enabled() is True  # what LangChain alone would do
    tracing = Tracing.configure(
        requested=True, api_key=None, endpoint=None, project=None, otel_endpoint=None
    )
    assert not tracing.langsmith and tracing.requested_offline
    script = write_script([turn("reading", call("read_file", path="notes.txt")), turn("done")])
    warden = warden_with(saver, tmp_path, tracing)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outcome = await warden.run(
            "read the notes", context=Context(model=f"scripted:{script}"), workspace=workspace
        )
    tracing.flush()
    assert outcome.status == "completed"
    assert [r.getMessage() for r in caplog.records] == []
    ls_utils.get_env_var.cache_clear()


async def test_otel_spans_per_run_and_node_over_otlp_http(
    saver: Any, tmp_path: Path, workspace: Path, write_script: Any, receiver: Receiver
) -> None:
    script = write_script([turn("reading", call("read_file", path="notes.txt")), turn("done")])
    tracing = Tracing.configure(
        requested=False, api_key=None, endpoint=None, project=None,
        otel_endpoint=f"{receiver.url}/v1/traces",
    )  # fmt: skip
    warden = warden_with(saver, tmp_path, tracing)
    outcome = await warden.run(
        "read the notes", context=Context(model=f"scripted:{script}"), workspace=workspace
    )
    tracing.flush()

    spans = []
    for method, path, body in receiver.requests:
        assert (method, path) == ("POST", "/v1/traces")
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    attrs = {s.span_id: {a.key: a.value.string_value for a in s.attributes} for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1
    [root] = roots
    assert attrs[root.span_id]["warden.thread_id"] == outcome.thread_id
    nodes = [s for s in spans if s.parent_span_id == root.span_id]
    assert sorted(s.name for s in nodes) == ["act", "halt", "observe", "plan", "plan"]
    assert {attrs[s.span_id]["langgraph.node"] for s in nodes} == {"plan", "act", "observe", "halt"}
    assert all(s.trace_id == root.trace_id for s in spans)
    assert sum(attrs[s.span_id]["warden.kind"] == "model" for s in spans) == 2
    assert sum(attrs[s.span_id]["warden.kind"] == "tool" for s in spans) == 1
