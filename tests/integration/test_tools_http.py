"""`http_fetch` against real HTTP servers on loopback: fetching, SSRF refusals, caps.

Refusals are proven on the server side: the target server records every request it
receives, and a refused fetch must leave that record empty. Addresses that are not on
loopback (10.x, 169.254.169.254) cannot be reached from the tests at all (the suite's
network guard raises on any such connect), so a `ToolRefused` there shows the refusal
came before any connection was attempted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from langchain_core.messages import ToolCall

from graph.context import Context, running_under
from nodes.act import execute
from tools.errors import ToolError, ToolRefused, TransientToolError
from tools.http import address_refusal, html_to_text, http_fetch_tool
from tools.registry import ToolSpec

Handler = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Server:
    """A real HTTP server on 127.0.0.1 with per-path handlers and a request log."""

    routes: dict[str, Handler]
    requests: list[dict[str, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return self.httpd.server_address[1]

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, Handler]], Server]]:
    started: list[ThreadingHTTPServer] = []

    def start(routes: dict[str, Handler]) -> Server:
        server = Server(routes)

        class RequestHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append({"path": self.path, "host": self.headers.get("Host", "")})
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    send(self, 404, "text/plain", b"not found")
                else:
                    route(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        httpd.daemon_threads = True
        server.httpd = httpd
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        started.append(httpd)
        return server

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def send(h: BaseHTTPRequestHandler, code: int, ctype: str, body: bytes, **headers: str) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        h.send_header(name.replace("_", "-"), value)
    h.end_headers()
    h.wfile.write(body)


def page(body: str, code: int = 200, ctype: str = "text/html; charset=utf-8") -> Handler:
    return lambda h: send(h, code, ctype, body.encode())


def redirect(location: str, code: int = 302) -> Handler:
    return lambda h: send(h, code, "text/plain", b"moved", Location=location)


HTML = """<!doctype html><html><head><title>Warden  test</title>
<style>body { color: red }</style><script>var stolen = "SCRIPT-SECRET";</script></head>
<body><h1>Hello</h1><p>First &amp; second<br>line</p><noscript>NOSCRIPT-TEXT</noscript>
<ul><li>one</li><li>two</li></ul></body></html>"""


async def fetch(spec: ToolSpec, url: str) -> str:
    return await spec.tool.ainvoke({"url": url})


def test_spec() -> None:
    spec = http_fetch_tool(timeout=3)
    assert (spec.name, spec.tier, spec.scopes) == ("http_fetch", "read", frozenset({"network"}))
    assert spec.timeout > 3
    assert spec.args_model is not None
    assert set(spec.args_model.model_json_schema()["properties"]) == {"url"}


async def test_fetches_html_as_text(serve: Callable[..., Server]) -> None:
    server = serve({"/": page(HTML)})
    spec = http_fetch_tool(allow_private=True)
    text = await fetch(spec, server.url("/"))
    assert text.startswith(f"URL: {server.url('/')}\nStatus: 200\nContent-Type: text/html\n\n")
    body = text.split("\n\n", 1)[1]
    assert body == "# Warden test\n\nHello\nFirst & second\nline\none\ntwo"
    assert "SCRIPT-SECRET" not in text and "color: red" not in text and "NOSCRIPT" not in text
    assert server.requests == [{"path": "/", "host": f"127.0.0.1:{server.port}"}]


async def test_plain_text_json_and_binary(serve: Callable[..., Server]) -> None:
    server = serve(
        {
            "/t": page("plain <b>not html</b>", ctype="text/plain"),
            "/j": page('{"a": 1}', ctype="application/json"),
            "/png": lambda h: send(h, 200, "image/png", b"\x89PNG\r\n\x00\x00"),
        }
    )
    spec = http_fetch_tool(allow_private=True)
    assert (await fetch(spec, server.url("/t"))).endswith("\n\nplain <b>not html</b>")
    assert (await fetch(spec, server.url("/j"))).endswith('\n\n{"a": 1}')
    with pytest.raises(ToolError, match="returned image/png; only text can be fetched"):
        await fetch(spec, server.url("/png"))


async def test_hostname_is_resolved_then_pinned(serve: Callable[..., Server]) -> None:
    """`localhost` is resolved once, the checked address is dialled, the name is kept."""
    server = serve({"/": page("hi", ctype="text/plain")})
    spec = http_fetch_tool(allow_private=True, allow_hosts=["localhost"])
    assert (await fetch(spec, server.url("/", host="localhost"))).endswith("\n\nhi")
    assert server.requests == [{"path": "/", "host": f"localhost:{server.port}"}]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "2130706433",
        "0x7f.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ],
)
async def test_loopback_is_refused_without_allow_private(
    serve: Callable[..., Server], host: str
) -> None:
    server = serve({"/": page("should never be served")})
    spec = http_fetch_tool()
    with pytest.raises(ToolRefused, match=r"resolves to .*(loopback|unspecified)"):
        await fetch(spec, server.url("/", host=host))
    assert server.requests == []


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
    ],
)
async def test_metadata_is_refused_always(url: str, allow_private: bool) -> None:
    spec = http_fetch_tool(allow_private=allow_private)
    with pytest.raises(ToolRefused, match="a cloud metadata address"):
        await fetch(spec, url)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.0.0.5/admin", "a private address"),
        ("http://192.168.1.1/", "a private address"),
        ("http://172.16.0.1/", "a private address"),
        ("http://169.254.1.1/", "a link-local address"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://240.0.0.1/", "a reserved address"),
        ("http://100.64.0.1/", "not a public address"),
        ("http://[fe80::1]/", "a link-local address"),
        ("http://[fc00::1]/", "a private address"),
    ],
)
async def test_non_public_addresses_are_refused_before_connecting(url: str, kind: str) -> None:
    # Any connect to these would raise the suite's RuntimeError instead of ToolRefused.
    with pytest.raises(ToolRefused, match=kind):
        await fetch(http_fetch_tool(), url)


def test_address_rules() -> None:
    import ipaddress

    public = ipaddress.ip_address("93.184.216.34")
    assert address_refusal(public, allow_private=False) is None
    assert address_refusal(ipaddress.ip_address("2606:4700::1111"), allow_private=False) is None
    assert address_refusal(ipaddress.ip_address("10.1.2.3"), allow_private=True) is None
    assert address_refusal(ipaddress.ip_address("2002:7f00:1::"), allow_private=False) == (
        "a loopback address"
    )


async def test_host_allowlist(serve: Callable[..., Server]) -> None:
    server = serve({"/": page("ok", ctype="text/plain")})
    only_example = http_fetch_tool(allow_private=True, allow_hosts=["example.com", "*.example.org"])
    with pytest.raises(ToolRefused, match="not in this tool's allowlist"):
        await fetch(only_example, server.url("/"))
    assert server.requests == []
    wildcard = http_fetch_tool(allow_private=True, allow_hosts=["*.0.0.1", "127.0.0.1"])
    assert (await fetch(wildcard, server.url("/"))).endswith("\n\nok")


async def test_run_egress_allowlist_narrows_the_tool(serve: Callable[..., Server]) -> None:
    server = serve({"/": page("ok", ctype="text/plain")})
    spec = http_fetch_tool(allow_private=True)
    with running_under(Context(egress_allowlist=("api.example.com",))):
        with pytest.raises(ToolRefused, match="not in the run's egress allowlist"):
            await fetch(spec, server.url("/"))
    with running_under(Context(egress_allowlist=())):
        with pytest.raises(ToolRefused, match=r"egress allowlist \(empty\)"):
            await fetch(spec, server.url("/"))
    assert server.requests == []
    with running_under(Context(egress_allowlist=("127.0.0.1",))):
        assert (await fetch(spec, server.url("/"))).endswith("\n\nok")
    assert len(server.requests) == 1


async def test_scheme_and_credentials_are_refused() -> None:
    spec = http_fetch_tool(allow_private=True)
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/x"):
        with pytest.raises(ToolRefused, match="only http and https"):
            await fetch(spec, url)
    with pytest.raises(ToolRefused, match="credentials"):
        await fetch(spec, "http://user:pw@127.0.0.1:1/")


async def test_redirects_are_followed_and_rechecked(serve: Callable[..., Server]) -> None:
    target = serve({"/": page("target reached", ctype="text/plain")})
    origin = serve(
        {
            "/ok": redirect("/final"),
            "/final": page("final page", ctype="text/plain"),
            "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-other": redirect(target.url("/", host="localhost")),
            "/loop": redirect("/loop", code=307),
        }
    )
    spec = http_fetch_tool(allow_private=True, allow_hosts=["127.0.0.1"])
    text = await fetch(spec, origin.url("/ok"))
    assert text.startswith(f"URL: {origin.url('/final')}\n") and text.endswith("final page")

    with pytest.raises(ToolRefused, match=r"redirect from .* refused: .*not in this tool's"):
        await fetch(spec, origin.url("/to-metadata"))
    # Without a host allowlist the address check alone stops it, allow_private or not.
    with pytest.raises(ToolRefused, match=r"redirect from .* refused: .*cloud metadata"):
        await fetch(http_fetch_tool(allow_private=True), origin.url("/to-metadata"))
    with pytest.raises(ToolRefused, match=r"redirect from .* refused: host 'localhost' is not"):
        await fetch(spec, origin.url("/to-other"))
    assert target.requests == []

    with pytest.raises(ToolError, match="too many redirects"):
        await fetch(spec, origin.url("/loop"))
    assert [r["path"] for r in origin.requests].count("/loop") == 6


async def test_oversized_responses_are_cut_off(serve: Callable[..., Server]) -> None:
    def declared(h: BaseHTTPRequestHandler) -> None:
        send(h, 200, "text/plain", b"x" * 5000)

    server = serve({"/declared": declared})

    def streamed(h: BaseHTTPRequestHandler) -> None:
        # No Content-Length: the body runs until the connection closes (HTTP/1.0 style).
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Connection", "close")
        h.end_headers()
        sent = 0
        try:
            for _ in range(2000):  # up to 128 MiB
                h.wfile.write(b"y" * 65536)
                sent += 65536
            server.events.append("finished")
        except OSError:
            server.events.append(f"aborted after {sent}")

    server.routes["/streamed"] = streamed
    spec = http_fetch_tool(allow_private=True, max_bytes=1000, timeout=5)
    with pytest.raises(ToolRefused, match="5000 bytes, larger than the 1000-byte limit"):
        await fetch(spec, server.url("/declared"))
    started = time.perf_counter()
    with pytest.raises(ToolRefused, match="larger than the 1000-byte limit; stopped reading"):
        await fetch(spec, server.url("/streamed"))
    assert time.perf_counter() - started < 3
    for _ in range(100):
        if server.events:
            break
        await asyncio.sleep(0.05)
    assert server.events and server.events[0].startswith("aborted")


async def test_slow_responses_hit_the_time_cap(serve: Callable[..., Server]) -> None:
    def slow_headers(h: BaseHTTPRequestHandler) -> None:
        time.sleep(2)
        send(h, 200, "text/plain", b"late")

    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.end_headers()
        try:
            for _ in range(20):
                h.wfile.write(b"z")
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    server = serve({"/slow": slow_headers, "/trickle": trickle})
    spec = http_fetch_tool(allow_private=True, timeout=0.5)
    for path in ("/slow", "/trickle"):
        started = time.perf_counter()
        with pytest.raises(TransientToolError, match=r"took longer than 0.5s|timed out"):
            await fetch(spec, server.url(path))
        assert time.perf_counter() - started < 1.5


async def test_status_codes(serve: Callable[..., Server]) -> None:
    server = serve(
        {
            "/500": page("boom", code=500, ctype="text/plain"),
            "/503": page("busy", code=503, ctype="text/plain"),
            "/429": page("slow down", code=429, ctype="text/plain"),
            "/403": page("no", code=403, ctype="text/plain"),
        }
    )
    spec = http_fetch_tool(allow_private=True)
    for path in ("/500", "/503", "/429"):
        with pytest.raises(TransientToolError, match=f"answered {path[1:]}"):
            await fetch(spec, server.url(path))
    for path in ("/403", "/missing"):
        with pytest.raises(ToolError) as err:
            await fetch(spec, server.url(path))
        assert not isinstance(err.value, TransientToolError)
    assert "answered 404 Not Found" in str(err.value)


async def test_refused_server_is_transient() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientToolError, match="cannot connect"):
        await fetch(http_fetch_tool(allow_private=True), f"http://127.0.0.1:{port}/")


async def test_through_act(serve: Callable[..., Server]) -> None:
    server = serve({"/": page("never")})
    spec = http_fetch_tool()
    call = ToolCall(name="http_fetch", args={}, id="h1")
    refused = await execute(spec, call, {"url": server.url("/")}, 10)
    assert refused.status == "error"
    assert refused.text.startswith("http_fetch failed: host '127.0.0.1' resolves to 127.0.0.1")
    extra = await execute(spec, call, {"url": server.url("/"), "method": "POST"}, 10)
    assert extra.response_metadata["warden"]["error"] == "invalid_arguments"
    long_url = await execute(spec, call, {"url": "http://a.example/" + "x" * 3000}, 10)
    assert long_url.response_metadata["warden"]["error"] == "invalid_arguments"
    assert server.requests == []


def test_html_to_text_ignores_unclosed_head() -> None:
    assert html_to_text("<html><head><title>T</title><body><p>kept</p>") == "# T\n\nkept"


async def test_ledgered_calls_send_their_idempotency_key(serve: Callable[..., Server]) -> None:
    from tools.idempotency import idempotency_key

    def echo(h: BaseHTTPRequestHandler) -> None:
        send(h, 200, "text/plain", (h.headers.get("Idempotency-Key") or "none").encode())

    server = serve({"/k": echo})
    spec = http_fetch_tool(allow_private=True)
    with idempotency_key("thread-1:call_1_1"):
        assert (await fetch(spec, server.url("/k"))).endswith("\n\nthread-1:call_1_1")
    assert (await fetch(spec, server.url("/k"))).endswith("\n\nnone")
