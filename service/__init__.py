"""Groundwork as an HTTP service: OpenAI Images-compatible routes, runs with streamed events.

`create_app(settings, service, runner_factory=...)` builds the FastAPI app; `groundwork serve`
runs it with uvicorn. See service/README.md.
"""

from service.app import create_app
from service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
