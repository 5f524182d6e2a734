"""The one way research tools download anything from a URL they did not choose themselves.

URLs come from search results and web pages, so they are hostile input. Every download:
- is http/https only, with a bounded number of redirects, each hop re-checked;
- resolves DNS itself and refuses private, loopback, link-local, multicast, reserved and
  cloud-metadata addresses (see `tools.netguard`), then connects to exactly the address it
  checked (the Host header and TLS SNI/certificate check keep the real host name), so a DNS
  answer that changes between check and connect (rebinding) cannot reach a forbidden address;
- runs under connect, read and total timeouts (the total one stops slow-drip servers);
- streams the body and stops at a byte cap without buffering what lies past it;
- checks the declared content type and the first bytes (magic) against what was asked for;
- shares per-host and global concurrency limits with every other download of the toolkit.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import re
import socket
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urljoin

import httpcore
import httpx

from core.errors import GroundworkError
from tools.netguard import AddressPolicy, IPAddress, normalize_host
from tools.settings import ToolSettings

FetchKind = Literal["image", "page", "json", "any"]
FetchErrorKind = Literal[
    "invalid_url", "blocked", "offline", "timeout", "too_large", "bad_content", "http", "network"
]
Resolver = Callable[[str, int], Awaitable[list[str]]]

_REDIRECTS = {301, 302, 303, 307, 308}


class FetchError(GroundworkError):
    """A download that was refused or failed; `kind` says which, the message says why."""

    def __init__(self, kind: FetchErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def retriable(self) -> bool:
        return self.kind in ("timeout", "network") or (
            self.kind == "http" and bool(re.search(r"HTTP (429|5\d\d)", str(self)))
        )


class BlockedAddressError(FetchError):
    def __init__(self, message: str) -> None:
        super().__init__("blocked", message)


@dataclass
class FetchResult:
    url: str
    final_url: str
    status: int
    content_type: str
    data: bytes
    truncated: bool = False
    redirects: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def text(self) -> str:
        """Decode with the declared charset, else a <meta charset>, else UTF-8 (lossy)."""
        charset = _charset(self.content_type) or _meta_charset(self.data[:4096]) or "utf-8"
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = "utf-8"
        return self.data.decode(charset, errors="replace")


async def system_resolver(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to, in the order the system prefers them."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(
            "offline",
            f"cannot resolve {host!r}: {exc.strerror or exc} - network unavailable (offline?)",
        ) from exc
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = str(sockaddr[0]).split("%", 1)[0]
        if addr not in seen:
            seen.append(addr)
    return seen


def _ip(addr: str) -> IPAddress:
    import ipaddress

    return ipaddress.ip_address(addr)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks and pins every TCP connection.

    Any forbidden address among a host's answers refuses the host: a resolver that mixes a
    public and a private answer is treated as an attack, not load balancing.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()
        self.connected: list[tuple[str, str, int]] = []  # (hostname, ip, port), for audits/tests

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        hostname = normalize_host(host)
        addrs = await self.resolver(hostname, port)
        if not addrs:
            raise FetchError("offline", f"{hostname!r} resolved to no address (offline?)")
        checked: list[str] = []
        for addr in addrs:
            try:
                ip = _ip(addr)
            except ValueError as exc:
                raise BlockedAddressError(f"resolver returned a non-address {addr!r}") from exc
            reason = self.policy.check(hostname, ip, port)
            if reason is not None:
                raise BlockedAddressError(reason)
            checked.append(str(ip))
        errors: list[str] = []
        for addr in checked:
            try:
                stream = await self.inner.connect_tcp(
                    addr,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                errors.append(f"{addr}: {exc!r}")
                continue
            self.connected.append((hostname, addr, port))
            return stream
        raise httpcore.ConnectError(f"could not connect to {hostname}:{port} ({'; '.join(errors)})")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the connection pool built on `GuardedBackend`.

    No proxies (trust_env off): with a proxy the checked address would be the proxy's, not
    the target's.
    """

    def __init__(self, backend: GuardedBackend, max_connections: int) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            http1=True,
            http2=False,
            network_backend=backend,
        )


# Everything httpx/httpcore raise for a URL, a connection, a protocol violation or a body
# they cannot decode. A hostile server can provoke any of them, so each becomes a FetchError.
_HTTP_ERRORS: tuple[type[Exception], ...] = (
    httpx.HTTPError,  # RequestError (transport, protocol, decoding, redirects), status errors
    httpx.InvalidURL,
    httpx.StreamError,
    httpx.CookieConflict,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ConnectionNotAvailable,
    httpcore.ProxyError,
)


def _error_kind(exc: Exception) -> FetchErrorKind:
    if isinstance(
        exc,
        httpx.InvalidURL
        | httpx.UnsupportedProtocol
        | httpx.LocalProtocolError
        | httpcore.UnsupportedProtocol
        | httpcore.LocalProtocolError,
    ):
        return "invalid_url"
    if isinstance(exc, httpx.DecodingError):
        return "bad_content"
    return "network"


def redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    """The next hop of a redirect, checked like any URL: a Location is written by the server,
    so `javascript:`, `data:`, `mailto:`, `about:`, a bracket that never closes or a port past
    65535 is a refused hop (FetchError), never an exception from a URL parser."""
    try:
        target = urljoin(str(current), location.strip())
    except ValueError as exc:  # urllib: "Invalid IPv6 URL" and friends
        raise FetchError(
            "invalid_url", f"{current}: redirect to an unparsable Location {location[:200]!r}"
        ) from exc
    return validate_url(target)


def validate_url(url: str) -> httpx.URL:
    """Parse and check a URL to fetch; FetchError("invalid_url") says what is wrong."""
    if not isinstance(url, str):
        raise FetchError("invalid_url", f"not a URL: {url!r}")
    try:
        parsed = httpx.URL(url)
        # `host` decodes IDNA on access and raises for a malformed A-label ("xn--"), and
        # `port` for an out-of-range one: read them here, once, under the same guard.
        scheme, host, port, userinfo = parsed.scheme, parsed.host, parsed.port, parsed.userinfo
    except (httpx.InvalidURL, TypeError, ValueError) as exc:  # UnicodeError is a ValueError
        raise FetchError("invalid_url", f"not a valid URL: {url[:300]!r} ({exc})") from exc
    if scheme not in ("http", "https"):
        raise FetchError("invalid_url", f"only http/https URLs are fetched, not {url[:300]!r}")
    if not host:
        raise FetchError("invalid_url", f"URL has no host: {url[:300]!r}")
    if port is not None and not 0 < port < 65536:
        raise FetchError("invalid_url", f"bad port in {url[:300]!r}")
    if userinfo:
        raise FetchError("invalid_url", f"URLs with credentials are not fetched: {url[:300]!r}")
    return parsed


# --- content sniffing -----------------------------------------------------------------------

_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_BINARY_MAGIC = (b"%PDF", b"PK\x03\x04", b"\x1f\x8b", b"\x89PNG", b"\xff\xd8\xff", b"GIF8")


def sniff_image(head: bytes) -> str | None:
    """Media type from the first bytes, for the raster formats the tools accept."""
    for magic, media in _IMAGE_MAGIC:
        if head.startswith(magic):
            return media
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _charset(content_type: str) -> str | None:
    m = re.search(r"charset=[\"']?([\w.:-]+)", content_type, re.I)
    return m.group(1) if m else None


def _meta_charset(head: bytes) -> str | None:
    m = re.search(rb"<meta[^>]+charset=[\"']?([\w.:-]+)", head, re.I)
    return m.group(1).decode("ascii", "replace") if m else None


def _check_declared(kind: FetchKind, content_type: str, url: str) -> None:
    media = _media_type(content_type)
    if kind == "image":
        ok = (
            not media
            or media.startswith("image/")
            or media in ("application/octet-stream", "binary/octet-stream")
        )
        if media == "image/svg+xml":
            ok = False
    elif kind == "page":
        ok = (
            not media
            or (media.startswith("text/") and media not in ("text/javascript", "text/css"))
            or media in ("application/xhtml+xml", "application/xml", "application/json")
        )
    elif kind == "json":
        ok = not media or media.endswith("json") or media in ("text/plain", "text/javascript")
    else:
        ok = True
    if not ok:
        raise FetchError("bad_content", f"{url} is {media!r}, not an acceptable {kind}")


def _check_magic(kind: FetchKind, head: bytes, content_type: str, url: str) -> None:
    if kind == "image":
        if sniff_image(head) is None:
            preview = head[:16]
            raise FetchError(
                "bad_content",
                f"{url} declared {_media_type(content_type) or 'no type'} but its bytes are "
                f"not PNG/JPEG/GIF/WebP (starts with {preview!r})",
            )
    elif kind in ("page", "json") and (head.startswith(_BINARY_MAGIC) or b"\x00" in head[:1024]):
        raise FetchError("bad_content", f"{url} is binary data, not a {kind}")


# --- the fetcher ------------------------------------------------------------------------------


class Fetcher(Protocol):
    """What the toolkit downloads through (`Toolkit(fetcher=...)`): `SafeFetcher`, or a
    recorder/replayer with the same call shape. Raises `FetchError` for every failure."""

    async def fetch(
        self,
        url: str,
        *,
        kind: FetchKind = "any",
        max_bytes: int | None = None,
        truncate: bool = False,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> FetchResult: ...

    async def aclose(self) -> None: ...


class SafeFetcher:
    """Downloads under the address policy, timeouts, byte caps and concurrency limits."""

    def __init__(
        self,
        settings: ToolSettings,
        *,
        extra_allow: Iterable[str] = (),
        resolver: Resolver = system_resolver,
        inner_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.settings = settings
        self.policy = AddressPolicy([*settings.allow_hosts, *extra_allow])
        self.backend = GuardedBackend(self.policy, resolver, inner_backend)
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(self.backend, max(settings.download_concurrency, 4)),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.read_timeout_s,
                pool=settings.fetch_timeout_s,
            ),
            headers={"User-Agent": settings.user_agent, "Accept-Encoding": "gzip, deflate"},
        )
        self._global = asyncio.Semaphore(settings.download_concurrency)
        self._per_host: dict[str, asyncio.Semaphore] = {}

    def _host_slot(self, host: str) -> asyncio.Semaphore:
        sem = self._per_host.get(host)
        if sem is None:
            sem = self._per_host[host] = asyncio.Semaphore(self.settings.per_host_concurrency)
        return sem

    async def fetch(
        self,
        url: str,
        *,
        kind: FetchKind = "any",
        max_bytes: int | None = None,
        truncate: bool = False,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> FetchResult:
        """GET `url`; raises `FetchError` (never anything else for network trouble).

        `truncate=True` keeps the first `max_bytes` of an oversized body (pages); otherwise an
        oversized body is refused (images: half an image is no image).
        """
        cap = max_bytes or (
            self.settings.max_image_bytes if kind == "image" else self.settings.max_page_bytes
        )
        total = timeout_s or self.settings.fetch_timeout_s
        start = time.perf_counter()
        try:
            async with asyncio.timeout(total):
                return await self._fetch(url, kind, cap, truncate, params, headers, start)
        except TimeoutError as exc:
            raise FetchError(
                "timeout", f"{url}: no complete response within {total:g}s (total timeout)"
            ) from exc
        except (httpx.TimeoutException, httpcore.TimeoutException) as exc:
            raise FetchError("timeout", f"{url}: {type(exc).__name__} ({exc})") from exc
        except _HTTP_ERRORS as exc:
            raise FetchError(_error_kind(exc), f"{url}: {type(exc).__name__}: {exc}") from exc

    async def _fetch(
        self,
        url: str,
        kind: FetchKind,
        cap: int,
        truncate: bool,
        params: dict[str, str] | None,
        headers: dict[str, str] | None,
        start: float,
    ) -> FetchResult:
        current = validate_url(url)
        if params:
            current = current.copy_merge_params(params)
        redirects: list[str] = []
        while True:
            host = normalize_host(current.host)
            async with self._global, self._host_slot(host):
                hop_headers = {"Accept-Encoding": "identity"} if kind == "image" else {}
                request = self._client.build_request(
                    "GET", current, headers={**hop_headers, **(headers or {})}
                )
                try:
                    response = await self._client.send(request, stream=True)
                except ValueError as exc:
                    # httpx parses a redirect's Location even when not following it, and a
                    # malformed IDNA host there raises UnicodeError (a ValueError) from idna.
                    raise FetchError(
                        "invalid_url",
                        f"{current}: unusable response ({type(exc).__name__}: {exc})",
                    ) from exc
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        if len(redirects) >= self.settings.max_redirects:
                            raise FetchError(
                                "http",
                                f"{url}: more than {self.settings.max_redirects} redirects",
                            )
                        current = redirect_target(current, response.headers["location"])
                        redirects.append(str(current))
                        continue
                    if response.status_code >= 400:
                        raise FetchError("http", f"{current}: HTTP {response.status_code}")
                    content_type = response.headers.get("content-type", "")
                    _check_declared(kind, content_type, str(current))
                    declared = response.headers.get("content-length", "")
                    if not truncate and declared.isdigit() and int(declared) > cap:
                        raise FetchError(
                            "too_large",
                            f"{current}: Content-Length {int(declared)} exceeds the {cap}-byte cap",
                        )
                    data, truncated = await self._read_capped(
                        response, kind, cap, truncate, str(current), content_type
                    )
                finally:
                    await response.aclose()
            return FetchResult(
                url=url,
                final_url=str(current),
                status=response.status_code,
                content_type=content_type,
                data=data,
                truncated=truncated,
                redirects=redirects,
                elapsed_s=time.perf_counter() - start,
            )

    @staticmethod
    async def _read_capped(
        response: httpx.Response,
        kind: FetchKind,
        cap: int,
        truncate: bool,
        url: str,
        content_type: str,
    ) -> tuple[bytes, bool]:
        buf = bytearray()
        checked = False
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            # wbits 47: zlib or gzip framing, auto-detected.
            inflater: zlib._Decompress | None = zlib.decompressobj(47)
        elif encoding in ("", "identity"):
            inflater = None
        else:
            raise FetchError("bad_content", f"{url}: unsupported Content-Encoding {encoding!r}")
        async for raw in response.aiter_raw():
            if inflater is None:
                chunk = raw
            else:
                # max_length bounds what one compressed chunk may expand to (zip bombs).
                try:
                    chunk = inflater.decompress(raw, cap + 1 - len(buf))
                except zlib.error as exc:
                    raise FetchError("bad_content", f"{url}: corrupt {encoding} body") from exc
                if inflater.unconsumed_tail:
                    chunk += b"\0"  # more output was pending: the cap is passed either way
            buf += chunk
            if not checked and len(buf) >= 16:
                _check_magic(kind, bytes(buf[:1024]), content_type, url)
                checked = True
            if len(buf) > cap:
                if truncate:
                    return bytes(buf[:cap]), True
                raise FetchError(
                    "too_large", f"{url}: body passed the {cap}-byte cap; download stopped"
                )
        if not checked:
            _check_magic(kind, bytes(buf), content_type, url)
        return bytes(buf), False

    async def aclose(self) -> None:
        await self._client.aclose()
