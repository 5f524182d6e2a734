"""`groundwork`: the command line. It parses, calls library code and renders; nothing else.

Exit codes: 0 an image was made; 1 the run failed (the run folder says why); 2 bad input or
configuration (one line on stderr, before any work starts); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from langchain_core.runnables import RunnableConfig
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from agent.errors import GroundworkError, InputError
from agent.nodes import validate_prompt
from agent.preflight import preflight
from agent.report import make_run_dir, write_run
from agent.services import Services
from agent.settings import Settings
from agent.state import RunState
from generators.base import GeneratorError
from generators.worker_cli import worker
from retrieval.cli import kb_app

app = typer.Typer(
    name="groundwork",
    help="Research-grounded image generation: find what a prompt names that an image model "
    "does not know, research it (web, images, your local knowledge base), write a grounded "
    "prompt, generate, critique and fix.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

# -- options shared by run and chat ------------------------------------------------------------
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Folder for run folders.")]
ThreadOpt = Annotated[
    str | None, typer.Option("--thread", "-t", help="Thread id: resume or continue it.")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Diffusers model id or local folder.")
]
SeedOpt = Annotated[int | None, typer.Option(help="Generation seed.")]
WidthOpt = Annotated[int | None, typer.Option(help="Image width in pixels.")]
HeightOpt = Annotated[int | None, typer.Option(help="Image height in pixels.")]
StepsOpt = Annotated[int | None, typer.Option(help="Denoising steps.")]
LLMUrlOpt = Annotated[
    str | None,
    typer.Option("--llm-base-url", help="OpenAI-compatible endpoint (default: embedded)."),
]
LLMModelOpt = Annotated[str | None, typer.Option("--llm-model", help="LLM model name.")]
CritiqueOpt = Annotated[str | None, typer.Option("--critique-model", help="VLM for critique.")]
CritiqueUrlOpt = Annotated[
    str | None, typer.Option("--critique-base-url", help="Endpoint of the critique VLM.")
]
RoundsOpt = Annotated[int | None, typer.Option("--max-rounds", help="Critique rounds.")]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="No web tools, no hub downloads: local only.")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens inside.")]


def _settings(
    *,
    out: Path | None = None,
    model: str | None = None,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    llm_base_url: str | None = None,
    llm_model: str | None = None,
    critique_model: str | None = None,
    critique_base_url: str | None = None,
    max_rounds: int | None = None,
    offline: bool = False,
) -> Settings:
    """Environment first, then the flags on top (a flag always wins over an env var)."""
    try:
        base = Settings()
        overrides: dict[str, Any] = {
            "runs_dir": out,
            "generator": {
                "model": model,
                "seed": seed,
                "width": width,
                "height": height,
                "steps": steps,
                "local_files_only": True if offline else None,
            },
            "llm": {
                "base_url": llm_base_url,
                "model": llm_model,
                "critique_model": critique_model,
                "critique_base_url": critique_base_url,
            },
            "agent": {"max_rounds": max_rounds},
            "tools": {"text_provider": "none", "image_provider": "none"} if offline else {},
        }
        return base.merged(overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"invalid setting {where}: {first['msg']} (from a flag or GROUNDWORK_ env)"
        ) from exc


def _fail(message: str, code: int) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )
    for noisy in ("httpx", "httpcore", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class StageRenderer:
    """Prints each stage as it finishes and a progress bar while an image is being made."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress, self.task = None, None

    def update(self, node: str, update: dict[str, Any] | None) -> None:
        if node == "generate":
            self._stop_progress()
        for event in (update or {}).get("stages", []):
            console.print(
                f"[bold cyan]{event['stage']:>10}[/] {event['summary']} "
                f"[dim]({event['elapsed_s']:.1f}s)[/]",
                highlight=False,
            )
        for notice in (update or {}).get("notices", []):
            console.print(f"[yellow]{'note':>10}[/] {notice}", highlight=False)

    def custom(self, data: dict[str, Any]) -> None:
        if "progress" in data:
            if self.progress is None:
                self.progress = Progress(
                    TextColumn("[bold cyan]{:>10}[/]".format("generating")),
                    BarColumn(),
                    TextColumn("step {task.completed}/{task.total}"),
                    TimeElapsedColumn(),
                    console=console,
                    transient=True,
                )
                self.progress.start()
                self.task = self.progress.add_task("generate", total=data["total"])
            assert self.task is not None
            self.progress.update(self.task, completed=data["progress"], total=data["total"])
        elif "tool" in data:
            mark = "[green]ok[/]" if data["ok"] else f"[red]failed[/] {data.get('error') or ''}"
            cached = " [dim](cache)[/]" if data.get("cached") else ""
            console.print(
                f"{'':>10} [dim]{data['tool']}[/] {data['query']!r}: "
                f"{data['items']} items {mark}{cached}",
                highlight=False,
            )

    def close(self) -> None:
        self._stop_progress()


async def _run_turn(
    settings: Settings,
    services: Services,
    thread_id: str,
    request: str | None,
    run_dir: Path,
) -> dict[str, Any]:
    """Run (or resume, when `request` is None) one turn on a thread and write its run folder."""
    from graphs.build import build_graph, open_checkpointer

    config: RunnableConfig = {"configurable": {"thread_id": thread_id}, "recursion_limit": 100}
    renderer = StageRenderer()
    async with open_checkpointer(settings) as saver:
        graph = build_graph(settings, checkpointer=saver, services=services)
        graph_input: RunState | None = None if request is None else {"request": request}
        try:
            # durability="sync": a stage's checkpoint is on disk before the next stage starts,
            # so a run killed at any point resumes after its last finished stage.
            async for mode, chunk in graph.astream(
                graph_input, config, stream_mode=["updates", "custom"], durability="sync"
            ):
                if mode == "updates":
                    for node, update in cast(dict[str, Any], chunk).items():
                        renderer.update(node, update)
                else:
                    renderer.custom(cast(dict[str, Any], chunk))
        finally:
            renderer.close()
        state = cast(RunState, (await graph.aget_state(config)).values)
    return write_run(
        run_dir, state, services.store, thread_id=thread_id, extra={"run_dir": str(run_dir)}
    )


async def _pending(settings: Settings, thread_id: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Nodes still to run on a thread (non-empty = an interrupted run) and its values."""
    from graphs.build import build_graph, open_checkpointer

    async with open_checkpointer(settings) as saver:
        graph = build_graph(settings, checkpointer=saver, services=Services(settings))
        snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id}})
        return tuple(snapshot.next), dict(snapshot.values)


def _report(run_dir: Path, record: dict[str, Any]) -> int:
    console.print(f"[bold]run folder:[/] {run_dir}", highlight=False, soft_wrap=True)
    if record["status"] == "done":
        console.print(
            f"[bold green]{'done':>10}[/] {run_dir / 'image.png'}", highlight=False, soft_wrap=True
        )
        return 0
    err_console.print(
        f"[bold red]error:[/] {record.get('error') or 'no image was generated'}", highlight=False
    )
    return EXIT_FAILED


@app.command()
def run(
    prompt: Annotated[
        str | None, typer.Argument(help="What to draw. Omit with --thread to resume.")
    ] = None,
    out: OutOpt = None,
    thread: ThreadOpt = None,
    model: ModelOpt = None,
    seed: SeedOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    steps: StepsOpt = None,
    llm_base_url: LLMUrlOpt = None,
    llm_model: LLMModelOpt = None,
    critique_model: CritiqueOpt = None,
    critique_base_url: CritiqueUrlOpt = None,
    max_rounds: RoundsOpt = None,
    offline: OfflineOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Research PROMPT, write a grounded prompt, generate, critique; write a run folder.

    A run killed part-way resumes from its last finished stage: run again with the same
    --thread (and the same prompt, or none).
    """
    _setup_logging(verbose)
    try:
        settings = _settings(
            out=out,
            model=model,
            seed=seed,
            width=width,
            height=height,
            steps=steps,
            llm_base_url=llm_base_url,
            llm_model=llm_model,
            critique_model=critique_model,
            critique_base_url=critique_base_url,
            max_rounds=max_rounds,
            offline=offline,
        )
        thread_id = thread or uuid.uuid4().hex
        pending: tuple[str, ...] = ()
        values: dict[str, Any] = {}
        if thread:
            pending, values = asyncio.run(_pending(settings, thread))
        if pending:
            stored = values.get("request", "")
            if prompt is not None and prompt.strip() != stored:
                raise InputError(
                    f"thread {thread} has an unfinished run for {stored!r}; run without a "
                    "prompt (or with the same one) to resume it, or use another --thread"
                )
            request = None
            console.print(f"[bold]resuming[/] thread {thread_id} at: {', '.join(pending)}")
        else:
            request = validate_prompt(prompt, settings.agent.prompt_max_chars)
        preflight(settings)
        run_dir = make_run_dir(
            settings.runs_dir, request or values.get("request", "run"), thread_id
        )
        console.print(f"[bold]thread[/] {thread_id}", highlight=False)
        code = asyncio.run(_main_run(settings, thread_id, request, run_dir))
    except (GroundworkError, GeneratorError) as exc:
        raise _fail(str(exc), EXIT_USAGE if isinstance(exc, InputError) else EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise _fail(
            f"interrupted; resume with: groundwork run --thread {thread or '<id>'}",
            EXIT_INTERRUPTED,
        ) from None
    raise typer.Exit(code)


async def _main_run(settings: Settings, thread_id: str, request: str | None, run_dir: Path) -> int:
    services = Services(settings)
    try:
        record = await _run_turn(settings, services, thread_id, request, run_dir)
    except (GroundworkError, GeneratorError) as exc:
        raise type(exc)(f"{exc} (progress is saved: groundwork run --thread {thread_id})") from exc
    finally:
        await services.aclose()
    return _report(run_dir, record)


@app.command()
def chat(
    thread: ThreadOpt = None,
    out: OutOpt = None,
    model: ModelOpt = None,
    seed: SeedOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    steps: StepsOpt = None,
    llm_base_url: LLMUrlOpt = None,
    llm_model: LLMModelOpt = None,
    critique_model: CritiqueOpt = None,
    critique_base_url: CritiqueUrlOpt = None,
    max_rounds: RoundsOpt = None,
    offline: OfflineOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """A conversation about images: each message starts a new image or refines the last one
    ("make it night"). Everything stays on one thread; --thread continues an earlier chat.
    Type /quit (or Ctrl-D) to leave."""
    _setup_logging(verbose)
    try:
        settings = _settings(
            out=out,
            model=model,
            seed=seed,
            width=width,
            height=height,
            steps=steps,
            llm_base_url=llm_base_url,
            llm_model=llm_model,
            critique_model=critique_model,
            critique_base_url=critique_base_url,
            max_rounds=max_rounds,
            offline=offline,
        )
        preflight(settings)
        thread_id = thread or uuid.uuid4().hex
        asyncio.run(_chat_loop(settings, thread_id, resume=thread is not None))
    except (GroundworkError, GeneratorError) as exc:
        raise _fail(str(exc), EXIT_USAGE if isinstance(exc, InputError) else EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", EXIT_INTERRUPTED) from None


async def _chat_loop(settings: Settings, thread_id: str, *, resume: bool) -> None:
    services = Services(settings)
    console.print(f"[bold]thread[/] {thread_id}  (continue later with --thread {thread_id})")
    try:
        if resume:
            pending, values = await _pending(settings, thread_id)
            if values.get("prompt"):
                console.print(f"current image prompt: {values['prompt']}", highlight=False)
            if pending:
                console.print(f"[bold]resuming[/] an unfinished turn at: {', '.join(pending)}")
                run_dir = make_run_dir(settings.runs_dir, values.get("request", "chat"), thread_id)
                _report(run_dir, await _run_turn(settings, services, thread_id, None, run_dir))
        while True:
            try:
                message = await asyncio.to_thread(console.input, "[bold green]you>[/] ")
            except EOFError:
                break
            if message.strip() in {"/quit", "/exit"}:
                break
            if not message.strip():
                continue
            try:
                request = validate_prompt(message, settings.agent.prompt_max_chars)
                run_dir = make_run_dir(settings.runs_dir, request, thread_id)
                _report(run_dir, await _run_turn(settings, services, thread_id, request, run_dir))
            except (GroundworkError, GeneratorError) as exc:
                err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
    finally:
        await services.aclose()


# Sub-command groups owned by their packages; each imports its heavy parts lazily.
app.command(name="worker")(worker)
app.add_typer(kb_app, name="kb")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
