"""`groundwork`: the command line. It parses, calls library code and renders; nothing else.

Exit codes: 0 an image was made; 1 the run failed (the run folder says why); 2 bad input or
configuration (one line on stderr, before any work starts); 130 interrupted. A traceback is
shown only with --verbose.

Commands are registered lazily: this module imports only Typer, and a command's module (with
its settings, graphs, models) is imported when that command runs or shows its help, so
`groundwork --help` and `groundwork worker --help` start in a fraction of a second.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class LazyCommand(NamedTuple):
    module: str
    attr: str
    help: str


COMMANDS: dict[str, LazyCommand] = {
    "run": LazyCommand(
        "cli.run", "run", "Research PROMPT, write a grounded prompt, generate, critique."
    ),
    "chat": LazyCommand(
        "cli.run", "chat", "A conversation about images: new images and refinements."
    ),
    "worker": LazyCommand(
        "cli.worker", "worker", "GPU worker: serve generation jobs from the Redis queue."
    ),
    "serve": LazyCommand("cli.serve", "serve", "The HTTP API (OpenAI Images compatible) and UI."),
    "kb": LazyCommand("cli.kb", "kb_app", "The local knowledge base (images and documents)."),
    "eval": LazyCommand("cli.eval", "eval_app", "A/B evaluation of arms on benchmark suites."),
    "traces": LazyCommand("cli.traces", "traces_app", "Run traces as SFT data."),
    "tune": LazyCommand(
        "cli.tune", "tune_app", "Train the policy (SFT on traces) and the generator (LoRA)."
    ),
}
"""Every command: where it lives and its one-line help (shown without importing it)."""


class LazyGroup(TyperGroup):
    """A Typer group whose commands are imported on first use."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        if self._listing:
            # The group's own --help lists commands from the table, importing none of them.
            return TyperCommand(cmd_name, help=spec.help)
        return load_command(cmd_name, spec)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def load_command(name: str, spec: LazyCommand) -> Any:
    """Import one command; a command whose module is missing or broken fails with one line
    (exit 2) when it is used, never at startup."""
    try:
        module = importlib.import_module(spec.module)
        target: Any = getattr(module, spec.attr)
    except (ImportError, AttributeError) as exc:
        return _broken(name, spec, exc)
    if isinstance(target, typer.Typer):
        command = typer.main.get_command(target)
    else:
        holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        holder.command(name=name)(target)
        command = typer.main.get_command(holder)
    command.name = name
    return command


def _broken(name: str, spec: LazyCommand, exc: Exception) -> Any:
    def explain() -> None:
        typer.echo(
            f"error: command {name!r} is not available: {spec.module} could not be loaded "
            f"({type(exc).__name__}: {exc}); reinstall Groundwork or update the checkout",
            err=True,
        )
        raise typer.Exit(EXIT_USAGE)

    return TyperCommand(
        name,
        callback=explain,
        help=f"(unavailable) {spec.help}",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


app = typer.Typer(
    name="groundwork",
    cls=LazyGroup,
    help="Research-grounded image generation: find what a prompt names that an image model "
    "does not know, research it (web, images, your local knowledge base), write a grounded "
    "prompt, generate, critique and fix.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    pass  # the group's own options; its help is the Typer's


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
