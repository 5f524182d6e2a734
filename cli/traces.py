"""`groundwork traces ...`: run traces as training data. Parses, calls agent.sft, renders;
exit codes follow the main CLI (1 failed, 2 bad input). Names from run folders are printed as
plain text (no markup)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from agent.sft import FORMATS, Format, ImageMode, export_runs
from core.artifacts import ArtifactStore
from core.errors import GroundworkError, InputError
from retrieval.text import clean_text as plain

traces_app = typer.Typer(
    help="Run traces (every LLM and tool call, trace.jsonl in each run folder) as SFT data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(markup=False, emoji=False, highlight=False)
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False)
EXIT_FAILED, EXIT_USAGE = 1, 2


@traces_app.callback()
def traces() -> None:
    """Run traces (every LLM and tool call, trace.jsonl in each run folder) as SFT data."""


def _fail(message: object, code: int) -> typer.Exit:
    err_console.print(f"error: {plain(str(message))}", soft_wrap=True)
    return typer.Exit(code)


@traces_app.command("export")
def export(
    runs_dir: Annotated[
        Path, typer.Argument(help="A folder of run folders (groundwork run --out), or one run.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSONL file to write.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="openai (chat with tool calls) or sharegpt (LLaMA-Factory, <tool_call> text).",
        ),
    ] = "openai",
    only_matched: Annotated[
        bool,
        typer.Option(
            "--only-matched", help="Only runs whose final critique passed every requirement."
        ),
    ] = False,
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            help="data (data URIs, openai's default), url (files under --image-base-url) or "
            "files (relative paths, sharegpt's default).",
        ),
    ] = None,
    image_base_url: Annotated[
        str | None,
        typer.Option("--image-base-url", help="Where images/ beside the JSONL will be served."),
    ] = None,
    dict_arguments: Annotated[
        bool,
        typer.Option(
            "--dict-arguments",
            help="Tool-call arguments as JSON objects (Qwen/Llama templates), not strings.",
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List each skipped run and why.")
    ] = False,
) -> None:
    """One line per run: a react run's conversation as the policy saw it, a planned run as the
    equivalent tool-calling conversation. openai: images as data URIs (or URLs of files in
    images/ under --image-base-url), arguments as JSON strings (--dict-arguments: objects);
    sharegpt: images as files in images/ and LLaMA-Factory's dataset_info.json entry beside the
    data. Run folders are read without following links out of them, with every read capped."""
    if fmt not in FORMATS:
        raise _fail(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}", EXIT_USAGE)
    if images not in (None, *IMAGE_MODES):
        raise _fail(f"unknown --images {images!r}; use one of: {', '.join(IMAGE_MODES)}", 2)
    try:
        from cli.common import load_settings

        store = ArtifactStore.from_settings(load_settings().artifacts)
        report = export_runs(
            runs_dir.expanduser(),
            out.expanduser(),
            fmt=_format(fmt),
            only_matched=only_matched,
            store=store,
            images=_mode(images),
            image_base_url=image_base_url,
            dict_arguments=dict_arguments,
        )
    except InputError as exc:
        raise _fail(exc, EXIT_USAGE) from None
    except GroundworkError as exc:
        raise _fail(exc, EXIT_FAILED) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise _fail(f"{exc.strerror or exc}{where}", EXIT_FAILED) from None
    policies = ", ".join(f"{n} {p}" for p, n in sorted(report.by_policy.items())) or "none"
    console.print(
        f"wrote {report.written} example(s) ({policies}) to {plain(str(report.out))}; "
        f"{report.images} new image file(s); skipped {len(report.skipped)} run(s)",
        soft_wrap=True,
    )
    if report.dataset_info is not None:
        console.print(f"LLaMA-Factory entry: {plain(str(report.dataset_info))}", soft_wrap=True)
    for name, why in report.skipped if verbose else []:
        console.print(f"  skipped {plain(name)}: {plain(why)}", soft_wrap=True)


IMAGE_MODES: tuple[ImageMode, ...] = ("data", "url", "files")


def _mode(value: str | None) -> ImageMode | None:
    return next((m for m in IMAGE_MODES if m == value), None)


def _format(value: str) -> Format:
    return "sharegpt" if value == "sharegpt" else "openai"
