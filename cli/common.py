"""What every command shares: settings from the environment with flags on top, as one line of
error (exit 2) when a value is invalid, never a traceback."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agent.settings import Settings
from core.errors import InputError


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Environment and .env first, then `{"section": {"field": value}}` overrides (flags win)."""
    try:
        base = Settings()
        return base.merged(overrides) if overrides else base
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"invalid setting {where}: {first['msg']} (from a flag or GROUNDWORK_ env)"
        ) from exc
    except ValueError as exc:
        # pydantic-settings' SettingsError: an env value that is not the JSON its field needs
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise InputError(
            f"invalid setting: {exc}{cause}; fix that GROUNDWORK_ variable (env or .env)"
        ) from exc
