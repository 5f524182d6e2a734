"""`groundwork run` and `groundwork chat`: one image from a prompt, or a conversation about images.

Their options are generated from the override table (`agent.settings.RunContext`, see
cli/options.py). Every output folder is checked before any work, so `--out /proc/x` fails in a
second with one line (exit 2), not after the run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from agent.settings import POLICIES, Policy, RunContext, Settings
from cli.common import EXIT_FAILED, INTERRUPT_GRACE_S, guarded, load_settings
from cli.options import OfflineOpt, OutOpt, PolicyOpt, ThreadOpt, VerboseOpt, with_overrides
from core.errors import GroundworkError, InputError
from core.files import writable_dir_problem
from retrieval.text import clean_text as plain

if TYPE_CHECKING:
    # The graphs (LangGraph, LangChain, the stages) load when a command runs, not for --help.
    from graphs.runner import RunEvent, RunOutcome

console = Console()
err_console = Console(stderr=True)


def _settings(
    overrides: RunContext,
    *,
    out: Path | None = None,
    offline: bool = False,
    ask_questions: bool | None = None,
) -> Settings:
    """Environment first, then the flags on top (a flag always wins over an env var)."""
    merged: dict[str, Any] = overrides.overrides()
    merged["runs_dir"] = out
    merged.setdefault("agent", {})["ask_questions"] = ask_questions
    if offline:
        merged.setdefault("generator", {})["local_files_only"] = True
        merged["tools"] = {"text_provider": "none", "image_provider": "none"}
    return load_settings(merged)


def check_outputs(settings: Settings) -> None:
    """Everywhere a run writes can really be written: the folders, and the PostgreSQL store and
    S3 bucket when configured (exit 2 with one line, before any work, if not)."""
    places = {
        "run folders (--out)": settings.runs_dir,
        "traces (GROUNDWORK_TRACES_DIR)": settings.traces_dir,
        "artifacts (GROUNDWORK_ARTIFACTS__ROOT)": settings.artifacts.root,
    }
    if not settings.store.is_postgres():
        checkpoints = settings.checkpoint_db.expanduser().parent
        places["checkpoints (GROUNDWORK_CHECKPOINT_DB)"] = checkpoints
    for what, path in places.items():
        problem = writable_dir_problem(path)
        if problem is not None:
            raise InputError(f"cannot write the {what} under {path}: {problem}; choose another")
    try:
        if settings.store.url is not None:
            from graphs.store import check_connection

            asyncio.run(check_connection(settings.store.url, settings.store.connect_timeout_s))
        if settings.artifacts.url is not None:
            from core.artifacts import ArtifactStore

            ArtifactStore.from_settings(settings.artifacts).check()
    except GroundworkError as exc:
        raise InputError(str(exc)) from exc


def _policy(name: str) -> Policy:
    if name not in POLICIES:
        raise InputError(f"unknown policy {name!r}; use one of: {', '.join(POLICIES)}")
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
    from graphs.runner import Runner

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


@with_overrides
def run(
    prompt: Annotated[
        str | None, typer.Argument(help="What to draw. Omit with --thread to resume.")
    ] = None,
    out: OutOpt = None,
    thread: ThreadOpt = None,
    policy: PolicyOpt = "planned",
    offline: OfflineOpt = False,
    verbose: VerboseOpt = False,
    *,
    overrides: RunContext,
) -> None:
    """Research PROMPT, write a grounded prompt, generate, critique; write a run folder.

    A run killed part-way resumes from its last finished stage: run again with the same
    --thread (and the same prompt, or none).
    """
    _setup_logging(verbose)

    def go() -> int:
        from agent.preflight import preflight
        from agent.stages.intake import validate_prompt

        # ask_questions=False: nobody is there to answer
        settings = _settings(overrides, out=out, offline=offline, ask_questions=False)
        request = None
        if prompt is not None or thread is None:
            request = validate_prompt(prompt, settings.agent.prompt_max_chars)
        check_outputs(settings)
        preflight(settings, policy=_policy(policy))
        console.print(f"[bold]thread[/] {escape(thread_id)}", highlight=False)
        return asyncio.run(_run_one(settings, request, thread_id, _policy(policy)))

    thread_id = thread or uuid.uuid4().hex
    code = guarded(
        go,
        verbose=verbose,
        resume_hint=f"groundwork run --thread {thread_id}",
        interrupt_grace_s=INTERRUPT_GRACE_S,
    )
    raise typer.Exit(code)


@with_overrides
def chat(
    thread: ThreadOpt = None,
    out: OutOpt = None,
    policy: PolicyOpt = "planned",
    no_questions: Annotated[
        bool, typer.Option("--no-questions", help="Never ask a clarifying question.")
    ] = False,
    offline: OfflineOpt = False,
    verbose: VerboseOpt = False,
    *,
    overrides: RunContext,
) -> None:
    """A conversation about images: each message starts a new image or refines the last one
    ("make it night"). Everything stays on one thread; --thread continues an earlier chat.
    When the prompt is ambiguous in a way research cannot settle, the agent asks one question;
    your next message answers it. Type /quit (or Ctrl-D) to leave."""
    _setup_logging(verbose)

    def go() -> None:
        from agent.preflight import preflight

        settings = _settings(
            overrides, out=out, offline=offline, ask_questions=False if no_questions else None
        )
        check_outputs(settings)
        preflight(settings, policy=_policy(policy))
        asyncio.run(_chat_loop(settings, thread_id, _policy(policy), resume=thread is not None))

    thread_id = thread or uuid.uuid4().hex
    guarded(
        go,
        verbose=verbose,
        resume_hint=f"groundwork chat --thread {thread_id}",
        interrupt_grace_s=INTERRUPT_GRACE_S,
    )


async def _chat_loop(settings: Settings, thread_id: str, policy: Policy, *, resume: bool) -> None:
    console.print(
        f"[bold]thread[/] {escape(thread_id)}  (continue later with --thread {escape(thread_id)})"
    )
    renderer = StageRenderer()
    from graphs.runner import Runner

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
