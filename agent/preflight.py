"""Checks that run before any work, so a bad setting fails in a second with one clear line
instead of after minutes of research."""

from __future__ import annotations

import httpx

from agent.embedded_llm import default_gguf
from agent.settings import ROLES, Policy, Role, Settings, override_fields
from core.errors import InputError
from generators.base import GeneratorError

_DEFAULT_FIX = "set it with --llm-base-url / GROUNDWORK_LLM__BASE_URL"


def check_endpoint(
    base_url: str,
    models: set[str],
    api_key: str,
    what: str,
    *,
    fix: str = _DEFAULT_FIX,
    key_env: str = "GROUNDWORK_LLM__API_KEY",
) -> None:
    """The endpoint answers `/models`; when it lists models, the ones we will ask for exist.
    `fix` says which setting points at this endpoint, `key_env` which one holds its key."""
    url = base_url.rstrip("/") + "/models"
    try:
        resp = httpx.get(url, headers={"Authorization": f"Bearer {api_key}"}, timeout=5.0)
    except httpx.HTTPError as exc:
        raise InputError(
            f"cannot reach the {what} endpoint {base_url} ({type(exc).__name__}: {exc}); is the "
            f"server running? {fix}"
        ) from exc
    if resp.status_code in (401, 403):
        raise InputError(
            f"the {what} endpoint {base_url} refused the API key (HTTP "
            f"{resp.status_code}); set {key_env}"
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


def roles_in_use(settings: Settings, policy: Policy | None = None) -> list[Role]:
    """The LLM roles a run will call: every text role, the policy only for react (`None` = the
    policy is not known yet, so it counts), the vision roles only when a critique VLM is
    configured, the judge only for best-of-N."""
    llm = settings.llm
    vision = bool(llm.critique_model and (llm.critique_base_url or llm.base_url))
    used: list[Role] = []
    for role, spec in ROLES.items():
        if spec.vision and not vision:
            continue
        if role == "policy" and policy == "planned":
            continue
        if role == "judge" and settings.agent.candidates < 2:
            continue
        used.append(role)
    return used


def _fix_hint(fields: set[str]) -> str:
    """How to point a role at another endpoint: its CLI flag where there is one, and its env."""
    flags = {row.path: row.flags[0] for row in override_fields() if row.cli}
    hints = []
    for name in sorted(fields):
        env = f"GROUNDWORK_LLM__{name.upper()}"
        flag = flags.get(f"llm.{name}")
        hints.append(f"{flag} / {env}" if flag else env)
    return "set it with " + ", ".join(hints)


def preflight(
    settings: Settings, *, check_generator: bool = True, policy: Policy | None = None
) -> None:
    """Every distinct endpoint the run's LLM roles use (`LLMSettings.endpoint_for`) answers and
    serves its models, checked once each before any work: a dead `--policy-base-url` is one
    line now, not a failure after minutes of research."""
    llm = settings.llm
    # (base_url, api_key) -> the models asked of it, the roles using it, the fields setting
    # the URL and the key
    endpoints: dict[tuple[str, str], tuple[set[str], list[Role], set[str], set[str]]] = {}
    embedded = False
    for role in roles_in_use(settings, policy):
        endpoint = llm.endpoint_for(role)
        if endpoint.base_url is None:
            embedded = True
            continue
        models, roles, fields, keys = endpoints.setdefault(
            (endpoint.base_url, endpoint.api_key), (set(), [], set(), set())
        )
        models.add(endpoint.model)
        roles.append(role)
        fields.add(llm.source_field(role, "base_url"))
        keys.add(f"GROUNDWORK_LLM__{llm.source_field(role, 'api_key').upper()}")
    if embedded:
        if llm.embedded_gguf is None:
            default_gguf()
        elif not llm.embedded_gguf.is_file():
            raise InputError(
                f"GGUF file {llm.embedded_gguf} not found (GROUNDWORK_LLM__EMBEDDED_GGUF)"
            )
    for (base_url, key), (models, roles, fields, keys) in endpoints.items():
        helper = any(ROLES[r].group == "helper" for r in roles)
        what = "LLM" if helper else "/".join(roles)
        check_endpoint(
            base_url, models, key, what, fix=_fix_hint(fields), key_env=" / ".join(sorted(keys))
        )
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
