"""Checks that run before any work, so a bad setting fails in a second with one clear line
instead of after minutes of research."""

from __future__ import annotations

import httpx

from agent.embedded_llm import default_gguf
from agent.settings import Settings
from core.errors import InputError
from generators.base import GeneratorError


def check_endpoint(base_url: str, models: set[str], api_key: str, what: str) -> None:
    """The endpoint answers `/models`; when it lists models, the ones we will ask for exist."""
    url = base_url.rstrip("/") + "/models"
    try:
        resp = httpx.get(url, headers={"Authorization": f"Bearer {api_key}"}, timeout=5.0)
    except httpx.HTTPError as exc:
        raise InputError(
            f"cannot reach the {what} endpoint {base_url} ({type(exc).__name__}: {exc}); is the "
            "server running? set it with --llm-base-url / GROUNDWORK_LLM__BASE_URL"
        ) from exc
    if resp.status_code in (401, 403):
        raise InputError(
            f"the {what} endpoint {base_url} refused the API key (HTTP "
            f"{resp.status_code}); set GROUNDWORK_LLM__API_KEY"
        )
    if resp.status_code != 200:
        return  # some servers have no /models; the first real call will say what is wrong
    try:
        listed = {m["id"] for m in resp.json().get("data", []) if "id" in m}
    except (ValueError, TypeError, AttributeError):
        return
    missing = sorted(m for m in models if listed and m not in listed)
    if missing:
        raise InputError(
            f"unknown model {', '.join(missing)} at the {what} endpoint {base_url}; it serves: "
            f"{', '.join(sorted(listed)[:10])}"
        )


def preflight(settings: Settings, *, check_generator: bool = True) -> None:
    llm = settings.llm
    key = llm.api_key.get_secret_value()
    if llm.base_url:
        stages = {llm.model_for("analyze"), llm.model_for("synthesize")}
        check_endpoint(llm.base_url, stages, key, "LLM")
    else:
        if llm.embedded_gguf is None:
            default_gguf()
        elif not llm.embedded_gguf.is_file():
            raise InputError(
                f"GGUF file {llm.embedded_gguf} not found (GROUNDWORK_LLM__EMBEDDED_GGUF)"
            )
    critique_url = llm.critique_base_url or llm.base_url
    if llm.critique_model and critique_url:
        check_endpoint(critique_url, {llm.critique_model}, key, "critique")
    if check_generator and _resident(settings):
        from generators.diffusers_backend import check_model_available

        try:
            check_model_available(
                settings.generator.model, local_files_only=settings.generator.local_files_only
            )
        except GeneratorError as exc:
            raise InputError(str(exc)) from exc


def _resident(settings: Settings) -> bool:
    """The backend loads a diffusers model in this process ("inprocess" or its alias
    "diffusers"), looked up in the registry rather than compared by name."""
    from generators.factory import find_backend

    try:
        return find_backend(settings.generator.backend).name == "inprocess"
    except GeneratorError as exc:
        raise InputError(str(exc)) from exc
