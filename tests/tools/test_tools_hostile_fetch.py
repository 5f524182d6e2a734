"""Hostile servers and URLs are tool failures, never exceptions (issue 9).

Real loopback servers send redirects whose Location no URL parser should be trusted with; an
injected transport raises every exception class httpx and httpcore define. Whatever happens,
the fetcher raises only FetchError, a tool answers an Observation, and in image_search one bad
candidate never costs the good ones.
"""

from __future__ import annotations

import inspect
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from core.artifacts import ArtifactStore
from core.errors import GroundworkError
from tests.tools.conftest import FakeDDGS, LoopServer, png, tool_settings
from tools.fetch import FetchError, SafeFetcher
from tools.observations import ImageHit, ImageRegistry
from tools.toolkit import Toolkit

# Location values as raw header bytes: other schemes, unparsable hosts and ports, bytes that
# are not ASCII, a DEL the HTTP parser refuses, protocol-relative and backslash tricks.
HOSTILE_LOCATIONS = [
    b"javascript:alert(1)",
    b"JaVaScRiPt:alert(document.domain)",
    b"data:text/html;base64,PGgxPmhpPC9oMT4=",
    b"data:image/png;base64,iVBORw0KGgo=",
    b"mailto:someone@example.com",
    b"about:blank",
    b"file:///etc/passwd",
    b"ftp://example.com/x",
    b"gopher://example.com/",
    b"http://[::1",
    b"http://[not-v6]/",
    b"http://xn--/",
    b"http://xn--zz/",
    b"http://example.com:99999/",
    b"http://example.com:-1/",
    b"//:0/x",
    b"http://user:pw@example.com/",
    b"http:///nohost",
    b"http://a/\x7f",
    b"http://ex\xd0\xb0mple\xff/",
    b"\\\\evil\\share",
    b"::::",
    b"%00%ff",
]


def _raw_redirect(location: bytes) -> Any:
    def handler(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(
            b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"
        )

    return handler


@pytest.mark.parametrize("location", HOSTILE_LOCATIONS, ids=repr)
async def test_hostile_redirects_are_fetch_errors(
    tmp_path: Path, server: LoopServer, location: bytes
) -> None:
    url = server.custom("/r", _raw_redirect(location))
    f = SafeFetcher(tool_settings(tmp_path, [server.host_port]))
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch(url, kind="page")
    finally:
        await f.aclose()
    assert info.value.kind in ("invalid_url", "network", "blocked", "offline", "http")


@pytest.mark.parametrize("location", HOSTILE_LOCATIONS[:12], ids=repr)
async def test_browse_of_a_hostile_redirect_is_an_observation(
    tmp_path: Path, server: LoopServer, location: bytes
) -> None:
    url = server.custom("/r", _raw_redirect(location))
    kit = Toolkit(
        tool_settings(tmp_path, [server.host_port], cache_enabled=False),
        ArtifactStore(tmp_path / "a"),
    )
    try:
        obs = await kit.browse(url, "anything")
    finally:
        await kit.aclose()
    assert not obs.ok and obs.error


def _httpx_exceptions() -> list[BaseException]:
    """One instance of every exception class httpx and httpcore export."""
    request = httpx.Request("GET", "http://example.com/")
    found: list[BaseException] = []
    for module in (httpx, httpcore):
        for _name, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, Exception) or cls.__module__.split(".")[0] not in (
                "httpx",
                "httpcore",
            ):
                continue
            if cls is httpx.HTTPStatusError:
                found.append(cls("boom", request=request, response=httpx.Response(500)))
            elif issubclass(cls, httpx.RequestError):
                found.append(cls("boom", request=request))
            else:
                try:
                    found.append(cls("boom"))
                except TypeError:  # StreamConsumed and friends carry a fixed message
                    found.append(cls())
    return found


HTTP_EXCEPTIONS = _httpx_exceptions()


def test_the_exception_list_is_not_vacuous() -> None:
    names = {type(e).__name__ for e in HTTP_EXCEPTIONS}
    assert {"InvalidURL", "UnsupportedProtocol", "LocalProtocolError", "DecodingError"} <= names
    assert {"StreamConsumed", "CookieConflict", "TooManyRedirects", "ProxyError"} <= names


@pytest.mark.parametrize("exc", HTTP_EXCEPTIONS, ids=lambda e: f"{type(e).__module__}.{e!r}")
async def test_every_httpx_error_is_a_fetch_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    f = SafeFetcher(tool_settings(tmp_path, []))

    async def send(*args: Any, **kwargs: Any) -> httpx.Response:
        raise exc

    monkeypatch.setattr(f._client, "send", send)
    try:
        with pytest.raises(FetchError):
            await f.fetch("http://example.com/x", kind="page")
    finally:
        await f.aclose()


@pytest.mark.parametrize(
    "exc",
    [
        httpx.InvalidURL("bad"),
        httpx.UnsupportedProtocol("no"),
        httpx.LocalProtocolError("illegal header"),
        httpx.DecodingError("garbled"),
        httpx.StreamConsumed(),
        httpcore.ProtocolError("h11"),
        httpx.CookieConflict("two"),
    ],
    ids=repr,
)
async def test_one_bad_candidate_never_discards_the_good_ones(
    tmp_path: Path,
    fake_ddgs: type[FakeDDGS],
    server: LoopServer,
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
) -> None:
    good = server.add("/good.png", "image/png", png((20, 160, 90)))
    server.add("/boom.png", "image/png", png((200, 10, 10)))
    js = server.custom("/js.png", _raw_redirect(b"javascript:alert(1)"))
    idna = server.custom("/idna.png", _raw_redirect(b"http://xn--/a.png"))
    fake_ddgs.image_results = {
        "q": [
            {"image": server.url + "/boom.png", "title": "boom"},
            {"image": js, "title": "js"},
            {"image": "http://xn--/x.png", "title": "bad idna"},
            {"image": idna, "title": "redirect to bad idna"},
            {"image": "data:image/png;base64,iVBORw0KGgo=", "title": "data"},
            {"image": good, "title": "good"},
        ]
    }
    kit = Toolkit(
        tool_settings(tmp_path, [server.host_port], cache_enabled=False),
        ArtifactStore(tmp_path / "a"),
    )
    assert isinstance(kit.fetcher, SafeFetcher)
    real_send = kit.fetcher._client.send

    async def send(request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if request.url.path == "/boom.png":
            raise exc
        return await real_send(request, **kwargs)

    monkeypatch.setattr(kit.fetcher._client, "send", send)
    try:
        obs = await kit.image_search("q", top_k=4, registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    assert [h.title for h in obs.items if isinstance(h, ImageHit)] == ["good"]
    assert len([n for n in obs.notes if n.startswith("skipped")]) == 5


async def test_a_bad_searxng_url_is_refused_at_settings_and_by_the_tool(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="searxng_url"):
        tool_settings(tmp_path, [], searxng_url="http://xn--/")
    settings = tool_settings(tmp_path, [], image_provider="searxng", cache_enabled=False)
    # A settings object built without validation (model_construct) still cannot crash a tool.
    settings = settings.model_copy(update={"searxng_url": "http://[::1"})
    kit = Toolkit(settings, ArtifactStore(tmp_path / "a"))
    try:
        obs = await kit.image_search("q", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert not obs.ok and "searxng_url" in (obs.error or "")


def test_every_tool_error_is_a_groundwork_error() -> None:
    import importlib
    import pkgutil

    import tools

    classes = []
    for info in pkgutil.walk_packages(tools.__path__, "tools."):
        module = importlib.import_module(info.name)
        for _name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, BaseException):
                classes.append(cls)
    assert len(classes) >= 6
    assert [c for c in classes if not issubclass(c, GroundworkError)] == []
