"""What every command shares: settings from the environment with flags on top, as one line of
error (exit 2) when a value is invalid, never a traceback."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from agent.settings import Settings
from core.errors import GroundworkError, InputError
from retrieval.text import clean_text as plain

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
R = TypeVar("R")
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int) -> typer.Exit:
    """One line on stderr (text from outside shown as text, never as markup or escapes)."""
    err_console.print(f"[bold red]error:[/] {escape(plain(message))}", soft_wrap=True)
    return typer.Exit(code)


def guarded(fn: Callable[[], R], *, verbose: bool, resume_hint: str | None = None) -> R:
    """Every failure ends in one line and exit 1 or 2 (130 interrupted); --verbose adds the
    traceback for a bug report."""
    try:
        return fn()
    except InputError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except GroundworkError as exc:
        if verbose:
            traceback.print_exc()
        raise fail(str(exc), EXIT_FAILED) from None
    except KeyboardInterrupt:
        hint = f"; everything finished is saved, resume with: {resume_hint}" if resume_hint else ""
        raise fail(f"interrupted{hint}", EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if verbose:
            traceback.print_exc()
        raise fail(
            f"unexpected {type(exc).__name__}: {exc} (a bug: rerun with --verbose and report it)",
            EXIT_FAILED,
        ) from None


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
