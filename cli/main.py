"""`groundwork`: the command line. It parses, calls library code and renders; nothing else.

Exit codes: 0 an image was made; 1 the run failed (the run folder says why); 2 bad input or
configuration (one line on stderr, before any work starts); 130 interrupted. A traceback is
shown only with --verbose.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, cast, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from agent.preflight import preflight
from agent.settings import Settings
from agent.stages.intake import validate_prompt
from cli.common import EXIT_FAILED, EXIT_INTERRUPTED, guarded, load_settings
from cli.eval import eval_app
from cli.kb import kb_app
from cli.serve import serve
from cli.traces import traces_app
from cli.worker import worker
from core.errors import GroundworkError, InputError
from graphs.build import Policy
from graphs.runner import RunEvent, Runner, RunOutcome
from retrieval.text import clean_text as plain

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
CandidatesOpt = Annotated[
    int | None,
    typer.Option("--candidates", help="Best-of-N: images per new generation; a judge keeps one."),
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="No web tools, no hub downloads: local only.")
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Log what happens inside; tracebacks on failure.")
]
PolicyOpt = Annotated[
    str, typer.Option("--policy", help="planned (fixed research flow) or react (tool loop).")
]
ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", help="react protocol: openai (tool calling) or gen-searcher."),
]


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
    profile: str | None = None,
    offline: bool = False,
    candidates: int | None = None,
    ask_questions: bool | None = None,
) -> Settings:
    """Environment first, then the flags on top (a flag always wins over an env var)."""
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
        "agent": {
            "max_rounds": max_rounds,
            "react_profile": profile,
            "candidates": candidates,
            "ask_questions": ask_questions,
        },
        "tools": {"text_provider": "none", "image_provider": "none"} if offline else {},
    }
    return load_settings(overrides)


def _policy(name: str) -> Policy:
    if name not in get_args(Policy):
        raise InputError(f"unknown policy {name!r}; use one of: {', '.join(get_args(Policy))}")
    return cast(Policy, name)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, markup=False)],
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

    def __call__(self, event: RunEvent) -> None:
        kind, data = event["kind"], event["data"]
        if kind == "stage":
            if data["stage"] == "generate":
                self._stop_progress()
            console.print(
                f"[bold cyan]{data['stage']:>10}[/] {escape(plain(data['summary']))} "
                f"[dim]({data['elapsed_s']:.1f}s)[/]",
                highlight=False,
            )
        elif kind == "notice":
            console.print(f"[yellow]{'note':>10}[/] {escape(plain(data['text']))}", highlight=False)
        elif kind == "progress":
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
            self.progress.update(self.task, completed=data["step"], total=data["total"])
        elif kind == "tool":
            mark = (
                "[green]ok[/]"
                if data["ok"]
                else f"[red]failed[/] {escape(plain(data.get('error') or ''))}"
            )
            cached = " [dim](cache)[/]" if data.get("cached") else ""
            console.print(
                f"{'':>10} [dim]{data['tool']}[/] {escape(plain(repr(data['query'])))}: "
                f"{data['items']} items {mark}{cached}",
                highlight=False,
            )

    def close(self) -> None:
        self._stop_progress()


def _report(outcome: RunOutcome) -> int:
    if outcome.status == "interrupted":
        console.print(
            f"[bold magenta]{'question':>10}[/] {escape(plain(outcome.question or ''))}",
            highlight=False,
            soft_wrap=True,
        )
        # Only chat can answer: its next message is the answer.
        console.print(
            f"{'':>10} [dim]answer it with your next chat message "
            f"(groundwork chat --thread {escape(outcome.thread_id)})[/]",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_FAILED
    if outcome.run_dir is not None:
        console.print(
            f"[bold]run folder:[/] {escape(plain(str(outcome.run_dir)))}",
            highlight=False,
            soft_wrap=True,
        )
    if outcome.status == "done":
        target = outcome.run_dir / "image.png" if outcome.run_dir else outcome.image_sha256
        console.print(
            f"[bold green]{'done':>10}[/] {escape(plain(str(target)))}",
            highlight=False,
            soft_wrap=True,
        )
        return 0
    err_console.print(
        f"[bold red]error:[/] {escape(plain(outcome.error or 'no image was generated'))}",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_FAILED


async def _run_one(settings: Settings, request: str | None, thread_id: str, policy: Policy) -> int:
    renderer = StageRenderer()
    async with Runner(settings) as runner:
        pending = await runner.pending(thread_id, policy)
        if pending:
            console.print(f"[bold]resuming[/] thread {escape(thread_id)} at: {', '.join(pending)}")
        try:
            outcome = await runner.run(
                request,
                thread_id=thread_id,
                policy=policy,
                on_event=renderer,
            )
        finally:
            renderer.close()
    return _report(outcome)


@app.command()
def run(
    prompt: Annotated[
        str | None, typer.Argument(help="What to draw. Omit with --thread to resume.")
    ] = None,
    out: OutOpt = None,
    thread: ThreadOpt = None,
    policy: PolicyOpt = "planned",
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
    candidates: CandidatesOpt = None,
    profile: ProfileOpt = None,
    offline: OfflineOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Research PROMPT, write a grounded prompt, generate, critique; write a run folder.

    A run killed part-way resumes from its last finished stage: run again with the same
    --thread (and the same prompt, or none).
    """
    _setup_logging(verbose)

    def go() -> int:
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
            profile=profile,
            offline=offline,
            candidates=candidates,
            ask_questions=False,  # nobody is there to answer
        )
        request = None
        if prompt is not None or thread is None:
            request = validate_prompt(prompt, settings.agent.prompt_max_chars)
        preflight(settings)
        thread_id = thread or uuid.uuid4().hex
        console.print(f"[bold]thread[/] {escape(thread_id)}", highlight=False)
        return asyncio.run(_run_one(settings, request, thread_id, _policy(policy)))

    code = guarded(
        go, verbose=verbose, resume_hint=f"groundwork run --thread {thread}" if thread else None
    )
    raise typer.Exit(code)


@app.command()
def chat(
    thread: ThreadOpt = None,
    out: OutOpt = None,
    policy: PolicyOpt = "planned",
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
    candidates: CandidatesOpt = None,
    no_questions: Annotated[
        bool, typer.Option("--no-questions", help="Never ask a clarifying question.")
    ] = False,
    profile: ProfileOpt = None,
    offline: OfflineOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """A conversation about images: each message starts a new image or refines the last one
    ("make it night"). Everything stays on one thread; --thread continues an earlier chat.
    When the prompt is ambiguous in a way research cannot settle, the agent asks one question;
    your next message answers it. Type /quit (or Ctrl-D) to leave."""
    _setup_logging(verbose)

    def go() -> None:
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
            profile=profile,
            offline=offline,
            candidates=candidates,
            ask_questions=False if no_questions else None,
        )
        preflight(settings)
        thread_id = thread or uuid.uuid4().hex
        asyncio.run(_chat_loop(settings, thread_id, _policy(policy), resume=thread is not None))

    guarded(go, verbose=verbose)


async def _chat_loop(settings: Settings, thread_id: str, policy: Policy, *, resume: bool) -> None:
    console.print(
        f"[bold]thread[/] {escape(thread_id)}  (continue later with --thread {escape(thread_id)})"
    )
    renderer = StageRenderer()
    # One Runner (one Services) for the whole chat: the LLM server and the pipeline stay warm.
    async with Runner(settings) as runner:
        runner.services.warm_up(settings)
        if resume:
            values = await runner.values(thread_id, policy)
            if values.get("prompt"):
                console.print(
                    f"current image prompt: {escape(plain(values['prompt']))}", highlight=False
                )
            if await runner.pending(thread_id, policy):
                console.print("[bold]resuming[/] the unfinished turn")
                _report(
                    await runner.run(None, thread_id=thread_id, policy=policy, on_event=renderer)
                )
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
                outcome = await runner.run(
                    message, thread_id=thread_id, policy=policy, on_event=renderer
                )
                renderer.close()
                _report(outcome)
            except GroundworkError as exc:
                renderer.close()
                err_console.print(f"[bold red]error:[/] {escape(plain(str(exc)))}", highlight=False)


# Sub-command groups owned by their modules; each imports its heavy parts lazily.
app.command(name="worker")(worker)
app.command(name="serve")(serve)
app.add_typer(kb_app, name="kb")
app.add_typer(eval_app, name="eval")
app.add_typer(traces_app, name="traces")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("[bold red]error:[/] interrupted", highlight=False)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
