"""The options `run` and `chat` share, generated from the one override table.

`agent.settings.RunContext` lists every per-run override with its settings path and help text;
`with_overrides` turns each row marked `cli` into a Typer option, so a new override is one line
in that table and no flag-to-setting map is kept here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from agent.settings import Policy, RunContext, override_fields

OVERRIDES_PANEL = "Overrides (a flag wins over its GROUNDWORK_ variable)"

OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Folder for run folders.")]
ThreadOpt = Annotated[
    str | None, typer.Option("--thread", "-t", help="Thread id: resume or continue it.")
]
PolicyOpt = Annotated[
    Policy, typer.Option("--policy", help="planned (fixed research flow) or react (tool loop).")
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="No web tools, no hub downloads: local only.")
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Log what happens inside; tracebacks on failure.")
]


def env_name(path: str) -> str:
    """The environment variable of a settings path: llm.base_url -> GROUNDWORK_LLM__BASE_URL."""
    return "GROUNDWORK_" + "__".join(part.upper() for part in path.split("."))


def with_overrides(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command one option per CLI row of the override table.

    The command declares `overrides: RunContext` (last, keyword-only); Typer sees the generated
    options instead, and the wrapper folds their values into that one RunContext.
    """
    hints = get_type_hints(fn, include_extras=True)
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(fn).parameters.values()
        if p.name != "overrides"
    ]
    rows = [row for row in override_fields() if row.cli]
    generated = [
        inspect.Parameter(
            row.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                row.type | None,
                typer.Option(
                    *row.flags,
                    help=f"{row.help} (env {env_name(row.path)})",
                    rich_help_panel=OVERRIDES_PANEL,
                ),
            ],
        )
        for row in rows
    ]
    names = {row.name for row in rows}

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        overrides = RunContext(**{k: kwargs.pop(k) for k in names if k in kwargs})
        return fn(**kwargs, overrides=overrides)

    params = own + generated
    # Keyword-only parameters must come after positional ones in a signature.
    params.sort(key=lambda p: p.kind == inspect.Parameter.KEYWORD_ONLY)
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
