"""Loopback HTTP servers with hostile behaviours (redirects, slow drip, endless bodies) and a
scriptable fake at the ddgs boundary. Everything else in the tool tests runs for real."""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.artifacts import ArtifactStore
from tools.settings import ToolSettings

Handler = Callable[[BaseHTTPRequestHandler], None]


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    """A small image with some structure (a flat image's perceptual hash says little)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(im)
    w, h = size
    draw.rectangle((w // 8, h // 8, w // 2, h // 2), fill=(255 - color[0], color[2], 40))
    draw.ellipse((w // 2, h // 3, w - 4, h - 4), fill=(color[1], 255 - color[2], 200))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class LoopServer:
    routes: dict[str, Handler] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    delay_s: float = 0.0  # injected latency before every answer
    _server: ThreadingHTTPServer | None = None

    def start(self) -> LoopServer:
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                outer.hits.append(self.path)
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                handler = outer.routes.get(path)
                try:
                    if handler is None:
                        self.send_response(404)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    else:
                        handler(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: that is what several tests want

        class Server(ThreadingHTTPServer):
            request_queue_size = 128
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], ConnectionError):  # client hung up: fine
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), H)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def add(
        self,
        path: str,
        content_type: str,
        body: bytes,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> str:
        def handler(h: BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            self.bytes_sent[path] = len(body)

        self.routes[path] = handler
        return self.url + path

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        def handler(h: BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()

        self.routes[path] = handler
        return self.url + path

    def custom(self, path: str, handler: Handler) -> str:
        self.routes[path] = handler
        return self.url + path


@pytest.fixture
def server() -> Iterator[LoopServer]:
    s = LoopServer().start()
    yield s
    s.stop()


@pytest.fixture
def other_server() -> Iterator[LoopServer]:
    s = LoopServer().start()
    yield s
    s.stop()


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def tool_settings(tmp_path: Path, allow: list[str], **kw: Any) -> ToolSettings:
    base: dict[str, Any] = {
        "allow_hosts": allow,
        "cache_dir": tmp_path / "cache",
        "timeout_s": 10.0,
        "fetch_timeout_s": 5.0,
        "retry_base_s": 0.01,
        "retry_max_s": 0.05,
    }
    base.update(kw)
    return ToolSettings(**base)


class FakeDDGS:
    """Stands in for `ddgs.DDGS`. Class-level script so a test sets it before the toolkit
    instantiates the client at call time. `fail` entries raise before answering."""

    text_results: dict[str, list[dict[str, Any]]] = {}
    image_results: dict[str, list[dict[str, Any]]] = {}
    fail: list[BaseException] = []
    calls: list[tuple[str, str]] = []
    delay_s: float = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def _answer(
        self, kind: str, query: str, table: dict[str, list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        FakeDDGS.calls.append((kind, query))
        if FakeDDGS.delay_s:
            time.sleep(FakeDDGS.delay_s)
        if FakeDDGS.fail:
            raise FakeDDGS.fail.pop(0)
        return [dict(r) for r in table.get(query, [])]

    def text(self, query: str, **kwargs: Any) -> list[dict[str, Any]]:
        return self._answer("text", query, FakeDDGS.text_results)

    def images(self, query: str, **kwargs: Any) -> list[dict[str, Any]]:
        return self._answer("images", query, FakeDDGS.image_results)


@pytest.fixture
def fake_ddgs(monkeypatch: pytest.MonkeyPatch) -> type[FakeDDGS]:
    import ddgs

    FakeDDGS.text_results, FakeDDGS.image_results = {}, {}
    FakeDDGS.fail, FakeDDGS.calls, FakeDDGS.delay_s = [], [], 0.0
    monkeypatch.setattr(ddgs, "DDGS", FakeDDGS)
    return FakeDDGS
