"""What every command shares: settings from the environment with flags on top, as one line of
error (exit 2) when a value is invalid, never a traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, NoReturn, TypeVar

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


INTERRUPT_GRACE_S = 1.5
"""How long a Ctrl-C'd run may spend cleaning up before it leaves anyway (see InterruptWatch)."""


class InterruptWatch:
    """Ctrl-C that leaves within `grace_s`, for commands whose work is saved as it goes.

    The first SIGINT raises KeyboardInterrupt as Python's own handler does, so the command's
    clean-up runs (the graph is cancelled, the checkpointer closed, the embedded LLM server
    stopped). What Python cannot do is interrupt a worker thread busy in native code (torch's
    import, a model load, a diffusion step, a blocking `input()`), and both `asyncio.run` and
    the interpreter join such threads before the process ends: that join was the 4-14 s of
    issue 21.10. So once the clean-up is over (`leave`), or `grace_s` after the signal at the
    latest (a daemon timer), the process ends with `os._exit(130)`; a second Ctrl-C ends it at
    once. Nothing is lost: run checkpoints are written synchronously after every stage, trace
    lines are whole `write()`s, thread locks die with their process, and the guard of the
    embedded LLM server stops it when we go.

    Installed only in the main thread over Python's default handler (never over a handler a
    command set itself), and only a real signal arms it: a KeyboardInterrupt raised in code (a
    test) keeps the ordinary exit."""

    def __init__(self, message: str, grace_s: float) -> None:
        self.message = message
        self.grace_s = grace_s
        self.signalled = False
        self._previous: Any = None
        self._installed = False
        self._leaving = threading.Lock()

    def __enter__(self) -> InterruptWatch:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._installed and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.signalled:
            self.leave()  # a second Ctrl-C: the user will not wait for the clean-up
        self.signalled = True
        timer = threading.Timer(self.grace_s, self.leave)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    def leave(self) -> NoReturn:
        """Say so once, flush, and end the process without joining worker threads."""
        with self._leaving:  # the timer and the main thread may both get here: one line
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            err_console.print(f"[bold red]error:[/] {escape(plain(self.message))}", soft_wrap=True)
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)


def guarded(
    fn: Callable[[], R],
    *,
    verbose: bool,
    resume_hint: str | None = None,
    interrupt_grace_s: float | None = None,
) -> R:
    """Every failure ends in one line and exit 1 or 2 (130 interrupted); --verbose adds the
    traceback for a bug report. `interrupt_grace_s`: Ctrl-C leaves within that many seconds
    (InterruptWatch), for commands that save their work as they go; None: Python's own Ctrl-C."""
    hint = f"; everything finished is saved, resume with: {resume_hint}" if resume_hint else ""
    watch = InterruptWatch(f"interrupted{hint}", interrupt_grace_s or 0.0)
    try:
        if interrupt_grace_s is None:
            return fn()
        with watch:
            return fn()
    except InputError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except GroundworkError as exc:
        if verbose:
            traceback.print_exc()
        raise fail(str(exc), EXIT_FAILED) from None
    except KeyboardInterrupt:
        if watch.signalled:
            watch.leave()
        raise fail(watch.message, EXIT_INTERRUPTED) from None
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
