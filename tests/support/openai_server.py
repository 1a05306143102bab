"""A real OpenAI-compatible HTTP server on 127.0.0.1, with scriptable failures.

It answers POST /v1/chat/completions as OpenAI does (non-streaming), the way vLLM,
llama.cpp or Ollama expose it. By default it holds a conversation: a `read_file` tool
call until a tool result is sent, then a final answer, each with usage. Tests change
that per request:

- `server.script(Reply(...), ...)` queues replies served first, in order, one per
  request: any status code, extra headers (`Retry-After`), a delay before answering
  (slow responses, client timeouts), a JSON body or raw bytes (HTML error pages,
  malformed tool-call JSON).
- `server.responder` answers whatever the queue does not (None falls through to the
  default conversation); it sees each request, so it can route by model.

Every request is recorded with a server-side monotonic timestamp taken on arrival, so
tests can check how long a client waited between attempts.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOOL_CALL_USAGE = {"prompt_tokens": 321, "completion_tokens": 18, "total_tokens": 339}
ANSWER_USAGE = {"prompt_tokens": 402, "completion_tokens": 27, "total_tokens": 429}
ANSWER = "The notes list alpha and beta."


def completion(
    message: dict[str, Any],
    finish_reason: str,
    usage: dict[str, int],
    model: str = "gpt-4o-mini",
) -> dict[str, Any]:
    """Build a chat.completion object as OpenAI returns it."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": 1_750_000_000,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_warden_test",
    }


def tool_call_completion(
    name: str, arguments: str, *, call_id: str = "call_x", model: str = "gpt-4o-mini"
) -> dict[str, Any]:
    """A completion that calls one tool; `arguments` is the raw JSON text, valid or not."""
    return completion(
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        "tool_calls",
        TOOL_CALL_USAGE,
        model,
    )


def answer_completion(text: str = ANSWER, *, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """A completion with a final answer and no tool calls."""
    return completion(
        {"role": "assistant", "content": text, "refusal": None, "annotations": []},
        "stop",
        ANSWER_USAGE,
        model,
    )


TOOL_CALL_RESPONSE = tool_call_completion("read_file", '{"path": "notes.txt"}')
ANSWER_RESPONSE = answer_completion()


def error_body(message: str, kind: str = "server_error") -> dict[str, Any]:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


@dataclass
class Reply:
    """One scripted answer: status, headers, an optional delay, and a JSON or raw body."""

    status: int = 200
    body: Any = None
    """JSON body; None with status 200 means the default conversation reply."""
    raw: bytes | None = None
    """Exact body bytes; wins over `body` (content type from `headers`, else JSON)."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering."""


@dataclass
class Received:
    """One request as the server saw it."""

    path: str
    body: dict[str, Any]
    auth: str | None
    at: float
    """Server-side `time.monotonic()` when the request arrived."""


@dataclass
class FakeOpenAI:
    """The running server: its port, every request it received, and what it will answer."""

    port: int
    received: list[Received] = field(default_factory=list)
    queue: deque[Reply] = field(default_factory=deque)
    responder: Callable[[dict[str, Any]], Reply | None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Request bodies, in arrival order."""
        return [r.body for r in self.received]

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.received]

    @property
    def auth(self) -> list[str | None]:
        return [r.auth for r in self.received]

    @property
    def times(self) -> list[float]:
        """Server-side arrival times."""
        return [r.at for r in self.received]

    @property
    def models(self) -> list[str | None]:
        """The `model` each request asked for."""
        return [r.body.get("model") for r in self.received]

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self.queue.extend(replies)

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self.queue:
                return self.queue.popleft()
        if self.responder is not None:
            chosen = self.responder(body)
            if chosen is not None:
                return chosen
        return Reply()


def conversation_reply(body: dict[str, Any]) -> dict[str, Any]:
    """The default: a tool call until a tool result is in the conversation, then an answer."""
    answered = any(m.get("role") == "tool" for m in body.get("messages", []))
    return ANSWER_RESPONSE if answered else TOOL_CALL_RESPONSE


@contextmanager
def serve_openai() -> Iterator[FakeOpenAI]:
    """Run the server on a free loopback port for the duration of the block."""
    state = FakeOpenAI(port=0)
    stopping = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            if not any(k.lower() == "content-type" for k in headers):
                self.send_header("Content-Type", "application/json")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:12]}")
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            arrived = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with state._lock:
                state.received.append(
                    Received(self.path, body, self.headers.get("Authorization"), arrived)
                )
            if self.path != "/v1/chat/completions":
                data = json.dumps(error_body(f"no route {self.path}", "invalid_request_error"))
                self._send(404, data.encode(), {})
                return
            reply = state.next_reply(body)
            if reply.delay and stopping.wait(reply.delay):
                return  # shutting down
            if reply.raw is not None:
                data = reply.raw
            elif reply.body is not None:
                data = json.dumps(reply.body).encode()
            elif reply.status == 200:
                data = json.dumps(conversation_reply(body)).encode()
            else:
                data = json.dumps(error_body(f"scripted status {reply.status}")).encode()
            try:
                self._send(reply.status, data, reply.headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): that is what the test wanted

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
