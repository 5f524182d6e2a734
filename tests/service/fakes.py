"""A stand-in for graphs.runner.Runner with the same interface, and a live uvicorn server.

The fake lets the API tests drive every outcome (done, failed, interrupted, crashing, held
mid-run) in milliseconds; the real Runner is exercised by the slow tests. Words in the prompt
choose the behaviour: "hold" waits for `release`, "fail" fails, "boom" raises, "ask" asks a
question.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from PIL import Image

from agent.services import Services
from agent.settings import RunContext, Settings
from core.artifacts import ArtifactRef
from core.errors import GroundworkError

STAGES = ("intake", "analyze", "research", "synthesize", "generate", "critique", "finish")


@dataclass
class FakeOutcome:
    thread_id: str
    status: str
    run_dir: Path | None
    output: dict[str, Any]
    error: str | None = None
    question: str | None = None

    @property
    def image_sha256(self) -> str | None:
        return ((self.output.get("image") or {}).get("image") or {}).get("sha256")


@dataclass
class FakeRunner:
    services: Services
    delay_s: float = 0.005
    release: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    calls: list[dict[str, Any]] = field(default_factory=list)
    pending_map: dict[str, tuple[str, ...]] = field(default_factory=dict)
    values_map: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending_error: str | None = None
    entered: bool = False
    discarded: list[str] = field(default_factory=list)
    edits: dict[str, dict[str, Any]] = field(default_factory=dict)

    _images: dict[tuple[Any, ...], ArtifactRef] = field(default_factory=dict)

    def _image(self, size: tuple[int, int], colour: tuple[int, int, int]) -> ArtifactRef:
        """Stored once per size and colour (the store fsyncs each write; benchmarks of the API
        layer should not measure that)."""
        key = (size, colour)
        if key not in self._images:
            self._images[key] = self.services.store.put_image(Image.new("RGB", size, colour))
        return self._images[key]

    async def __aenter__(self) -> FakeRunner:
        self.entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.entered = False

    async def pending(self, thread_id: str, policy: Any = "planned") -> tuple[str, ...]:
        if self.pending_error:
            raise GroundworkError(self.pending_error)
        return self.pending_map.get(thread_id, ())

    async def values(self, thread_id: str, policy: Any = "planned") -> dict[str, Any]:
        return self.values_map.get(thread_id, {})

    async def discard(self, thread_id: str, policy: Any = "planned") -> None:
        self.discarded.append(thread_id)
        self.pending_map.pop(thread_id, None)

    async def seed_edit(
        self, thread_id: str, policy: Any, prompt: str, image: dict[str, Any]
    ) -> None:
        self.edits[thread_id] = image
        self.values_map[thread_id] = {"request": prompt, "turn": 0}
        self.pending_map[thread_id] = ("refine",)

    async def run(
        self,
        request: str | None,
        *,
        thread_id: str | None = None,
        policy: Any = "planned",
        context: RunContext | None = None,
        on_event: Callable[[Any], None] | None = None,
        write_folder: bool = True,
    ) -> FakeOutcome:
        assert thread_id is not None
        self.calls.append(
            {"request": request, "thread_id": thread_id, "policy": policy, "context": context}
        )
        emit = on_event or (lambda e: None)
        text = request or self.values_map.get(thread_id, {}).get("request", "resumed")
        turn = sum(1 for c in self.calls if c["thread_id"] == thread_id)
        if "boom" in text:
            raise RuntimeError("fake runner exploded")
        stages: list[dict[str, Any]] = []
        for stage in STAGES:
            if stage == "generate":
                if "hold" in text:
                    self.started.set()
                    while not self.release.is_set():
                        await asyncio.sleep(0.01)
                for step in (1, 2):
                    emit({"kind": "progress", "data": {"step": step, "total": 2}})
            if stage == "research":
                emit(
                    {
                        "kind": "tool",
                        "data": {"tool": "search", "query": text, "ok": True, "items": 1},
                    }
                )
            await asyncio.sleep(self.delay_s)
            event = {"stage": stage, "turn": turn, "elapsed_s": 0.001, "summary": f"{stage} ok"}
            stages.append(event)
            emit({"kind": "stage", "data": event})
            if stage == "analyze" and "ask" in text:
                emit({"kind": "interrupt", "data": {"question": "which colour?"}})
                return FakeOutcome(thread_id, "interrupted", None, {}, question="which colour?")
        if "fail" in text:
            return FakeOutcome(thread_id, "failed", None, {"stages": stages}, error="it failed")
        settings: Settings = self.services.settings
        if context is not None:
            settings = context.apply(settings)
        size = (settings.generator.width // 8, settings.generator.height // 8)
        colour = (len(text) * 7 % 256, turn * 40 % 256, 120)
        image = self._image(size, colour)
        ref = self._image((8, 8), (10, 200, 30))
        output = {
            "request": text,
            "prompt": text,
            "turn": turn,
            "gaps": {"gaps": [{"kind": "entity", "span": text[:20], "why": "new"}]},
            "observations": [],
            "image_ids": {"IMG_001": ref.sha256},
            "grounded": {
                "gen_prompt": f"grounded: {text}",
                "negative_prompt": "blurry",
                "reference_images": [{"img_id": "IMG_001", "note": "shape"}],
                "facts": [{"claim": "it is green", "source_url": "http://127.0.0.1/x"}],
            },
            "image": {
                "image": image.model_dump(),
                "seed": settings.generator.seed,
                "model": "fake",
                "mode": "txt2img",
            },
            "rounds": [],
            "notices": [],
            "stages": stages,
            "usage": {"llm_calls": 2, "prompt_tokens": 20, "completion_tokens": 20},
            "error": None,
        }
        run_dir = None
        if write_folder:
            run_dir = settings.runs_dir / f"{thread_id}-{turn}"
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "dossier.md").write_text(f"# Dossier\n\n{text}\n\n- IMG_001 **used**\n")
        return FakeOutcome(thread_id, "done", run_dir, output)


class FakeFactory:
    """`runner_factory` for create_app that keeps the runner it made (tests inspect it)."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.runner: FakeRunner | None = None

    def __call__(self, settings: Settings, services: Services) -> FakeRunner:
        self.runner = FakeRunner(services, **self.kwargs)
        return self.runner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """uvicorn on a free loopback port in a thread: real sockets, real lifespan."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start (see the log above)")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
