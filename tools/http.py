"""`http_fetch`: an HTTP GET that cannot be turned against the network it runs in (SSRF).

Every hop (the first request and each redirect) goes through the same checks:

1. scheme `http`/`https` only, no credentials in the URL;
2. the host must match the tool's `allow_hosts` (when given) and the run's egress
   allowlist (`Context.egress_allowlist`, when set): both must allow it;
3. the host is resolved (getaddrinfo, in a thread) and EVERY address it resolves to must
   be public: loopback, private, link-local, multicast, reserved, unspecified and other
   non-global addresses are refused unless `allow_private`; cloud metadata endpoints are
   refused always;
4. the connection is pinned to an address checked in step 3 (see `_pinned_request`), so
   a second DNS answer (DNS rebinding) cannot send the request somewhere else.

Redirects are followed by hand (at most `MAX_REDIRECTS`), responses are streamed and cut
off at `max_bytes`, the whole fetch (DNS, connects, redirects, body) has one deadline,
and HTML is reduced to text with the standard library's parser (scripts and styles
dropped). Proxies from the environment are ignored (`trust_env=False`): a proxy would
make the address checks meaningless.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
from collections.abc import Iterable
from html.parser import HTMLParser

import httpx
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from graph.context import current_run_context
from tools.errors import ToolError, ToolRefused, TransientToolError
from tools.idempotency import current_idempotency_key
from tools.registry import ToolSpec

MAX_REDIRECTS = 5
MAX_URL_CHARS = 2048
DEFAULT_MAX_BYTES = 1024 * 1024
USER_AGENT = "warden-http-fetch/0.1"
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Refused even with allow_private: these hand out cloud credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
TEXT_TYPES = (
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-ndjson",
    "application/rss+xml",
    "application/atom+xml",
)
HTML_TYPES = ("text/html", "application/xhtml+xml")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class HttpFetchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=8,
        max_length=MAX_URL_CHARS,
        description="Absolute http:// or https:// URL to GET.",
    )


# --- address and host checks -------------------------------------------------------


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries (mapped, 6to4, Teredo), if any."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return None


def address_refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Return why a connection to `ip` is refused, or None when it is allowed."""
    # An IPv4 address carried inside IPv6 is judged as the IPv4 address it reaches.
    candidates = [c for c in (_embedded_v4(ip), ip) if c is not None]
    if any(c in METADATA_ADDRESSES for c in candidates):
        return "a cloud metadata address"
    if allow_private:
        return None
    for candidate in candidates:
        # Most specific first: 127.0.0.1 is also "private" to the ipaddress module.
        for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
            if getattr(candidate, f"is_{kind}"):
                return f"a {kind.replace('_', '-')} address"
        if not candidate.is_global:
            return "not a public address"
    return None


def _norm_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Return whether `host` matches one of `patterns` (exact, or `*.example.com`)."""
    host = _norm_host(host)
    for pattern in patterns:
        pattern = _norm_host(pattern)
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Resolve `host` to its addresses (getaddrinfo in a thread; literals are returned as is)."""
    try:
        return [ipaddress.ip_address(_norm_host(host))]
    except ValueError:
        pass
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise TransientToolError(f"DNS lookup for {host!r} failed temporarily") from None
        raise ToolError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise ToolError(f"host {host!r} has no addresses")
    return addresses


class _Target:
    """One checked hop: the URL as asked for and the addresses it may connect to."""

    def __init__(self, url: httpx.URL, host: str, addresses: list[IPAddress]) -> None:
        self.url = url
        self.host = host
        self.addresses = addresses


# --- HTML to text ------------------------------------------------------------------


class _TextExtractor(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "iframe"})
    BLOCK = frozenset(
        "address article aside blockquote br dd div dl dt fieldset figcaption figure footer "
        "form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tr ul".split()
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.skipping = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Return the readable text of an HTML document (title first; scripts, styles dropped)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    body = "\n".join(line for line in lines if line)
    title = " ".join("".join(parser.title).split())
    return f"# {title}\n\n{body}" if title else body


# --- the fetch ---------------------------------------------------------------------


class Fetcher:
    """The checks and the request loop behind `http_fetch`."""

    def __init__(
        self,
        *,
        allow_hosts: Iterable[str] | None,
        allow_private: bool,
        max_bytes: int,
        timeout: float,
    ) -> None:
        self.allow_hosts = None if allow_hosts is None else tuple(allow_hosts)
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def check(self, raw: str | httpx.URL) -> _Target:
        """Check one hop's URL, host and resolved addresses; refuse before any connection."""
        try:
            url = raw if isinstance(raw, httpx.URL) else httpx.URL(raw)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ToolRefused(f"invalid URL {str(raw)!r}: {exc}") from None
        if url.scheme not in ("http", "https"):
            raise ToolRefused(f"only http and https URLs are allowed, not {url.scheme!r}")
        if url.userinfo:
            raise ToolRefused("URLs with credentials (user:password@) are not allowed")
        host = url.raw_host.decode("ascii")
        if not host:
            raise ToolRefused(f"URL {str(url)!r} has no host")
        if self.allow_hosts is not None and not host_allowed(host, self.allow_hosts):
            raise ToolRefused(
                f"host {host!r} is not in this tool's allowlist "
                f"({', '.join(self.allow_hosts) or 'empty'})"
            )
        run = current_run_context()
        egress = run.egress_allowlist if run is not None else None
        if egress is not None and not host_allowed(host, egress):
            raise ToolRefused(
                f"host {host!r} is not in the run's egress allowlist ({', '.join(egress) or 'empty'})"
            )
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await resolve(host, port)
        for ip in addresses:
            reason = address_refusal(ip, allow_private=self.allow_private)
            if reason is not None:
                raise ToolRefused(f"host {host!r} resolves to {ip}, {reason}; refused")
        return _Target(url, host, addresses)

    @staticmethod
    def _pinned_request(client: httpx.AsyncClient, target: _Target, ip: IPAddress) -> httpx.Request:
        """Build a request that connects to `ip` while still speaking to `target.host`.

        DNS-rebinding defence: the URL's host is replaced by the address that passed the
        checks, so httpx does not resolve the name again (a second lookup could answer
        127.0.0.1). The original name travels in the Host header for virtual hosting and,
        for https, as the TLS SNI name (httpcore's `sni_hostname` extension), which is
        also the name the certificate is verified against.
        """
        url = target.url
        default_port = 443 if url.scheme == "https" else 80
        host_header = f"[{target.host}]" if ":" in target.host else target.host
        if url.port not in (None, default_port):
            host_header = f"{host_header}:{url.port}"
        extensions = {}
        literal = _is_literal(target.host)
        if url.scheme == "https" and not literal:
            extensions["sni_hostname"] = target.host
        headers = {
            "Host": host_header,
            "User-Agent": USER_AGENT,
            "Accept": "text/html,text/plain,application/json;q=0.9,*/*;q=0.5",
            # Uncompressed, so the size cap counts what arrives (no decompression bombs).
            "Accept-Encoding": "identity",
        }
        key = current_idempotency_key()
        if key is not None:
            # The same key on every repetition of one tool call: servers that honour the
            # header (the IETF httpapi draft) answer a repeat without acting twice.
            headers["Idempotency-Key"] = key
        return client.build_request(
            "GET",
            url.copy_with(host=str(ip), fragment=None),
            headers=headers,
            extensions=extensions,
        )

    async def _open(self, client: httpx.AsyncClient, target: _Target) -> httpx.Response:
        """Connect to the first checked address that answers and send the request."""
        last: Exception | None = None
        for ip in target.addresses:
            request = self._pinned_request(client, target, ip)
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last = exc
        raise TransientToolError(f"cannot connect to {target.host!r}: {last}")

    async def _body(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise ToolRefused(
                f"response is {declared} bytes, larger than the {self.max_bytes}-byte limit"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise ToolRefused(
                    f"response is larger than the {self.max_bytes}-byte limit; stopped reading"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def fetch(self, url: str) -> str:
        """GET `url` with every check, within the deadline; return the text it holds."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise TransientToolError(
                f"fetching {url!r} took longer than {self.timeout:g}s; gave up"
            ) from None
        except httpx.TimeoutException as exc:
            raise TransientToolError(f"fetching {url!r} timed out: {exc!r}") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise TransientToolError(f"network error fetching {url!r}: {exc!r}") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"HTTP error fetching {url!r}: {exc!r}") from None

    async def _fetch(self, raw: str) -> str:
        target = await self.check(raw)
        async with httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self.timeout),
        ) as client:
            for hop in range(MAX_REDIRECTS + 1):
                response = await self._open(client, target)
                try:
                    location = response.headers.get("location")
                    if response.status_code in REDIRECT_CODES and location:
                        if hop == MAX_REDIRECTS:
                            raise ToolError(f"too many redirects (more than {MAX_REDIRECTS})")
                        try:
                            following = target.url.join(location)
                        except httpx.InvalidURL as exc:
                            raise ToolError(f"invalid redirect to {location!r}: {exc}") from None
                        try:
                            target = await self.check(following)
                        except ToolRefused as exc:
                            raise ToolRefused(
                                f"redirect from {str(target.url)!r} refused: {exc}"
                            ) from None
                        continue
                    self._raise_for_status(response, target)
                    body = await self._body(response)
                finally:
                    await response.aclose()
                return self._render(response, target, body)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _raise_for_status(response: httpx.Response, target: _Target) -> None:
        code = response.status_code
        what = f"{str(target.url)!r} answered {code} {response.reason_phrase}"
        if code >= 500 or code in (408, 429):
            raise TransientToolError(what)
        if code >= 400:
            raise ToolError(what)

    @staticmethod
    def _render(response: httpx.Response, target: _Target, body: bytes) -> str:
        ctype = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        is_html = ctype in HTML_TYPES
        is_text = (
            is_html
            or ctype.startswith("text/")
            or ctype in TEXT_TYPES
            or ctype.endswith(("+json", "+xml"))
            or (not ctype and b"\x00" not in body)
        )
        if not is_text:
            raise ToolError(
                f"{str(target.url)!r} returned {ctype or 'binary data'}; only text can be fetched"
            )
        try:
            text = body.decode(response.charset_encoding or "utf-8", errors="replace")
        except LookupError:
            text = body.decode("utf-8", errors="replace")
        if is_html:
            text = html_to_text(text)
        return (
            f"URL: {target.url}\nStatus: {response.status_code}\n"
            f"Content-Type: {ctype or 'unknown'}\n\n{text}"
        )


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(_norm_host(host))
    except ValueError:
        return False
    return True


def http_fetch_tool(
    *,
    allow_hosts: Iterable[str] | None = None,
    allow_private: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = 10.0,
) -> ToolSpec:
    """Return the `http_fetch` tool (tier read, scope `network`)."""
    if max_bytes <= 0 or timeout <= 0:
        raise ValueError("max_bytes and timeout must be > 0")
    fetcher = Fetcher(
        allow_hosts=allow_hosts, allow_private=allow_private, max_bytes=max_bytes, timeout=timeout
    )

    async def http_fetch(url: str) -> str:
        """Fetch a web page or text document with HTTP GET and return its text.

        Only allowed public hosts can be reached; HTML is returned as plain text.
        """
        return await fetcher.fetch(url)

    return ToolSpec(
        tool=StructuredTool.from_function(
            coroutine=http_fetch, args_schema=HttpFetchArgs, description=inspect.getdoc(http_fetch)
        ),
        tier="read",
        scopes=frozenset({"network"}),
        # A little longer than the fetch's own deadline, so its clearer error wins.
        timeout=timeout + 2.0,
        idempotent=True,
    )
