"""`groundwork serve`: the HTTP API (service/) under uvicorn.

Flags override the environment (GROUNDWORK_SERVICE__*, and GROUNDWORK_* for the agent), which
overrides `.env` and the defaults. Logs are JSON lines on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (8080).")] = None,
    db: Annotated[Path | None, typer.Option(help="SQLite file of runs and events.")] = None,
    max_running: Annotated[
        int | None, typer.Option(min=1, help="Runs this process executes at once.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve Groundwork over HTTP: OpenAI Images API, runs with SSE events, a web page at /."""
    from pydantic import ValidationError

    from agent.settings import Settings
    from core.errors import GroundworkError

    try:
        import uvicorn

        from service.app import create_app
        from service.logs import configure_json_logging
        from service.settings import ServiceSettings
    except ImportError as e:
        typer.echo(
            f"error: the service needs its extra ({e.name} is missing): pip install "
            "'groundwork[serve]'",
            err=True,
        )
        raise typer.Exit(2) from e

    overrides: dict[str, Any] = {"host": host, "port": port, "db": db, "max_running": max_running}
    try:
        cfg = ServiceSettings(**{k: v for k, v in overrides.items() if v is not None})
        settings = Settings()
        app = create_app(settings, cfg)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        typer.echo(f"error: invalid setting {where}: {first['msg']}", err=True)
        raise typer.Exit(2) from e
    except GroundworkError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    configure_json_logging(log_level)
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        access_log=False,  # service.app.AccessLog logs requests without query strings
        log_config=None,  # keep the JSON logging configured above
        timeout_graceful_shutdown=int(cfg.shutdown_grace_s) + 5,
        proxy_headers=True,
        # longer than clients' idle expiry (httpx: 5 s), so a client never reuses a connection
        # the server is closing at that very moment
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    typer.run(serve)
