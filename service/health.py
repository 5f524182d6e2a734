"""`/readyz`: can this server finish a run right now? (LLM, Redis, GPU workers, its database,
the artifact store.)

`/readyz` needs no token (load balancers and orchestrators probe it), so what it says and what
it costs are bounded for anyone who asks:
- the answer names each check and whether it passed, with a short reason; never a URL, a
  host, a file path or a key (a probe of the LLM endpoint says "answers" or "HTTP 401");
- the LLM endpoints are probed at most once per `readyz_cache_s` (one probe in flight at a
  time; every caller in between gets the cached result), so a flood of unauthenticated
  `/readyz` calls never becomes a flood of outbound requests carrying the API key;
- local checks (database, Redis, artifact store) run per call, each with its own timeout, all
  concurrently: a dead dependency makes the answer "not ready" in `probe_timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable

import httpx

from agent.services import Services
from agent.settings import Settings
from core.artifacts import ArtifactStore
from core.errors import GroundworkError
from service.limits import Limiter, LimiterUnavailable
from service.pgstore import AnyStore
from service.schemas import Check
from service.settings import ServiceSettings
from service.store import StoreError

log = logging.getLogger(__name__)


async def _llm(base_url: str, api_key: str, timeout: float) -> Check:
    url = base_url.rstrip("/") + "/models"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            r = await client.get(url, headers={"Authorization": f"Bearer {api_key}"})
    except httpx.HTTPError as e:
        return Check(ok=False, detail=f"unreachable ({type(e).__name__})")
    if r.status_code != 200:
        return Check(ok=False, detail=f"answered HTTP {r.status_code}")
    return Check(ok=True, detail="answers")


class CachedProbe:
    """One outbound probe per `ttl_s`, shared by every caller (single flight)."""

    def __init__(self, probe: Callable[[], Awaitable[Check]], ttl_s: float) -> None:
        self._probe = probe
        self._ttl_s = ttl_s
        self._result: Check | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()
        self.calls = 0

    async def __call__(self) -> Check:
        async with self._lock:
            if self._result is None or time.monotonic() - self._at >= self._ttl_s:
                self.calls += 1
                self._result = await self._probe()
                self._at = time.monotonic()
            return self._result


async def _redis(limiter: Limiter, cfg: ServiceSettings) -> Check:
    if cfg.limits_backend == "memory":
        return Check(ok=True, detail="not used (limits kept in memory)")
    try:
        await limiter.ping()
    except LimiterUnavailable:
        return Check(ok=False, detail="unreachable")
    return Check(ok=True, detail="answers")


async def _worker(settings: Settings, services: Services) -> Check:
    if settings.generator.backend != "queue":
        return Check(ok=True, detail="in-process generator (loads on the first run)")
    from generators.base import GeneratorError
    from generators.queue.client import QueueGenerator

    generator = services.generator()
    if not isinstance(generator, QueueGenerator):
        return Check(ok=True, detail=f"generator {type(generator).__name__}")
    try:
        live = await generator.live_workers()
    except (GeneratorError, OSError):
        return Check(ok=False, detail="queue unreachable")
    if live == 0:
        return Check(ok=False, detail="no generation worker seen recently (groundwork worker)")
    return Check(ok=True, detail=f"{live} live worker(s)")


async def _store(store: AnyStore) -> Check:
    try:
        await store.ping()
    except StoreError:
        return Check(ok=False, detail="cannot be read")
    return Check(ok=True, detail="answers")


PROBE = b"groundwork readyz probe\n"


async def _artifacts(artifacts: ArtifactStore) -> Check:
    """Store a fixed probe object (content-addressed: the same one every time) and read it
    back, through the store's own interface, whichever backend it has."""

    def probe() -> bool:
        ref = artifacts.put_bytes(PROBE, media_type="text/plain")
        return artifacts.get_bytes(ref.sha256) == PROBE

    try:
        ok = await asyncio.to_thread(probe)
    except (OSError, GroundworkError) as e:
        log.warning("readyz: artifact store probe failed: %s", e)
        return Check(ok=False, detail=f"cannot store or read ({type(e).__name__})")
    return Check(ok=ok, detail="answers" if ok else "read back different bytes")


def _checkpoint_errors() -> tuple[type[BaseException], ...]:
    """What a checkpoint backend raises when its database cannot be read (SQLite, Postgres)."""
    errors: list[type[BaseException]] = [GroundworkError, OSError, sqlite3.Error]
    try:
        import psycopg
    except ImportError:
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


async def _checkpoints(pending: Callable[[str], Awaitable[object]]) -> Check:
    """Read a probe thread's state through the runner: the checkpoint store answers."""
    try:
        await pending("groundwork-readyz-probe")
    except _checkpoint_errors() as e:
        log.warning("readyz: checkpoint store probe failed: %s: %s", type(e).__name__, e)
        return Check(ok=False, detail=f"cannot be read ({type(e).__name__})")
    return Check(ok=True, detail="answers")


async def _timed(name: str, check: Awaitable[Check], timeout: float) -> tuple[str, Check]:
    try:
        return name, await asyncio.wait_for(check, timeout)
    except TimeoutError:
        return name, Check(ok=False, detail=f"no answer within {timeout:.1f} s")


class Readiness:
    """The checks of one server; the LLM probes are cached across calls."""

    def __init__(
        self,
        settings: Settings,
        cfg: ServiceSettings,
        services: Services,
        limiter: Limiter,
        store: AnyStore,
        artifacts: ArtifactStore,
        checkpoints: Callable[[str], Awaitable[object]],
    ) -> None:
        self.settings = settings
        self.cfg = cfg
        self.services = services
        self.limiter = limiter
        self.store = store
        self.artifacts = artifacts
        self.checkpoints = checkpoints
        llm = settings.llm
        key = llm.api_key.get_secret_value()
        timeout = cfg.probe_timeout_s
        self.llm_probes: dict[str, CachedProbe] = {}
        if llm.base_url:
            base_url = llm.base_url
            self.llm_probes["llm"] = CachedProbe(
                lambda: _llm(base_url, key, timeout), cfg.readyz_cache_s
            )
        critique = llm.critique_base_url
        if llm.critique_model and critique and critique != llm.base_url:
            self.llm_probes["vlm"] = CachedProbe(
                lambda: _llm(critique, key, timeout), cfg.readyz_cache_s
            )

    async def checks(self) -> dict[str, Check]:
        timeout = self.cfg.probe_timeout_s
        checks: list[Awaitable[tuple[str, Check]]] = []
        if "llm" not in self.llm_probes:
            embedded = Check(ok=True, detail="embedded llama.cpp server (starts on the first run)")
            checks.append(_timed("llm", asyncio.sleep(0, embedded), timeout))
        for name, probe in self.llm_probes.items():
            checks.append(_timed(name, probe(), timeout + 0.5))
        checks.append(_timed("redis", _redis(self.limiter, self.cfg), timeout + 0.5))
        checks.append(_timed("worker", _worker(self.settings, self.services), timeout + 0.5))
        checks.append(_timed("store", _store(self.store), timeout))
        checks.append(_timed("artifacts", _artifacts(self.artifacts), timeout))
        checks.append(_timed("checkpoints", _checkpoints(self.checkpoints), timeout))
        return dict(await asyncio.gather(*checks))
