"""The HTTP API: `create_app(settings, service, runner_factory=...)` returns a FastAPI app.

Routes (the OpenAPI spec is at /openapi.json):
- `POST /v1/images/generations`: the OpenAI Images API; waits for the run(s) and answers with
  image URLs or base64, plus the research dossier in extra fields.
- `POST /v1/images/edits`: the OpenAI images.edit upload (multipart), run as a chat refine of
  the uploaded image.
- `POST /v1/runs` (202), `GET /v1/runs/{id}`, `GET /v1/runs/{id}/events` (SSE, resumable with
  Last-Event-ID), `POST /v1/runs/{id}/messages` (202), `POST /v1/runs/{id}/resume` (202),
  `DELETE /v1/runs/{id}`, `GET /v1/runs`.
- `GET /v1/artifacts/{sha256}` (bearer token of the owner, or a signed URL), `GET /v1/models`.
- `GET /healthz` (the process answers), `GET /readyz` (LLM, Redis, workers, run database,
  artifact and checkpoint stores; no token, no secrets), `GET /` (the web page).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.services import Services
from agent.settings import Settings
from agent.stages.intake import validate_prompt
from core.artifacts import ArtifactNotFound, ArtifactStore
from core.errors import GroundworkError, InputError
from core.images import ImageRejected, decode_image
from service.auth import Auth
from service.events import EventLog
from service.forms import field as form_field
from service.forms import parse_form
from service.health import Readiness
from service.limits import Limiter, LimiterUnavailable, LimitExceeded, MemoryLimiter, RedisLimiter
from service.parsing import MAX_EVENT_ID, BadValue, parse_event_id, parse_int, parse_size
from service.pgstore import AnyStore, PgRunStore
from service.runs import (
    RunConflict,
    RunManager,
    RunnerFactory,
    RunnerLike,
    ServiceBusy,
    default_runner_factory,
)
from service.schemas import (
    ErrorResponse,
    GroundworkExtra,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    MessageCreate,
    ModelInfo,
    ModelList,
    ReadinessView,
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
OPENAI_PATHS = ("/v1/images/", "/v1/models")
"""Routes of the OpenAI API: every error there, validation included, is a 400-class answer in
OpenAI's shape (their clients map 400 to BadRequestError; FastAPI's default 422 they do not
know)."""
ARTIFACT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
"""Media types an artifact is served as; anything else is a download (octet-stream)."""
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


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
    store: AnyStore
    events: EventLog
    limiter: Limiter
    services: Services
    artifacts: ArtifactStore
    manager: RunManager
    redis_url: str
    readiness: Readiness
    runner: RunnerLike

    def base_url(self, request: Request) -> str:
        return (self.cfg.public_url or str(request.base_url)).rstrip("/")


def make_limiter(cfg: ServiceSettings, redis_url: str) -> Limiter:
    if cfg.limits_backend == "memory":
        return MemoryLimiter(
            per_minute=cfg.rate_limit_per_minute,
            max_runs=cfg.max_concurrent_runs,
            run_ttl_s=cfg.run_timeout_s + 60,
            auth_per_minute=cfg.auth_failures_per_minute,
        )
    return RedisLimiter(
        redis_url,
        prefix=cfg.key_prefix,
        per_minute=cfg.rate_limit_per_minute,
        max_runs=cfg.max_concurrent_runs,
        run_ttl_s=cfg.run_timeout_s + 60,
        auth_per_minute=cfg.auth_failures_per_minute,
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


class SecurityHeaders:
    """`X-Content-Type-Options: nosniff` (and no referrer, no framing) on every answer: a
    browser never guesses HTML or script out of an image, an error or a JSON body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_headers)


class JsonTooLarge:
    """Starlette's body limit answers 413 as text/plain from outside the app's exception
    handlers; this rewrites that answer into the OpenAI error shape (JSON)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replacing = False

        async def send_json(message: Message) -> None:
            nonlocal replacing
            if message["type"] == "http.response.start" and message["status"] == 413:
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"text/plain"):
                    replacing = True
                    limit = scope.get("starlette.max_body_size")
                    answer = error_response(
                        413,
                        "the request body is too large"
                        + (f" (limit: {limit} bytes)" if isinstance(limit, int) else ""),
                        code="request_too_large",
                    )
                    body = answer.body
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 413,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                *SECURITY_HEADERS,
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
            if replacing:
                return  # the text/plain body of the replaced answer
            await send(message)

        await self.app(scope, receive, send_json)


class GroundworkAPI(FastAPI):
    """FastAPI with the 413 rewrite outside its body limit (user middleware sits inside it)."""

    def build_middleware_stack(self) -> ASGIApp:
        return JsonTooLarge(super().build_middleware_stack())


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
            store: AnyStore
            if settings.store.is_postgres():
                assert settings.store.url is not None
                store = await PgRunStore(
                    settings.store.url, max_size=settings.store.pool_max_size
                ).open()
            else:
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
                readiness=Readiness(
                    settings, cfg, services, limiter, store, services.store, runner.pending
                ),
                runner=runner,
            )
            await manager.recover()
            manager.start()
            log.info("service ready", extra={"db": str(store.path), "tokens": len(cfg.tokens)})
            yield

    app = GroundworkAPI(
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
    app.add_middleware(SecurityHeaders)
    app.add_middleware(AccessLog)
    _install_error_handlers(app)
    _install_routes(app, cfg)
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

    @app.exception_handler(BadValue)
    async def bad_value(request: Request, exc: BadValue) -> JSONResponse:
        return error_response(400, str(exc), param=exc.param, code="invalid_value")

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

    @app.exception_handler(NothingNewer)
    async def nothing_newer(request: Request, exc: NothingNewer) -> Response:
        return Response(status_code=204)

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
        openai = request.url.path.startswith(OPENAI_PATHS)
        return error_response(
            400 if openai else 422,
            message,
            param=".".join(loc) or None,
            code="invalid_value",
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
    """The caller's token name; 401 without a valid token, 429 past its rate limit, and 429
    for an address that sent too many missing or invalid tokens (checked before the token, so
    guessing one is limited to `auth_failures_per_minute`)."""
    client = request.client.host if request.client else "unknown"
    await ctx.limiter.check_auth(client)
    name = ctx.auth.authenticate(request.headers.get("authorization"))
    if name is None:
        await ctx.limiter.auth_failed(client)
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


def _prompt(text: str, settings: Settings) -> str:
    return validate_prompt(text, settings.agent.prompt_max_chars)


# -- routes ------------------------------------------------------------------------------------
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such run for this token"}
}


def _install_routes(app: FastAPI, cfg: ServiceSettings) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=ReadinessView,
        responses={503: {"model": ReadinessView, "description": "A dependency is down"}},
    )
    async def readyz(ctx: Ctx) -> JSONResponse:
        """Whether a run can finish now. No token needed, so the answer names no URL, host,
        path or key, and the LLM endpoints are probed at most once per READYZ_CACHE_S."""
        checks = await ctx.readiness.checks()
        ready = all(c.ok for c in checks.values())
        body = ReadinessView(ready=ready, checks=checks)
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
        size = parse_size(body.size)
        policy = MODELS.get(body.model or "", "planned")
        return await _images(
            ctx, request, response, tenant, prompt, policy, n, size, body.response_format
        )

    @app.post(
        "/v1/images/edits",
        tags=["openai"],
        response_model=ImagesResponse,
        max_body_size=cfg.max_upload_bytes,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": EDIT_FORM_SCHEMA}},
            }
        },
        responses={
            400: {"model": ErrorResponse, "description": "Invalid image, prompt, size or n"},
            413: {"model": ErrorResponse, "description": "Upload over MAX_UPLOAD_BYTES"},
            502: {"model": ErrorResponse, "description": "The run failed"},
            503: {"model": ErrorResponse, "description": "Server busy"},
        },
    )
    async def edits(
        request: Request, ctx: Ctx, tenant: Tenant, response: Response
    ) -> ImagesResponse:
        """OpenAI-compatible `images.edit`: the uploaded image, changed as the prompt says.
        Each run starts as a chat refine of that image (refine the prompt, then img2img,
        critique and repair), so the dossier and the run are there as for a generation."""
        form = parse_form(request.headers.get("content-type"), await request.body())
        image_part = form_field(form, "image", "image[]")
        if image_part is None or not image_part.data:
            raise ApiError(400, "image: send the image to edit as a file field", param="image")
        if form_field(form, "mask") is not None:
            raise ApiError(
                400,
                "mask: masked edits are not supported; send the image alone and say what to "
                "change in the prompt",
                param="mask",
            )
        prompt_part = form_field(form, "prompt")
        prompt = _prompt(prompt_part.text() if prompt_part else "", ctx.settings)
        n_part, size_part = form_field(form, "n"), form_field(form, "size")
        n = parse_int(n_part.text(), param="n", low=1, high=ctx.cfg.max_images) if n_part else 1
        size = parse_size(size_part.text()) if size_part else None
        fmt_part, model_part = form_field(form, "response_format"), form_field(form, "model")
        response_format = fmt_part.text().strip() if fmt_part else "url"
        if response_format not in ("url", "b64_json"):
            raise ApiError(
                400, 'response_format must be "url" or "b64_json"', param="response_format"
            )
        policy = MODELS.get(model_part.text().strip() if model_part else "", "planned")
        max_pixels = ctx.settings.tools.max_image_pixels
        try:
            decoded = await asyncio.to_thread(
                partial(decode_image, image_part.data, max_pixels=max_pixels, what="upload")
            )
        except ImageRejected as e:
            raise ApiError(400, f"image: {e}", param="image", code="invalid_image") from e
        ref = await asyncio.to_thread(ctx.artifacts.put_image, decoded.image, {"source": "upload"})
        await ctx.store.grant(tenant, [ref.sha256])
        uploaded = {
            "image": ref.model_dump(),
            "seed": ctx.settings.generator.seed,
            "model": "upload",
            "mode": "txt2img",
            "steps": 0,
        }
        if size is None:  # the edit keeps the upload's size, as OpenAI's does (within bounds)
            size = (min(max(decoded.width, 64), 2048), min(max(decoded.height, 64), 2048))
        return await _images(
            ctx, request, response, tenant, prompt, policy, n, size, response_format, uploaded
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

    @app.post(
        "/v1/runs/{run_id}/resume",
        tags=["runs"],
        status_code=202,
        response_model=RunView,
        responses={
            **NOT_FOUND,
            409: {"model": ErrorResponse, "description": "Busy, or nothing to resume"},
        },
    )
    async def resume_run(run_id: RunId, request: Request, ctx: Ctx, tenant: Tenant) -> RunView:
        """Continue a failed or cancelled turn from its checkpoint: the stages it finished are
        not run again. Its events continue on the same stream."""
        row = await owned_run(ctx, request, run_id, tenant)
        row = await ctx.manager.resume(row)
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
        response_class=EventSourceResponse,
        responses={
            200: {
                "description": "Server-Sent Events: `id` (per-run, increasing), `event` (status, "
                "stage, tool, progress, notice, llm, interrupt), `data` (JSON).",
            },
            204: {"description": "The run has finished and nothing is newer than Last-Event-ID"},
            400: {"model": ErrorResponse},
            **NOT_FOUND,
        },
    )
    async def run_events(
        run_id: RunId, ctx: Ctx, start: Annotated[int, Depends(events_start)]
    ) -> AsyncIterator[ServerSentEvent]:
        """Replay events after `start`, then follow live ones until the run stops being
        active. FastAPI frames them (EventSourceResponse); the stream's own keep-alive comment
        is sent every SSE_KEEPALIVE_S on a quiet run."""
        async for event in follow_events(ctx, run_id, start):
            yield event

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
        exp: Annotated[
            int | None, Query(ge=0, le=2**40, description="Signed URL: expiry (unix time)")
        ] = None,
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
            media = str(ctx.artifacts.meta(sha256).get("media_type") or "")
        except ArtifactNotFound as e:
            raise ApiError(404, f"no artifact {sha256}", code="artifact_not_found") from e
        headers = {
            "Cache-Control": "private, max-age=3600",
            # an artifact is never a page: no script, no plugin, no navigation inside it
            "Content-Security-Policy": "default-src 'none'; sandbox",
        }
        if media not in ARTIFACT_TYPES:
            # a downloaded file that says it is HTML or SVG is served as bytes to save
            media = "application/octet-stream"
            headers["Content-Disposition"] = f'attachment; filename="{sha256}"'
        return FileResponse(path, media_type=media, headers=headers)


EDIT_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image", "prompt"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, WebP or GIF"},
        "prompt": {"type": "string", "description": "What the edited image should show."},
        "n": {"type": "integer", "minimum": 1, "maximum": 10},
        "size": {"type": "string", "description": '"WIDTHxHEIGHT"; default: the image\'s'},
        "response_format": {"type": "string", "enum": ["url", "b64_json"]},
        "model": {"type": "string"},
    },
}


async def _images(
    ctx: AppContext,
    request: Request,
    response: Response,
    tenant: str,
    prompt: str,
    policy: str,
    n: int,
    size: tuple[int, int] | None,
    response_format: str | None,
    edit: dict[str, Any] | None = None,
) -> ImagesResponse:
    """One run per image (all or nothing), waited for, answered in the OpenAI Images shape."""
    width, height = size or (None, None)
    rows: list[RunRow] = []
    try:
        for i in range(n):
            context = {
                "width": width,
                "height": height,
                "seed": ctx.settings.generator.seed + i if n > 1 else None,
            }
            row = await ctx.manager.submit(
                tenant, prompt, policy=policy, context=context, kind="image", edit=edit
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
        if done is None:  # rows are never deleted; a missing one is a damaged database
            raise ApiError(500, f"run {run_id} disappeared from the database", type="server_error")
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
        if response_format == "b64_json":
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


class NothingNewer(GroundworkError):
    """A finished run has no event after the client's Last-Event-ID: 204 (EventSource stops
    reconnecting on 204)."""


async def events_start(
    run_id: RunId,
    request: Request,
    ctx: Ctx,
    tenant: Tenant,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="Resume after this event id."),
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_EVENT_ID, description="Same as Last-Event-ID, for clients without it."),
    ] = None,
) -> int:
    """The event id to stream after; runs before the stream starts, so a bad id is a 400,
    another token's run a 404, and a finished run with nothing newer a 204."""
    await owned_run(ctx, request, run_id, tenant)
    start = max(after or 0, parse_event_id(last_event_id) or 0)
    status = await ctx.store.status(run_id)
    if status not in ACTIVE and not await ctx.store.events_after(run_id, start, 1):
        raise NothingNewer(f"run {run_id} has no event after {start}")
    return start


async def follow_events(ctx: AppContext, run_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
    """Replay events after `after`, then follow live ones until the run stops being active.

    The status is read before the events: when it says finished, the events read next include
    the final one (both are committed together), so closing then never loses an event.
    """
    yield ServerSentEvent(retry=2000)
    keepalive = ctx.cfg.sse_keepalive_s
    # events written by this process wake the stream; another replica's only show in the
    # database, so a shared store is polled as well
    poll = min(ctx.cfg.sse_poll_s, keepalive) if ctx.store.shared else keepalive
    quiet_since = time.monotonic()
    wake = ctx.events.listen(run_id)
    try:
        while True:
            wake.clear()
            status = await ctx.store.status(run_id)
            batch = await ctx.store.events_after(run_id, after)
            for event in batch:
                yield ServerSentEvent(id=str(event.seq), event=event.kind, raw_data=event.data)
                after = event.seq
            if batch:
                quiet_since = time.monotonic()
                continue
            if status not in ACTIVE:
                return
            try:
                await asyncio.wait_for(wake.wait(), poll)
            except TimeoutError:
                if time.monotonic() - quiet_since >= keepalive:
                    yield ServerSentEvent(comment="keepalive")
                    quiet_since = time.monotonic()
    finally:
        ctx.events.unlisten(run_id, wake)
