"""The four research tools the agent calls: search, image_search, browse, knowledge_base.

A tool call never raises for a tool failure: no network, a provider error, a refused download,
a hostile redirect, a poisoned cache entry or a timeout becomes `Observation(ok=False,
error=...)`, so one bad query cannot end a run; `Toolkit.call` does the same for a model's
malformed tool call (the one exception: `ReplayMiss` in replay mode). Each call runs under
`settings.timeout_s`; provider errors are retried with jittered exponential backoff
(tenacity), bounded in attempts and by that same deadline; an offline machine fails fast (no
retries), and offline is stated once, in one line, not per call. Every error text and note
goes through `tools.render.untrusted` where it is made. Successful results are cached (see
`tools.cache`). Image ids (`IMG_###`) come from the run's `ImageRegistry` in call order, for
web and local images alike, so an id names one image for the whole run. Decoded pixels held
at once are bounded toolkit-wide (`max_decoded_mb`, counted in bytes per format before
decoding), however many image searches run concurrently; every decode goes through
`core.images`, so a bomb, a truncated file or an unknown format fails that one image,
never the call. Pages are read in killable worker processes (`tools.extract_pool`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from core.errors import GroundworkError
from tools.cache import CacheError, ToolCache, cache_key, make_cache
from tools.extract import PageLimits
from tools.extract_pool import ExtractError, ExtractPool, current_tenant, shared_pool
from tools.fetch import Fetcher, FetchError, SafeFetcher, validate_url
from tools.images import (
    WEB_FORMATS,
    DecodeBudget,
    DecodedImage,
    Fingerprint,
    decode_image,
    probe_image,
    thumbnail,
)
from tools.observations import (
    ImageHit,
    ImageRegistry,
    Observation,
    Passage,
    SearchHit,
    ToolName,
)
from tools.providers import ImageCandidate, ProviderError, SearchProvider, make_provider
from tools.registry import get_tool, parse_arguments
from tools.render import untrusted
from tools.schemas import ToolCallError
from tools.settings import ToolSettings

if TYPE_CHECKING:
    from core.artifacts import ArtifactStore
    from retrieval.api import ImageRanker, KBHit, KnowledgeBaseAPI
    from retrieval.settings import RetrievalSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

DISABLED = "web search disabled/unavailable"
_MAX_NOTES = 12
_OFFLINE_MEMORY_S = 30.0
_MAX_NOTE_CHARS = 400
_MAX_ERROR_CHARS = 600
_SHA_RE = re.compile(r"[0-9a-f]{64}")


class _ToolFailure(GroundworkError):
    """Internal: ends a tool call with ok=False and this message."""


class ReplayMiss(GroundworkError):
    """Replay mode (`Toolkit(replay=True)`): a tool call whose answer was not recorded. Raised
    out of the tool call, never turned into a failed observation: a replay that quietly
    answered differently from the recording would not be a replay."""


ProviderFactory = Callable[[str], SearchProvider]
"""`Toolkit(provider_factory=...)`: given a provider name from the settings ('ddgs',
'searxng'), the provider object to use (a recorder, a replayer, a stub)."""


@dataclass
class _Downloaded:
    candidate: ImageCandidate
    data: bytes
    decoded: DecodedImage
    final_url: str
    fingerprint: Fingerprint


class Toolkit:
    def __init__(
        self,
        settings: ToolSettings,
        store: ArtifactStore,
        *,
        retrieval: RetrievalSettings | None = None,
        cache: ToolCache | None = None,
        extract_pool: ExtractPool | None = None,
        provider_factory: ProviderFactory | None = None,
        fetcher: Fetcher | None = None,
        replay: bool = False,
    ) -> None:
        """`cache=None` builds the cache from settings (disk, or Redis when configured;
        nothing when `cache_enabled` is false). `extract_pool=None` reads pages in the
        process's shared, fair worker pool (`tools.extract_pool.shared_pool`).

        The public hooks for recording and replaying research (evals' snapshots):
        - `provider_factory(name)` supplies the search provider for a configured provider name
          instead of `tools.providers.make_provider` (the name stays what the settings say,
          because it is part of the cache keys);
        - `fetcher` replaces the `SafeFetcher` for every download (images, pages);
        - `replay=True` answers only from `cache`: a call whose answer is not in it raises
          `ReplayMiss` instead of reaching a provider or the web (needs a `cache`).
        """
        self.settings = settings
        self.store = store
        self.retrieval = retrieval
        self.cache = cache if cache is not None else make_cache(settings)
        if replay and cache is None:
            raise ValueError("Toolkit(replay=True) needs the recorded cache (cache=...)")
        self.replay = replay
        self._offline_until = 0.0  # a provider said offline: skip providers until then
        self._offline_stated_until = 0.0
        self._provider_factory = provider_factory
        self.fetcher: Fetcher = fetcher if fetcher is not None else SafeFetcher(settings)
        # Decoded bytes in memory at once, summed over every concurrent image call.
        self.decode_budget = DecodeBudget(settings.max_decoded_mb * 1_000_000)
        # Blocking provider calls and CPU work (decode, hashing, PNG encoding, CLIP) get separate
        # pools, so engines stuck until their timeout cannot starve image verification.
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gw-tools-io")
        self._cpu = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gw-tools-cpu")
        self._providers: dict[str, SearchProvider] = {}
        self._kb: KnowledgeBaseAPI | None = None
        self._ranker: ImageRanker | None = None
        self._ranker_loaded = False
        self._ranker_error: str | None = None
        self._ranker_lock = asyncio.Lock()
        self._kb_lock = asyncio.Lock()
        self._extract_pool = extract_pool

    # --- plumbing -------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    def _provider(self, which: str) -> SearchProvider:
        name = self.settings.text_provider if which == "text" else self.settings.image_provider
        if time.monotonic() < self._offline_until:
            # The provider said offline moments ago: fail now instead of a DNS stall per call.
            raise _ToolFailure(self._offline_message(""))
        if name == "none":
            raise _ToolFailure(
                f"{DISABLED}: tools.{which if which == 'text' else 'image'}_provider is 'none' "
                "(offline mode); use knowledge_base for local material"
            )
        if name not in self._providers:
            try:
                if self._provider_factory is not None:
                    self._providers[name] = self._provider_factory(name)
                else:
                    self._providers[name] = make_provider(
                        name, self.settings, executor=self._executor
                    )
            except ProviderError as exc:
                raise _ToolFailure(f"{DISABLED}: {exc}") from exc
        return self._providers[name]

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        """Jittered exponential backoff on retriable provider errors (tenacity: full jitter,
        uniform(0, min(retry_max_s, retry_base_s * 2**n))), bounded in attempts and by
        `deadline`; an offline provider fails at once, with the run's one offline statement."""
        s = self.settings
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.retry_attempts)
            | stop_before_delay(max(0.0, deadline - time.monotonic())),
            wait=wait_random_exponential(multiplier=s.retry_base_s, max=s.retry_max_s),
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retriable),
            before_sleep=lambda rs: log.info(
                "%s failed (%s); retry %d", what, rs.outcome and rs.outcome.exception(), attempts
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return await call()
        except ProviderError as exc:
            if exc.offline:
                self._offline_until = time.monotonic() + _OFFLINE_MEMORY_S
                raise _ToolFailure(self._offline_message(str(exc))) from exc
            if exc.retriable and attempts < s.retry_attempts:
                raise _ToolFailure(
                    f"{what}: {exc} (gave up after {attempts} attempt(s): time budget)"
                ) from exc
            raise _ToolFailure(f"{what}: {exc} (after {attempts} attempt(s))") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _offline_message(self, detail: str) -> str:
        """Offline is stated once (per toolkit, every `_OFFLINE_MEMORY_S`): the first failure
        says why in one line, later ones are short. A run's tool failures stay per item."""
        now = time.monotonic()
        if now < self._offline_stated_until:
            return f"{DISABLED}: offline (see the first offline error)"
        self._offline_stated_until = now + _OFFLINE_MEMORY_S
        first_line = " ".join(detail.split())[:200]
        return f"{DISABLED}: offline, the web is unreachable ({first_line})"

    async def _cache_get(self, tool: ToolName, key: str, notes: list[str]) -> Observation | None:
        """A cached success of this tool, else None: an entry that does not validate (poisoned,
        from another version, another tool's) is a miss, refetched and overwritten."""
        if self.cache is None:
            return None
        try:
            raw = await self.cache.get(key)
        except CacheError as exc:
            notes.append(f"cache read failed: {exc}")
            return None
        if raw is None:
            return None
        try:
            obs = Observation.model_validate(raw)
        except ValueError:  # pydantic's ValidationError
            notes.append("cache entry did not validate; refetched")
            return None
        if obs.tool != tool or not obs.ok:
            notes.append("cache entry did not match the call; refetched")
            return None
        return obs

    async def _cache_set(self, key: str, obs: Observation) -> None:
        if self.cache is None or not obs.ok:
            return
        payload = obs.model_copy(update={"cached": False, "elapsed_s": 0.0}).model_dump(mode="json")
        try:
            await self.cache.set(key, payload, self.settings.cache_ttl_s)
        except CacheError as exc:
            obs.notes.append(f"cache write failed: {exc}")

    async def _run(
        self,
        tool: ToolName,
        query: str,
        body: Callable[[float, list[str]], Awaitable[Observation]],
        *,
        key: str | None = None,
        from_cache: Callable[[Observation], Observation | None] | None = None,
    ) -> Observation:
        """Timeout, cache and failure handling shared by every tool."""
        start = time.monotonic()
        deadline = start + self.settings.timeout_s
        notes: list[str] = []
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                if key is not None:
                    hit = await self._cache_get(tool, key, notes)
                    if hit is not None and from_cache is not None:
                        hit = from_cache(hit)
                    if hit is not None:
                        hit.cached = True
                        hit.elapsed_s = time.monotonic() - start
                        return hit
                    if self.replay:
                        raise ReplayMiss(
                            f"replay: {tool} {untrusted(query, 200)!r} was not recorded (or its "
                            "images are missing); record the suite again to include it"
                        )
                obs = await body(deadline, notes)
        except TimeoutError:
            obs = Observation.failure(
                tool, query, f"{tool} timed out after {self.settings.timeout_s:g}s"
            )
        except FetchError as exc:
            if exc.kind == "offline":
                obs = Observation.failure(tool, query, self._offline_message(str(exc)))
            else:
                obs = Observation.failure(tool, query, str(exc))
        except ReplayMiss:
            raise
        except GroundworkError as exc:  # _ToolFailure, and any refusal of ours on the way
            obs = Observation.failure(tool, query, str(exc))
        obs.elapsed_s = time.monotonic() - start
        # Error texts and notes quote what servers sent (Content-Type, Content-Encoding, a
        # redirect's Location, page titles): they go through the same `untrusted()` as web text,
        # here at the source, so no consumer (react's error path, traces, SFT exports) can show
        # them raw. Idempotent, so renderers may apply it again.
        if obs.error is not None:
            obs.error = untrusted(obs.error, _MAX_ERROR_CHARS)
        obs.notes = [untrusted(n, _MAX_NOTE_CHARS) for n in [*notes, *obs.notes][:_MAX_NOTES]]
        if key is not None and obs.ok:
            await self._cache_set(key, obs)
        return obs

    # --- search -----------------------------------------------------------------------------

    async def search(self, queries: list[str], top_k: int | None = None) -> list[Observation]:
        """One observation per query, in order; the queries run concurrently."""
        k = top_k or self.settings.top_k
        return list(await asyncio.gather(*(self._search_one(q, k) for q in queries)))

    async def _search_one(self, query: str, k: int) -> Observation:
        async def body(deadline: float, notes: list[str]) -> Observation:
            if not query.strip():
                raise _ToolFailure("empty search query")
            provider = self._provider("text")
            hits = await self._retry(
                f"search via {provider.name}", lambda: provider.text(query, k), deadline
            )
            return Observation(
                tool="search", query=query, ok=True, items=list(hits[:k]), provider=provider.name
            )

        key = cache_key("search", query, k=k, p=self.settings.text_provider)
        return await self._run("search", query, body, key=key)

    # --- image_search -----------------------------------------------------------------------

    async def image_search(
        self, query: str, top_k: int | None = None, *, registry: ImageRegistry
    ) -> Observation:
        """Find, download, verify, de-duplicate, rank and store images for `query`; ids come
        from `registry`, the run's."""
        k = top_k or self.settings.max_images_per_query
        ranker_name = (self.retrieval.clip_model if self.retrieval else None) or "none"
        key = cache_key("image_search", query, k=k, p=self.settings.image_provider, r=ranker_name)
        # Call order, before any await; from here on only closures are defined until the
        # try/finally that always hands the turn on (see ImageRegistry).
        ticket = registry.reserve()

        def from_cache(obs: Observation) -> Observation | None:
            for item in obs.items:
                if not isinstance(item, ImageHit) or not self._stored(item.sha256):
                    return None  # the store was cleaned (or the entry lies): fetch again
                if item.thumbnail_sha256 and not self._stored(item.thumbnail_sha256):
                    return None
            return obs

        async def body(deadline: float, notes: list[str]) -> Observation:
            if not query.strip():
                raise _ToolFailure("empty image query")
            provider = self._provider("image")
            want = max(k * self.settings.image_candidates_factor, k)
            candidates = await self._retry(
                f"image search via {provider.name}",
                lambda: provider.images(query, want),
                deadline,
            )
            items = await self._collect_images(query, candidates, k, notes, deadline)
            if candidates and not items:
                raise _ToolFailure(
                    f"all {len(candidates)} image results failed to download or verify: "
                    + "; ".join(notes[:3])
                )
            return Observation(
                tool="image_search",
                query=query,
                ok=True,
                items=list(items),
                provider=provider.name,
            )

        try:
            obs = await self._run("image_search", query, body, key=key, from_cache=from_cache)
            return await self._assign_ids(obs, registry, ticket)
        finally:
            registry.release(ticket)

    @staticmethod
    async def _assign_ids(obs: Observation, registry: ImageRegistry, ticket: int) -> Observation:
        """IMG_### ids for the call's images, in rank order, once every earlier call has
        assigned its own: ids follow call order, never download or cache-read timing."""
        await registry.wait_turn(ticket)
        items = [
            it.model_copy(update={"img_id": registry.assign(it.sha256)})
            if isinstance(it, ImageHit)
            else it
            for it in obs.items
        ]
        return obs.model_copy(update={"items": items})

    def _stored(self, sha: str) -> bool:
        return bool(_SHA_RE.fullmatch(sha)) and self.store.exists(sha)

    async def _decode(self, data: bytes) -> DecodedImage:
        """Fully decode `data` (the proof it is an image) under the toolkit's decode budget and
        keep a reduced copy; the full decode is freed before the budget is given back.

        The header is read first (`core.images.probe_image`): its pixel count and the
        bytes the decode will take for that format are checked against the caps, so a bomb is
        refused without waiting for the budget, and the budget is taken in bytes. If the caller
        is cancelled (deadline, abandoned download) while the decode thread still runs, the
        budget is returned only when that thread is done with it. Raises `ImageRejected` only.
        """
        cap = self.settings.max_image_pixels
        budget = self.decode_budget.capacity
        probe = await self._in_thread(
            partial(probe_image, data, WEB_FORMATS, max_pixels=cap, max_bytes=budget)
        )
        side = max(self.settings.work_image_px, self.settings.thumbnail_px)
        n = await self.decode_budget.acquire(probe.decoded_bytes)
        decode = partial(
            decode_image, data, WEB_FORMATS, max_pixels=cap, max_bytes=budget, max_side=side
        )
        fut = asyncio.get_running_loop().run_in_executor(self._cpu, decode)
        later = False
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not fut.done():
                fut.add_done_callback(partial(self._release_after, n))
                later = True
            raise
        finally:
            if not later:
                self.decode_budget.release(n)

    def _release_after(self, n: int, fut: asyncio.Future[DecodedImage]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: nobody awaits it any more
        self.decode_budget.release(n)

    async def _download(self, cand: ImageCandidate) -> _Downloaded | str:
        """The image itself, else the provider's thumbnail of it (originals often refuse
        hot-linking with 403 while the search engine's thumbnail still loads). Any refusal is
        returned as a note: one bad candidate never costs the others."""
        errors = []
        for url in dict.fromkeys(u for u in (cand.image_url, cand.thumbnail_url) if u):
            try:
                res = await self.fetcher.fetch(url, kind="image")
                decoded = await self._decode(res.data)
                break
            except GroundworkError as exc:  # FetchError, ImageRejected
                errors.append(f"{untrusted(url, 120)}: {exc}")
        else:
            return "skipped " + " / then thumbnail ".join(errors)
        fingerprint = await self._in_thread(Fingerprint.of, decoded.image)
        return _Downloaded(cand, res.data, decoded, res.final_url, fingerprint)

    async def _collect_images(
        self,
        query: str,
        candidates: list[ImageCandidate],
        k: int,
        notes: list[str],
        deadline: float,
    ) -> list[ImageHit]:
        tasks = [asyncio.ensure_future(self._download(c)) for c in candidates]
        # Keep what arrived when the call's time is nearly up, rather than failing it whole;
        # the margin leaves time to rank and store.
        margin = min(2.0, self.settings.timeout_s * 0.15)
        budget = max(0.05, deadline - time.monotonic() - margin)
        try:
            done, pending = await asyncio.wait(tasks, timeout=budget) if tasks else (set(), set())
        finally:
            for task in tasks:  # the call itself may be cancelled: leave no download behind
                if not task.done():
                    task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            notes.append(f"{len(pending)} slow download(s) abandoned at the call's deadline")
        results = [t.result() for t in tasks if t in done]
        kept: list[_Downloaded] = []
        dup = 0
        for res in results:
            if isinstance(res, str):
                notes.append(res)
                continue
            limit = self.settings.phash_max_distance
            if any(res.fingerprint.near(o.fingerprint, limit) for o in kept):
                dup += 1
                continue
            kept.append(res)
        if dup:
            notes.append(f"{dup} near-duplicate image(s) collapsed (perceptual hash)")
        scores: list[float | None] = [None] * len(kept)
        ranker = await self._get_ranker(notes)
        if ranker is not None and kept:
            try:
                ranked = await self._in_thread(ranker.rank, query, [d.decoded.image for d in kept])
                scores = [float(s) for s in ranked]
                order = sorted(range(len(kept)), key=lambda i: -float(ranked[i]))
                kept, scores = [kept[i] for i in order], [scores[i] for i in order]
            except (RuntimeError, ValueError, OSError) as exc:
                notes.append(f"CLIP ranking failed, provider order kept: {exc}")
        hits: list[ImageHit] = []
        for d, score in zip(kept, scores, strict=True):
            if len(hits) == k:
                break
            try:
                sha, thumb_sha = await self._in_thread(self._store_image, d, query)
            except (OSError, ValueError, GroundworkError) as exc:  # disk full, bad meta file
                notes.append(f"could not store {untrusted(d.final_url, 120)}: {exc}")
                continue
            hits.append(
                ImageHit(
                    img_id="",  # assigned in call order by image_search (`_assign_ids`)
                    sha256=sha,
                    url=d.final_url,
                    source_url=d.candidate.source_url,
                    title=d.candidate.title,
                    width=d.decoded.width,
                    height=d.decoded.height,
                    score=score,
                    thumbnail_sha256=thumb_sha,
                )
            )
        return hits

    def _store_image(self, d: _Downloaded, query: str) -> tuple[str, str]:
        """Original bytes (verified by a full decode) plus a PNG thumbnail."""
        meta = {
            "width": d.decoded.width,
            "height": d.decoded.height,
            "url": d.final_url,
            "source_url": d.candidate.source_url,
            "title": d.candidate.title[:300],
            "query": query[:300],
            "origin": "image_search",
        }
        ref = self.store.put_bytes(d.data, d.decoded.media_type, meta)
        thumb = self.store.put_image(
            thumbnail(d.decoded.image, self.settings.thumbnail_px), {"thumbnail_of": ref.sha256}
        )
        return ref.sha256, thumb.sha256

    async def _get_ranker(self, notes: list[str]) -> ImageRanker | None:
        if self.retrieval is None or not self.retrieval.clip_model:
            return None
        async with self._ranker_lock:
            if not self._ranker_loaded:
                from retrieval.api import make_image_ranker

                try:
                    self._ranker = await self._in_thread(make_image_ranker, self.retrieval)
                except (RuntimeError, ValueError, OSError, ImportError) as exc:
                    self._ranker_error = f"{type(exc).__name__}: {exc}"
                self._ranker_loaded = True
        if self._ranker_error:
            notes.append(f"CLIP ranking unavailable: {self._ranker_error}")
        return self._ranker

    # --- browse -----------------------------------------------------------------------------

    async def browse(self, url: str, query: str) -> Observation:
        """Fetch one page and return its passages most relevant to `query`; the page is read
        (extracted, chunked, ranked) in a worker process killed at its time limit."""
        k = self.settings.top_k
        s = self.settings

        async def body(deadline: float, notes: list[str]) -> Observation:
            validate_url(url)
            res = await self.fetcher.fetch(url, kind="page", truncate=True)
            if res.truncated:
                notes.append(f"page cut at {self.settings.max_page_bytes} bytes")
            text = res.text()
            media = res.content_type.split(";")[0].strip().lower()
            is_html = "html" in media or "xml" in media or (not media and "<" in text[:2048])
            pool = self._extract_pool or shared_pool(s.extract_workers, s.extract_memory_mb)
            try:
                page = await pool.read(
                    text,
                    is_html=is_html,
                    query=query,
                    passage_chars=s.passage_chars,
                    k=k,
                    limits=PageLimits(
                        max_chars=s.max_page_bytes,
                        max_elements=s.extract_max_elements,
                        max_text_chars=s.extract_max_text_chars,
                    ),
                    timeout_s=max(0.05, min(s.extract_timeout_s, deadline - time.monotonic())),
                    tenant=current_tenant(f"toolkit-{id(self):x}"),
                )
            except ExtractError as exc:
                raise _ToolFailure(f"{untrusted(res.final_url, 200)}: {exc}") from exc
            notes.extend(page.notes)
            if not page.passages:
                raise _ToolFailure(f"{res.final_url}: no readable text on the page")
            if not page.relevant:
                notes.append("no passage mentions the query terms; showing the page's opening")
            title = page.title
            items = [Passage(text=t, source=res.final_url, score=sc) for t, sc in page.passages]
            if title:
                notes.append(f"page title: {title[:200]}")
            return Observation(
                tool="browse", query=query, ok=True, items=list(items), provider="web"
            )

        key = cache_key("browse", query, url=url.strip(), k=k)
        return await self._run("browse", f"{url} :: {query}", body, key=key)

    # --- knowledge_base -----------------------------------------------------------------------

    async def knowledge_base(
        self, query: str, top_k: int | None = None, *, registry: ImageRegistry
    ) -> Observation:
        """Passages and images from the user's local corpus (works offline).

        Image hits get their IMG_### ids from `registry`, the run's (the same one image_search
        uses), so a local image and a web image never share an id and the same picture found
        both ways keeps one. A text-only knowledge base (the default `groundwork kb add`, no
        CLIP model) answers with passages; why images were not searched goes to `notes`.
        """
        k = top_k or self.settings.top_k
        ticket = registry.reserve()  # call order, before any await (see ImageRegistry)

        async def body(deadline: float, notes: list[str]) -> Observation:
            if not query.strip():
                raise _ToolFailure("empty knowledge base query")
            from retrieval.api import KnowledgeBaseUnavailable

            kb = await self._get_kb()
            failures: list[str] = []
            texts: list[KBHit] = []
            images: list[KBHit] = []
            try:
                texts = await self._in_thread(kb.search_passages, query, k)
            except (KnowledgeBaseUnavailable, RuntimeError, ValueError, OSError) as exc:
                failures.append(f"passage search failed: {exc}")
            try:
                images = await self._in_thread(kb.search_images, query, k)
            except (KnowledgeBaseUnavailable, RuntimeError, ValueError, OSError) as exc:
                failures.append(f"image search skipped: {exc}")
            if len(failures) == 2:
                raise _ToolFailure("knowledge base search failed: " + "; ".join(failures))
            notes.extend(f[:400] for f in failures)
            items: list[SearchHit | ImageHit | Passage] = [
                Passage(
                    text=h.text or h.caption,
                    source=h.path or h.url or h.source,
                    score=h.score,
                )
                for h in texts
                if (h.text or h.caption)
            ]
            for h in images:
                stored = await self._store_kb_image(h.path, h.sha256, notes)
                if stored is None:
                    continue
                sha, thumb, w, hgt = stored
                items.append(
                    ImageHit(
                        img_id="",  # assigned in call order (`_assign_ids`)
                        sha256=sha,
                        url=h.url or "",
                        source_url=h.path or h.source,
                        title=h.caption,
                        width=w,
                        height=hgt,
                        score=h.score,
                        thumbnail_sha256=thumb,
                    )
                )
            return Observation(
                tool="knowledge_base", query=query, ok=True, items=items, provider="local"
            )

        try:
            obs = await self._run("knowledge_base", query, body)
            return await self._assign_ids(obs, registry, ticket)
        finally:
            registry.release(ticket)

    async def _get_kb(self) -> KnowledgeBaseAPI:
        if self.retrieval is None:
            raise _ToolFailure(
                "knowledge base not configured: the toolkit was built without retrieval "
                "settings (pass retrieval=RetrievalSettings(kb_dir=...))"
            )
        from retrieval.api import KnowledgeBaseUnavailable, open_knowledge_base

        async with self._kb_lock:
            if self._kb is None:
                try:
                    self._kb = await self._in_thread(open_knowledge_base, self.retrieval)
                except KnowledgeBaseUnavailable as exc:
                    raise _ToolFailure(f"knowledge base unavailable: {exc}") from exc
            return self._kb

    async def _store_kb_image(
        self, path: str | None, sha: str, notes: list[str]
    ) -> tuple[str, str, int, int] | None:
        """The local image into the artifact store (its sha256 is its identity, as for a web
        image), decoded under the same pixel budget; None with a note if it cannot be read."""
        where = path or sha
        try:
            if path and Path(path).is_file():
                data = await self._in_thread(Path(path).read_bytes)
            elif self._stored(sha):
                data = await self._in_thread(self.store.get_bytes, sha)
            else:
                notes.append(f"skipped local image {where}: file not found")
                return None
            decoded = await self._decode(data)
            return await self._in_thread(self._put_kb_image, data, decoded, path)
        except (GroundworkError, OSError, ValueError) as exc:  # unreadable, not an image
            notes.append(f"skipped local image {where}: {exc}")
            return None

    def _put_kb_image(
        self, data: bytes, decoded: DecodedImage, path: str | None
    ) -> tuple[str, str, int, int]:
        meta = {
            "width": decoded.width,
            "height": decoded.height,
            "path": path,
            "origin": "knowledge_base",
        }
        ref = self.store.put_bytes(data, decoded.media_type, meta)
        thumb = self.store.put_image(
            thumbnail(decoded.image, self.settings.thumbnail_px), {"thumbnail_of": ref.sha256}
        )
        return ref.sha256, thumb.sha256, decoded.width, decoded.height

    # --- a model's tool call --------------------------------------------------------------------

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | str | None,
        *,
        registry: ImageRegistry,
    ) -> Observation | list[Observation]:
        """Run one tool call as a model sent it (arguments as a dict or the JSON string the
        API returns), validated by the same models that generate `tools.registry.tool_specs`.

        The tool's `ToolSpec` (tools/registry.py) runs it: `search` answers with a list (one
        observation per query), the others with one observation. Never raises for what the
        model sent: an unknown tool or bad arguments come back as a failed observation whose
        error says what to fix.
        """
        try:
            spec = get_tool(name)
        except ToolCallError as exc:
            return Observation.failure("unknown", untrusted(name, 80), str(exc))
        try:
            args = parse_arguments(spec.name, arguments)
        except ToolCallError as exc:
            failed = Observation.failure(spec.name, _raw_query(arguments), str(exc))
            return [failed] if spec.answers_list else failed
        return await spec.run(self, args, registry)

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        for provider in self._providers.values():
            await provider.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._cpu.shutdown(wait=False, cancel_futures=True)


def _raw_query(arguments: object) -> str:
    """Something to label a refused call with, from whatever the model sent."""
    if isinstance(arguments, dict):
        for key in ("query", "queries", "url"):
            if key in arguments:
                return untrusted(arguments[key], 200)
    return untrusted(arguments if arguments is not None else "", 200)
