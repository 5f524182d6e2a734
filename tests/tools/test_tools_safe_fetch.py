"""The safe fetcher against real loopback servers over real sockets (httpx, no mocks)."""

from __future__ import annotations

import asyncio
import gzip
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.tools.conftest import LoopServer, png, tool_settings
from tools.fetch import FetchError, SafeFetcher
from tools.images import ImageRejected, decode_image


def fetcher(tmp_path: Path, allow: list[str], **kw: object) -> SafeFetcher:
    return SafeFetcher(tool_settings(tmp_path, allow, **kw))


async def test_allowed_origin_fetches(tmp_path: Path, server: LoopServer) -> None:
    url = server.add("/a.png", "image/png", png((1, 2, 3)))
    f = fetcher(tmp_path, [server.host_port])
    try:
        res = await f.fetch(url, kind="image")
    finally:
        await f.aclose()
    assert res.status == 200 and res.data.startswith(b"\x89PNG")


async def test_loopback_refused_by_default(tmp_path: Path, server: LoopServer) -> None:
    url = server.add("/a.png", "image/png", png((1, 2, 3)))
    f = fetcher(tmp_path, [])
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch(url, kind="image")
    finally:
        await f.aclose()
    assert info.value.kind == "blocked" and "loopback" in str(info.value)
    assert server.hits == []


async def test_redirect_chain_into_other_loopback_port_is_refused(
    tmp_path: Path, server: LoopServer, other_server: LoopServer
) -> None:
    """Origin allowed by host:port; its redirects lead to a loopback port that is not."""
    other_server.add("/secret", "text/html", b"<p>internal admin</p>")
    server.redirect("/hop2", other_server.url + "/secret", status=307)
    start = server.redirect("/hop1", "/hop2", status=301)
    f = fetcher(tmp_path, [server.host_port])
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch(start, kind="page")
    finally:
        await f.aclose()
    assert info.value.kind == "blocked"
    assert str(other_server.port) in str(info.value)
    assert server.hits == ["/hop1", "/hop2"]
    assert other_server.hits == [], "the forbidden server must never see a request"


async def test_redirect_into_cloud_metadata_is_refused(tmp_path: Path, server: LoopServer) -> None:
    connected: list[str] = []
    start = server.redirect("/go", "http://169.254.169.254/latest/meta-data/iam/")
    f = fetcher(tmp_path, [server.host_port, "169.254.0.0/16"])  # even a broad allow
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch(start, kind="page")
        connected = [ip for _h, ip, _p in f.backend.connected]
    finally:
        await f.aclose()
    assert info.value.kind == "blocked" and "metadata" in str(info.value)
    assert connected == ["127.0.0.1"]


async def test_redirect_to_other_scheme_and_redirect_limit(
    tmp_path: Path, server: LoopServer
) -> None:
    server.redirect("/file", "file:///etc/passwd")
    for i in range(10):
        server.redirect(f"/loop{i}", f"/loop{i + 1}")
    f = fetcher(tmp_path, [server.host_port], max_redirects=3)
    try:
        with pytest.raises(FetchError) as scheme:
            await f.fetch(server.url + "/file")
        with pytest.raises(FetchError) as many:
            await f.fetch(server.url + "/loop0")
    finally:
        await f.aclose()
    assert scheme.value.kind == "invalid_url"
    assert "more than 3 redirects" in str(many.value)


def _endless(chunk: bytes, total: int, sent: dict[str, int], declare: bool) -> object:
    def handler(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        if declare:
            h.send_header("Content-Length", str(total))
        h.end_headers()
        n = 0
        try:
            h.wfile.write(b"\x89PNG\r\n\x1a\n")
            while n < total:
                h.wfile.write(chunk)
                n += len(chunk)
        finally:
            sent["n"] = n

    return handler


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "undeclared"])
async def test_200mb_response_is_cut_at_the_cap(
    tmp_path: Path, server: LoopServer, declare: bool
) -> None:
    sent: dict[str, int] = {}
    server.custom("/huge.png", _endless(b"\0" * 65536, 200_000_000, sent, declare))  # type: ignore[arg-type]
    f = fetcher(tmp_path, [server.host_port], max_image_bytes=1_000_000)
    t0 = time.perf_counter()
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch(server.url + "/huge.png", kind="image")
    finally:
        await f.aclose()
    assert info.value.kind == "too_large"
    assert time.perf_counter() - t0 < 5
    for _ in range(50):  # the server thread notices the closed socket shortly after
        if "n" in sent:
            break
        await asyncio.sleep(0.05)
    assert sent.get("n", 0) < 30_000_000, f"server pushed {sent} bytes: download not stopped"


async def test_page_over_cap_is_truncated_not_refused(tmp_path: Path, server: LoopServer) -> None:
    body = b"<p>" + b"kangaroo " * 200_000 + b"</p>"
    url = server.add("/long.html", "text/html", body)
    f = fetcher(tmp_path, [server.host_port], max_page_bytes=50_000)
    try:
        res = await f.fetch(url, kind="page", truncate=True)
    finally:
        await f.aclose()
    assert res.truncated and len(res.data) == 50_000


async def test_gzip_bomb_is_stopped_while_inflating(tmp_path: Path, server: LoopServer) -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = (
        comp.compress(b"<html><p>")
        + b"".join(comp.compress(b" " * 1_000_000) for _ in range(100))
        + comp.flush()
    )
    assert len(bomb) < 200_000

    def handler(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(bomb)))
        h.end_headers()
        h.wfile.write(bomb)

    server.custom("/bomb.html", handler)
    small = gzip.compress(b"<html><p>hello gzip</p></html>")
    server.add("/small.html", "text/html", small, headers={"Content-Encoding": "gzip"})
    f = fetcher(tmp_path, [server.host_port], max_page_bytes=1_000_000)
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch(server.url + "/bomb.html", kind="page")
        ok = await f.fetch(server.url + "/small.html", kind="page")
    finally:
        await f.aclose()
    assert info.value.kind == "too_large"
    assert b"hello gzip" in ok.data


def _png_bomb(side: int) -> bytes:
    """A real decompression bomb: side x side 8-bit grey, all zero, ~side*side/1000 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_decompression_bomb_is_refused_without_decoding() -> None:
    bomb = _png_bomb(12_000)  # 144 Mpx, over Pillow's own warning threshold too
    assert len(bomb) < 300_000
    t0 = time.perf_counter()
    with pytest.raises(ImageRejected, match="decompression-bomb|bomb"):
        decode_image(bomb, max_pixels=40_000_000)
    assert time.perf_counter() - t0 < 1.0, "the bomb must be refused from its header"
    with pytest.raises(ImageRejected, match="pixel cap"):
        decode_image(png((1, 2, 3), size=(100, 100)), max_pixels=5_000)


def test_truncated_and_fake_images_are_refused() -> None:
    good = png((9, 9, 9), size=(200, 200))
    assert decode_image(good, max_pixels=10**6).width == 200
    with pytest.raises(ImageRejected):
        decode_image(good[: len(good) // 2], max_pixels=10**6)
    with pytest.raises(ImageRejected):
        decode_image(b"<!doctype html><p>hi</p>", max_pixels=10**6)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    with pytest.raises(ImageRejected):
        decode_image(svg, max_pixels=10**6)


async def test_html_served_as_image_png_is_refused(tmp_path: Path, server: LoopServer) -> None:
    url = server.add("/x.png", "image/png", b"<!DOCTYPE html><html><body>gotcha</body></html>")
    svg = server.add("/x.svg", "image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    page_as_pdf = server.add("/doc", "text/html", b"%PDF-1.7 binary")
    f = fetcher(tmp_path, [server.host_port])
    try:
        with pytest.raises(FetchError) as html:
            await f.fetch(url, kind="image")
        with pytest.raises(FetchError) as svg_err:
            await f.fetch(svg, kind="image")
        with pytest.raises(FetchError) as pdf:
            await f.fetch(page_as_pdf, kind="page")
    finally:
        await f.aclose()
    assert html.value.kind == "bad_content" and "not PNG/JPEG" in str(html.value)
    assert svg_err.value.kind == "bad_content"
    assert pdf.value.kind == "bad_content"


async def test_slow_loris_hits_the_total_timeout(tmp_path: Path, server: LoopServer) -> None:
    """Each byte arrives well within the read timeout; only the total timeout can stop it."""
    stop = threading.Event()

    def drip(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.end_headers()
        h.wfile.write(b"<html>")
        while not stop.is_set():
            h.wfile.write(b"a")
            h.wfile.flush()
            time.sleep(0.1)

    server.custom("/drip", drip)
    f = fetcher(tmp_path, [server.host_port], read_timeout_s=2.0, fetch_timeout_s=1.0)
    t0 = time.perf_counter()
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch(server.url + "/drip", kind="page")
    finally:
        stop.set()
        await f.aclose()
    elapsed = time.perf_counter() - t0
    assert info.value.kind == "timeout" and 0.9 < elapsed < 2.5


async def test_silent_server_hits_the_read_timeout(tmp_path: Path, server: LoopServer) -> None:
    stop = threading.Event()

    def silent(h: BaseHTTPRequestHandler) -> None:
        stop.wait(10)

    server.custom("/silent", silent)
    f = fetcher(tmp_path, [server.host_port], read_timeout_s=0.5, fetch_timeout_s=5.0)
    t0 = time.perf_counter()
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch(server.url + "/silent", kind="page")
    finally:
        stop.set()
        await f.aclose()
    assert info.value.kind == "timeout" and time.perf_counter() - t0 < 2.0


async def test_dns_answer_is_pinned_and_host_header_kept(
    tmp_path: Path, server: LoopServer
) -> None:
    """The address that was checked is the one connected to; the Host header keeps the name."""
    seen_hosts: list[str] = []

    def echo(h: BaseHTTPRequestHandler) -> None:
        seen_hosts.append(h.headers.get("Host", ""))
        body = b"<p>ok</p>"
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    server.custom("/echo", echo)
    answers = iter([["127.0.0.1"], ["169.254.169.254"], ["169.254.169.254"]])
    calls: list[str] = []

    async def rebinding_resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    settings = tool_settings(tmp_path, [f"rebind.example:{server.port}"])
    f = SafeFetcher(settings, resolver=rebinding_resolver)
    try:
        res = await f.fetch(f"http://rebind.example:{server.port}/echo", kind="page")
        assert res.data == b"<p>ok</p>"
        assert seen_hosts == [f"rebind.example:{server.port}"]
        assert f.backend.connected == [("rebind.example", "127.0.0.1", server.port)]
        # A later answer pointing at metadata is refused even though the name is allow-listed.
        f2 = SafeFetcher(settings, resolver=rebinding_resolver)
        try:
            with pytest.raises(FetchError, match="metadata"):
                await f2.fetch(f"http://rebind.example:{server.port}/echo", kind="page")
        finally:
            await f2.aclose()
    finally:
        await f.aclose()


@pytest.mark.parametrize(
    "answers",
    [
        ["93.184.216.34", "127.0.0.1"],
        ["::ffff:127.0.0.1"],
        ["::ffff:169.254.169.254"],
        ["64:ff9b::a9fe:a9fe"],
        ["2002:7f00:1::1"],
        ["fd00:ec2::254"],
        ["0.0.0.0"],
        ["::"],
    ],
)
async def test_mixed_and_wrapped_answers_are_refused(tmp_path: Path, answers: list[str]) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return answers

    f = SafeFetcher(tool_settings(tmp_path, []), resolver=resolver)
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch("http://evil.example/x", kind="page")
    finally:
        await f.aclose()
    assert info.value.kind == "blocked"
    assert f.backend.connected == []


async def test_offline_dns_failure_is_fast_and_labelled(tmp_path: Path) -> None:
    f = fetcher(tmp_path, [])
    t0 = time.perf_counter()
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch("http://no-such-host.invalid/page", kind="page")
    finally:
        await f.aclose()
    assert info.value.kind == "offline" and "offline?" in str(info.value)
    assert time.perf_counter() - t0 < 3


async def test_per_host_concurrency_limit(tmp_path: Path, server: LoopServer) -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def slow(h: BaseHTTPRequestHandler) -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        body = png((5, 5, 5))
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    server.custom("/slow.png", slow)
    f = fetcher(tmp_path, [server.host_port], per_host_concurrency=2)
    try:
        await asyncio.gather(
            *(f.fetch(f"{server.url}/slow.png?i={i}", kind="image") for i in range(6))
        )
    finally:
        await f.aclose()
    assert state["max"] == 2


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://x/",
        "http:///nohost",
        "http://user:pw@example.com/",
        "javascript:alert(1)",
        "not a url",
    ],
)
async def test_invalid_urls(tmp_path: Path, url: str) -> None:
    f = fetcher(tmp_path, [])
    try:
        with pytest.raises(FetchError) as info:
            await f.fetch(url)
    finally:
        await f.aclose()
    assert info.value.kind == "invalid_url"
