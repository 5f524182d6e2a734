"""Loopback web server serving scripted pages and images, and a fake `ddgs.DDGS`.

The fake is the only test double at the network edge: everything behind it (downloads, image
decoding, the artifact store) runs for real against the loopback server.
"""

from __future__ import annotations

import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def png_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (48, 48), *, seed: int = 0
) -> bytes:
    """A small PNG whose structure (not just colour) depends on `seed`, so perceptual hashes
    of different seeds differ."""
    import random

    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(im)
    rng = random.Random(seed)
    for _ in range(6):
        x, y = rng.randrange(size[0] - 8), rng.randrange(size[1] - 8)
        shade = rng.randrange(256)
        draw.rectangle(
            (x, y, x + rng.randrange(4, 20), y + rng.randrange(4, 20)), fill=(shade,) * 3
        )
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class WebServer:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.hits: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, path: str, content_type: str, body: bytes) -> str:
        self.routes[path] = (content_type, body)
        return self.url + path

    def start(self) -> WebServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits.append(self.path)
                if self.path not in outer.routes:
                    self.send_response(404)
                    self.end_headers()
                    return
                ctype, body = outer.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


class FakeDDGS:
    """Stands in for `ddgs.DDGS`: answers from a JSON script, counts calls in a file.

    Script: {"text": {query: [hits...]}, "images": {query: [hits...]}}; unknown queries get [].
    Call log lines: "text\\t<query>" / "images\\t<query>", appended to $GROUNDWORK_TEST_DDGS_LOG.
    """

    script: dict[str, dict[str, list[dict[str, Any]]]] = {"text": {}, "images": {}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> FakeDDGS:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @staticmethod
    def _log(kind: str, query: str) -> None:
        path = os.environ.get("GROUNDWORK_TEST_DDGS_LOG")
        if path:
            with open(path, "a") as f:
                f.write(f"{kind}\t{query}\n")

    def text(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self._log("text", query)
        return list(self.script.get("text", {}).get(query, []))

    def images(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self._log("images", query)
        return list(self.script.get("images", {}).get(query, []))


def install_fake_ddgs(script_path: Path | None = None) -> None:
    """Patch `ddgs.DDGS` in this process (the helper CLI entry calls this before main())."""
    import ddgs

    if script_path is not None:
        FakeDDGS.script = json.loads(Path(script_path).read_text())
    ddgs.DDGS = FakeDDGS  # type: ignore[misc,assignment]
