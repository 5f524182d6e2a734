"""`/readyz`: can this server finish a run right now? (LLM, Redis, GPU workers, its database.)

Each check has its own timeout and runs concurrently, so a dead dependency makes the answer
"not ready" in `probe_timeout_s`, never a hung probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import httpx

from agent.services import Services
from agent.settings import Settings
from service.limits import Limiter, LimiterUnavailable, redact
from service.schemas import Check
from service.settings import ServiceSettings
from service.store import RunStore


async def _llm(base_url: str, api_key: str, timeout: float) -> Check:
    url = base_url.rstrip("/") + "/models"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            r = await client.get(url, headers={"Authorization": f"Bearer {api_key}"})
    except httpx.HTTPError as e:
        return Check(ok=False, detail=f"{redact(url)} unreachable: {type(e).__name__}")
    if r.status_code != 200:
        return Check(ok=False, detail=f"{redact(url)} answered HTTP {r.status_code}")
    return Check(ok=True, detail=f"{redact(base_url)} answers")


async def _redis(limiter: Limiter, cfg: ServiceSettings, url: str) -> Check:
    if cfg.limits_backend == "memory":
        return Check(ok=True, detail="not used (limits kept in memory)")
    try:
        await limiter.ping()
    except LimiterUnavailable as e:
        return Check(ok=False, detail=str(e))
    return Check(ok=True, detail=f"{redact(url)} answers")


async def _worker(settings: Settings, services: Services) -> Check:
    if settings.generator.backend != "queue":
        return Check(ok=True, detail="in-process generator (loads on the first run)")
    from generators.base import GeneratorError
    from generators.queue import QueueGenerator

    generator = services.generator()
    if not isinstance(generator, QueueGenerator):
        return Check(ok=True, detail=f"generator {type(generator).__name__}")
    try:
        live = await generator.live_workers()
    except (GeneratorError, OSError) as e:
        return Check(ok=False, detail=f"queue unreachable: {e}")
    if live == 0:
        return Check(ok=False, detail="no generation worker seen recently (groundwork worker)")
    return Check(ok=True, detail=f"{live} live worker(s)")


async def _store(store: RunStore) -> Check:
    await store.ping()
    return Check(ok=True, detail=str(store.path))


async def _timed(name: str, check: Awaitable[Check], timeout: float) -> tuple[str, Check]:
    try:
        return name, await asyncio.wait_for(check, timeout)
    except TimeoutError:
        return name, Check(ok=False, detail=f"no answer within {timeout:.1f} s")


async def readiness(
    settings: Settings,
    cfg: ServiceSettings,
    services: Services,
    limiter: Limiter,
    store: RunStore,
    redis_url: str,
) -> dict[str, Check]:
    timeout = cfg.probe_timeout_s
    llm = settings.llm
    key = llm.api_key.get_secret_value()
    checks: list[Awaitable[tuple[str, Check]]] = []
    if llm.base_url:
        checks.append(_timed("llm", _llm(llm.base_url, key, timeout), timeout + 0.5))
    else:
        embedded = Check(ok=True, detail="embedded llama.cpp server (starts on the first run)")
        checks.append(_timed("llm", asyncio.sleep(0, embedded), timeout))
    if llm.critique_model and llm.critique_base_url and llm.critique_base_url != llm.base_url:
        checks.append(_timed("vlm", _llm(llm.critique_base_url, key, timeout), timeout + 0.5))
    checks.append(_timed("redis", _redis(limiter, cfg, redis_url), timeout + 0.5))
    checks.append(_timed("worker", _worker(settings, services), timeout + 0.5))
    checks.append(_timed("store", _store(store), timeout))
    return dict(await asyncio.gather(*checks))
