"""The HTTP API: `create_app(settings, service, runner_factory=...)` returns a FastAPI app.

Routes (the OpenAPI spec is at /openapi.json):
- `POST /v1/images/generations`: the OpenAI Images API; waits for the run(s) and answers with
  image URLs or base64, plus the research dossier in extra fields.
- `POST /v1/runs` (202), `GET /v1/runs/{id}`, `GET /v1/runs/{id}/events` (SSE, resumable with
  Last-Event-ID), `POST /v1/runs/{id}/messages` (202), `DELETE /v1/runs/{id}`, `GET /v1/runs`.
- `GET /v1/artifacts/{sha256}` (bearer token of the owner, or a signed URL), `GET /v1/models`.
- `GET /healthz` (the process answers), `GET /readyz` (LLM, Redis, workers, database), `GET /`
  (the web page).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.services import Services
from agent.settings import Settings
from agent.stages.intake import validate_prompt
from core.artifacts import ArtifactNotFound, ArtifactStore
from core.errors import GroundworkError, InputError
from service.auth import Auth
from service.events import EventLog
from service.health import readiness
from service.limits import Limiter, LimiterUnavailable, LimitExceeded, MemoryLimiter, RedisLimiter
from service.runs import RunConflict, RunManager, RunnerFactory, ServiceBusy, default_runner_factory
from service.schemas import (
    ErrorResponse,
    GroundworkExtra,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    MessageCreate,
    ModelInfo,
    ModelList,
    Readiness,
    RunCreate,
    RunList,
    RunView,
)
from service.settings import ServiceSettings
from service.store import ACTIVE, RunRow, RunStore
from service.views import artifact_url, run_view

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

STATIC = Path(__file__).parent / "static"
SHA_PATTERN = "^[0-9a-f]{64}$"
RUN_ID_PATTERN = "^run_[0-9a-f]{32}$"
MODELS = {"groundwork": "planned", "groundwork-planned": "planned", "groundwork-react": "react"}


class ApiError(GroundworkError):
    """An error answer in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse({**(extra or {}), **body}, status_code=status, headers=headers)


@dataclass
class AppContext:
    settings: Settings
    cfg: ServiceSettings
    auth: Auth
    store: RunStore
    events: EventLog
    limiter: Limiter
    services: Services
    artifacts: ArtifactStore
    manager: RunManager
    redis_url: str

    def base_url(self, request: Request) -> str:
        return (self.cfg.public_url or str(request.base_url)).rstrip("/")


def make_limiter(cfg: ServiceSettings, redis_url: str) -> Limiter:
    if cfg.limits_backend == "memory":
        return MemoryLimiter(
            per_minute=cfg.rate_limit_per_minute,
            max_runs=cfg.max_concurrent_runs,
            run_ttl_s=cfg.run_timeout_s + 60,
        )
    return RedisLimiter(
        redis_url,
        prefix=cfg.key_prefix,
        per_minute=cfg.rate_limit_per_minute,
        max_runs=cfg.max_concurrent_runs,
        run_ttl_s=cfg.run_timeout_s + 60,
        max_connections=cfg.redis_max_connections,
    )


class AccessLog:
    """One JSON line per request: method, path (never the query: it may hold a signature),
    status, duration, token name and run id. Headers, and so tokens, are never logged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = scope.get("state") or {}
            access_log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                    "tenant": state.get("tenant"),
                    "run_id": state.get("run_id"),
                },
            )


def create_app(
    settings: Settings | None = None,
    service: ServiceSettings | None = None,
    *,
    runner_factory: RunnerFactory | None = None,
) -> FastAPI:
    settings = settings or Settings()
    cfg = service or ServiceSettings()
    auth = Auth(cfg)
    if not auth.configured:
        raise GroundworkError(
            "no API tokens configured for the service; set GROUNDWORK_SERVICE__TOKENS, e.g. "
            '\'{"me": "<a long random string>"}\' (openssl rand -hex 24 makes one)'
        )
    factory = runner_factory or default_runner_factory
    redis_url = cfg.redis_url or settings.queue.redis_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            store = await RunStore(cfg.db).open()
            stack.push_async_callback(store.close)
            events = EventLog(store)
            await events.start()
            stack.push_async_callback(events.stop)
            limiter = make_limiter(cfg, redis_url)
            stack.push_async_callback(limiter.aclose)
            services = Services(settings)
            stack.push_async_callback(services.aclose)
            runner = factory(settings, services)
            await stack.enter_async_context(runner)
            manager = RunManager(cfg, store, events, runner, limiter)
            stack.push_async_callback(manager.shutdown, cfg.shutdown_grace_s)
            app.state.ctx = AppContext(
                settings=settings,
                cfg=cfg,
                auth=auth,
                store=store,
                events=events,
                limiter=limiter,
                services=services,
                artifacts=services.store,
                manager=manager,
                redis_url=redis_url,
            )
            await manager.recover()
            log.info("service ready", extra={"db": str(store.path), "tokens": len(cfg.tokens)})
            yield

    app = FastAPI(
        title="Groundwork",
        version="1",
        description="Research-grounded image generation over HTTP. OpenAI Images API compatible "
        "(`POST /v1/images/generations`), plus runs with streamed stage events.",
        lifespan=lifespan,
        max_body_size=cfg.max_body_bytes,
        responses={
            401: {"model": ErrorResponse, "description": "Missing or invalid token"},
            429: {"model": ErrorResponse, "description": "Rate or run limit (Retry-After)"},
        },
    )
    app.add_middleware(AccessLog)
    _install_error_handlers(app)
    _install_routes(app)
    return app


# -- errors ------------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status,
            str(exc),
            type=exc.type,
            param=exc.param,
            code=exc.code,
            headers=exc.headers,
        )

    @app.exception_handler(LimitExceeded)
    async def limited(request: Request, exc: LimitExceeded) -> JSONResponse:
        return error_response(
            429,
            str(exc),
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError) -> JSONResponse:
        return error_response(400, str(exc), param="prompt", code="invalid_prompt")

    @app.exception_handler(ServiceBusy)
    async def busy(request: Request, exc: ServiceBusy) -> JSONResponse:
        return error_response(503, str(exc), type="server_busy", headers={"Retry-After": "5"})

    @app.exception_handler(LimiterUnavailable)
    async def no_limiter(request: Request, exc: LimiterUnavailable) -> JSONResponse:
        log.error("limiter unavailable: %s", exc)
        return error_response(
            503,
            "the service's rate limiter is unavailable; retry shortly",
            type="server_error",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RunConflict)
    async def conflict(request: Request, exc: RunConflict) -> JSONResponse:
        return error_response(409, str(exc), code="run_active")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", []) if p not in ("body", "query", "path")]
        message = f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid')}"
        return error_response(
            422,
            message,
            param=".".join(loc) or None,
            code="invalid_value",
            extra={"detail": errors},
        )


# -- dependencies ------------------------------------------------------------------------------
bearer = HTTPBearer(auto_error=False, description="An API token (GROUNDWORK_SERVICE__TOKENS).")


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


async def require_tenant(
    request: Request,
    ctx: Ctx,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    """The caller's token name; 401 without a valid token, 429 past its rate limit."""
    name = ctx.auth.authenticate(request.headers.get("authorization"))
    if name is None:
        raise ApiError(
            401,
            "missing or invalid bearer token (send Authorization: Bearer <token>)",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.tenant = name
    await ctx.limiter.hit(name)
    return name


Tenant = Annotated[str, Depends(require_tenant)]
RunId = Annotated[str, PathParam(pattern=RUN_ID_PATTERN, description="A run id (run_...).")]


async def owned_run(ctx: AppContext, request: Request, run_id: str, tenant: str) -> RunRow:
    """The run if this token owns it; another token's run is indistinguishable from none."""
    request.state.run_id = run_id
    row = await ctx.store.get(run_id)
    if row is None or row.owner != tenant:
        raise ApiError(404, f"no run {run_id}", code="run_not_found")
    return row


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size.strip().lower() in ("", "auto"):
        return None, None
    w, sep, h = size.strip().lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit()):
        raise ApiError(400, f'size {size!r} is not "WIDTHxHEIGHT", e.g. "512x512"', param="size")
    width, height = int(w), int(h)
    if not (64 <= width <= 2048 and 64 <= height <= 2048):
        raise ApiError(400, f"size {size!r}: each side must be 64 to 2048 pixels", param="size")
    return width, height


def _prompt(text: str, settings: Settings) -> str:
    return validate_prompt(text, settings.agent.prompt_max_chars)


# -- routes ------------------------------------------------------------------------------------
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such run for this token"}
}


def _install_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "A dependency is down"}},
    )
    async def readyz(ctx: Ctx) -> JSONResponse:
        checks = await readiness(
            ctx.settings, ctx.cfg, ctx.services, ctx.limiter, ctx.store, ctx.redis_url
        )
        ready = all(c.ok for c in checks.values())
        body = Readiness(ready=ready, checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/v1/models", tags=["openai"], response_model=ModelList)
    async def models(tenant: Tenant) -> ModelList:
        return ModelList(data=[ModelInfo(id=m) for m in MODELS])

    @app.post(
        "/v1/images/generations",
        tags=["openai"],
        response_model=ImagesResponse,
        responses={
            400: {"model": ErrorResponse, "description": "Invalid prompt, size or n"},
            409: {"model": ErrorResponse, "description": "The agent asked a question"},
            502: {"model": ErrorResponse, "description": "The run failed"},
            503: {"model": ErrorResponse, "description": "Server busy"},
        },
    )
    async def images(
        body: ImageGenerationRequest, request: Request, ctx: Ctx, tenant: Tenant, response: Response
    ) -> ImagesResponse:
        """OpenAI-compatible: one run per image; answers when they finish (a disconnect does
        not stop them: their ids are in X-Groundwork-Run-Ids and GET /v1/runs)."""
        n = 1 if body.n is None else body.n
        if not 1 <= n <= ctx.cfg.max_images:
            raise ApiError(400, f"n must be 1 to {ctx.cfg.max_images}", param="n")
        if body.stream:
            raise ApiError(
                400,
                "streamed image generation is not supported; create a run (POST /v1/runs) and "
                "follow its events (GET /v1/runs/{id}/events)",
                param="stream",
            )
        prompt = _prompt(body.prompt, ctx.settings)
        width, height = parse_size(body.size)
        policy = MODELS.get(body.model or "", "planned")
        rows: list[RunRow] = []
        try:
            for i in range(n):
                context = {
                    "width": width,
                    "height": height,
                    "seed": ctx.settings.generator.seed + i if n > 1 else None,
                }
                row = await ctx.manager.submit(
                    tenant, prompt, policy=policy, context=context, kind="image"
                )
                rows.append(row)
        except GroundworkError:
            for row in rows:  # all or nothing: do not leave half a request running
                await ctx.manager.cancel(row)
            raise
        ids = [r.id for r in rows]
        request.state.run_id = ",".join(ids)
        await asyncio.gather(*(ctx.manager.wait(i) for i in ids))
        base = ctx.base_url(request)
        views: list[RunView] = []
        data: list[ImageData] = []
        for run_id in ids:
            done = await ctx.store.get(run_id)
            assert done is not None  # rows are never deleted
            row = done
            view = run_view(row, ctx.auth, base)
            views.append(view)
            if row.status == "interrupted":
                raise ApiError(
                    409,
                    f"the agent asked a question in run {row.id}: {row.question}; answer it with "
                    f"POST /v1/runs/{row.id}/messages",
                    code="question",
                    headers={"X-Groundwork-Run-Ids": ",".join(ids)},
                )
            if row.status != "done" or view.image is None:
                raise ApiError(
                    502,
                    f"run {row.id} {row.status}: {row.error or 'no image was made'}",
                    type="server_error",
                    code="run_failed",
                    headers={"X-Groundwork-Run-Ids": ",".join(ids)},
                )
            sha = view.image.sha256
            if body.response_format == "b64_json":
                raw = await asyncio.to_thread(ctx.artifacts.get_bytes, sha)
                item = ImageData(b64_json=base64.b64encode(raw).decode(), run_id=row.id)
            else:
                item = ImageData(url=artifact_url(ctx.auth, sha, base), run_id=row.id)
            item.revised_prompt = view.revised_prompt
            data.append(item)
        response.headers["X-Groundwork-Run-Ids"] = ",".join(ids)
        return ImagesResponse(
            created=int(time.time()),
            data=data,
            size=f"{width}x{height}" if width and height else None,
            dossier=views[0].dossier if views else None,
            groundwork=GroundworkExtra(runs=views),
        )

    @app.post(
        "/v1/runs",
        tags=["runs"],
        status_code=202,
        response_model=RunView,
        responses={400: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    )
    async def create_run(body: RunCreate, request: Request, ctx: Ctx, tenant: Tenant) -> RunView:
        """Start a run; follow it at events_url, read it at GET /v1/runs/{id}."""
        prompt = _prompt(body.prompt, ctx.settings)
        context = body.model_dump(exclude={"prompt", "policy"})
        row = await ctx.manager.submit(tenant, prompt, policy=body.policy, context=context)
        request.state.run_id = row.id
        return run_view(row, ctx.auth, ctx.base_url(request))

    @app.get("/v1/runs", tags=["runs"], response_model=RunList)
    async def list_runs(
        request: Request,
        ctx: Ctx,
        tenant: Tenant,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> RunList:
        rows = await ctx.store.list_runs(tenant, limit)
        base = ctx.base_url(request)
        return RunList(data=[run_view(r, ctx.auth, base) for r in rows])

    @app.get("/v1/runs/{run_id}", tags=["runs"], response_model=RunView, responses=NOT_FOUND)
    async def get_run(run_id: RunId, request: Request, ctx: Ctx, tenant: Tenant) -> RunView:
        row = await owned_run(ctx, request, run_id, tenant)
        return run_view(row, ctx.auth, ctx.base_url(request))

    @app.post(
        "/v1/runs/{run_id}/messages",
        tags=["runs"],
        status_code=202,
        response_model=RunView,
        responses={**NOT_FOUND, 409: {"model": ErrorResponse, "description": "Run still busy"}},
    )
    async def post_message(
        run_id: RunId, body: MessageCreate, request: Request, ctx: Ctx, tenant: Tenant
    ) -> RunView:
        """Continue the run's thread: refine the image, ask for a new one, or answer its
        question. Its events continue on the same stream with higher ids."""
        row = await owned_run(ctx, request, run_id, tenant)
        text = _prompt(body.message, ctx.settings)
        row = await ctx.manager.message(row, text)
        return run_view(row, ctx.auth, ctx.base_url(request))

    @app.delete(
        "/v1/runs/{run_id}",
        tags=["runs"],
        response_model=RunView,
        responses={**NOT_FOUND, 409: {"model": ErrorResponse, "description": "Already finished"}},
    )
    async def cancel_run(run_id: RunId, request: Request, ctx: Ctx, tenant: Tenant) -> RunView:
        row = await owned_run(ctx, request, run_id, tenant)
        if not await ctx.manager.cancel(row):
            raise ApiError(409, f"run {run_id} already {row.status}", code="run_finished")
        row = await owned_run(ctx, request, run_id, tenant)
        return run_view(row, ctx.auth, ctx.base_url(request))

    @app.get(
        "/v1/runs/{run_id}/events",
        tags=["runs"],
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "Server-Sent Events: `id` (per-run, increasing), `event` (status, "
                "stage, tool, progress, notice, llm, interrupt), `data` (JSON).",
            },
            204: {"description": "The run has finished and nothing is newer than Last-Event-ID"},
            400: {"model": ErrorResponse},
            **NOT_FOUND,
        },
    )
    async def run_events(
        run_id: RunId,
        request: Request,
        ctx: Ctx,
        tenant: Tenant,
        last_event_id: Annotated[
            str | None,
            Header(alias="Last-Event-ID", description="Resume after this event id."),
        ] = None,
        after: Annotated[
            int | None, Query(ge=0, description="Same as Last-Event-ID, for clients without it.")
        ] = None,
    ) -> Response:
        await owned_run(ctx, request, run_id, tenant)
        start = after or 0
        if last_event_id not in (None, ""):
            assert last_event_id is not None
            if not last_event_id.strip().isdigit():
                raise ApiError(400, "Last-Event-ID must be an event id (an integer)")
            start = max(start, int(last_event_id.strip()))
        status = await ctx.store.status(run_id)
        if status not in ACTIVE and not await ctx.store.events_after(run_id, start, 1):
            return Response(status_code=204)  # EventSource stops reconnecting on 204
        return StreamingResponse(
            _sse(ctx, run_id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/v1/artifacts/{sha256}",
        tags=["artifacts"],
        response_class=FileResponse,
        responses={
            200: {"content": {"image/png": {}}, "description": "The image bytes"},
            403: {"model": ErrorResponse, "description": "Bad or expired signature"},
            404: {"model": ErrorResponse, "description": "No such artifact for this token"},
        },
    )
    async def artifact(
        sha256: Annotated[str, PathParam(pattern=SHA_PATTERN)],
        request: Request,
        ctx: Ctx,
        _creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
        exp: Annotated[int | None, Query(description="Signed URL: expiry (unix time)")] = None,
        sig: Annotated[str | None, Query(description="Signed URL: signature")] = None,
    ) -> FileResponse:
        """An image, to its owner (bearer token) or to whoever holds a signed URL."""
        if exp is not None and sig is not None:
            if not ctx.auth.verify(sha256, exp, sig):
                raise ApiError(403, "the signed URL is invalid or has expired", code="bad_url")
        else:
            tenant = await require_tenant(request, ctx, None)
            if not await ctx.store.owns(tenant, sha256):
                raise ApiError(404, f"no artifact {sha256}", code="artifact_not_found")
        try:
            path = ctx.artifacts.path(sha256)
            media = ctx.artifacts.meta(sha256).get("media_type", "image/png")
        except ArtifactNotFound as e:
            raise ApiError(404, f"no artifact {sha256}", code="artifact_not_found") from e
        return FileResponse(
            path, media_type=media, headers={"Cache-Control": "private, max-age=3600"}
        )


async def _sse(ctx: AppContext, run_id: str, after: int) -> AsyncIterator[str]:
    """Replay events after `after`, then follow live ones until the run stops being active.

    The status is read before the events: when it says finished, the events read next include
    the final one (both are committed together), so closing then never loses an event.
    """
    yield "retry: 2000\n\n"
    wake = ctx.events.listen(run_id)
    try:
        while True:
            wake.clear()
            status = await ctx.store.status(run_id)
            batch = await ctx.store.events_after(run_id, after)
            for event in batch:
                yield f"id: {event.seq}\nevent: {event.kind}\ndata: {event.data}\n\n"
                after = event.seq
            if batch:
                continue
            if status not in ACTIVE:
                return
            try:
                await asyncio.wait_for(wake.wait(), ctx.cfg.sse_keepalive_s)
            except TimeoutError:
                yield ": keepalive\n\n"
    finally:
        ctx.events.unlisten(run_id, wake)
