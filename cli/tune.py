"""`groundwork tune ...`: make the trained side of the comparison from Groundwork's own runs.

- `tune policy CONFIG.toml`: supervised fine-tuning of a search policy on run folders or trace
  exports (tuning/policy.py); `--serve` then serves the result through a maintained
  OpenAI-compatible server.

Parses, calls `tuning`, renders; exit codes follow the main CLI (1 failed, 2 bad input or
configuration, 130 interrupted: rerun with --resume).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from cli.common import guarded

if TYPE_CHECKING:
    from tuning.policy import Progress

tune_app = typer.Typer(
    help="Train the policy (SFT on traces) and the generator (LoRA) for the A/B harness.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@tune_app.callback()
def _group() -> None:
    """Train the policy (SFT on traces) and the generator (LoRA) for the A/B harness."""


console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _show(p: Progress) -> None:
    loss = f"loss {p.loss:.4f}" if p.loss is not None else "loss —"
    held = f", held-out {p.eval_loss:.4f}" if p.eval_loss is not None else ""
    err_console.print(
        f"step {p.step}/{p.max_steps}  {loss}{held}  elapsed {_duration(p.elapsed_s)}  "
        f"ETA {_duration(p.eta_s)}"
    )


@tune_app.command("policy")
def policy(
    config: Annotated[Path, typer.Argument(help="The tune config (TOML); see docs/tuning.md.")],
    only_matched: Annotated[
        bool | None,
        typer.Option(
            "--only-matched/--all-runs",
            help="Keep only runs whose critique matched every requirement (rejection sampling).",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the latest unfinished version.")
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Override the config's max_steps.")
    ] = None,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Serve the result afterwards (until Ctrl-C)."),
    ] = False,
    server: Annotated[
        str, typer.Option("--server", help="transformers (CPU/GPU) or vllm (GPU).")
    ] = "transformers",
    port: Annotated[int, typer.Option("--port", help="Port of the served policy.")] = 8000,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks.")] = False,
) -> None:
    """Fine-tune a search policy on the agent's runs; the output folder is what an eval's
    `tuned-policy` arm points at."""

    def go() -> None:
        from tuning.policy import load_config, train_policy

        cfg, text = load_config(config, only_matched=only_matched, max_steps=max_steps)
        result = train_policy(cfg, config_text=text, resume=resume, on_progress=_show)
        if not result.finished:
            console.print(f"stopped at step {result.global_step}: {result.folder}")
            return
        console.print(
            f"trained {result.folder} ({result.train_examples} conversations, "
            f"{result.eval_examples} held out, {result.global_step} steps); "
            f"model card: {result.folder / 'README.md'}"
        )
        if serve:
            _serve(result.folder, server, port)

    guarded(go, verbose=verbose, resume_hint=f"groundwork tune policy {config} --resume")


def _serve(folder: Path, server: str, port: int) -> None:
    from tuning.policy_serve import SERVERS, ServedPolicy, read_tuned

    if server not in SERVERS:
        from core.errors import InputError

        raise InputError(f"unknown --server {server!r}; use one of: {', '.join(SERVERS)}")
    tuned = read_tuned(folder)
    with ServedPolicy(tuned, server=server, port=port) as served:
        console.print(
            f"serving {served.model} at {served.base_url} ({server}); prompt it with the react "
            f"profile {tuned.react_profile!r}. Ctrl-C stops it."
        )
        while served.process is not None and served.process.poll() is None:
            time.sleep(1.0)


# -- the generator: Dual-Process feedback and EvolveDirector curation (tuning/feedback.py,
# tuning/curate.py) ----------------------------------------------------------------------------


@tune_app.command("feedback")
def feedback(
    config: Annotated[Path, typer.Argument(help="The feedback config (TOML); docs/tuning.md.")],
    steps: Annotated[
        int | None, typer.Option("--steps", help="Override the config's steps.")
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the checkpoints and start over.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks.")] = False,
) -> None:
    """Teach the generator a control from a judge's yes/no (Dual-Process): a LoRA trained by
    backpropagating the judge's log p("yes") through the sampling steps. Rerun to resume."""

    def go() -> None:
        from tuning.feedback import load_feedback_config, run_feedback

        cfg, task = load_feedback_config(config, steps=steps)
        err_console.print(
            f"feedback tuning {cfg.model} with judge {cfg.judge.kind}:{cfg.judge.model}, "
            f"{cfg.steps} steps -> {cfg.out_dir}"
        )
        result = run_feedback(
            cfg, task, restart=restart, on_progress=lambda p: err_console.print(p.line())
        )
        b, a = result.before, result.after
        console.print(
            f"held-out p(yes) {b['p_yes']:.3f} -> {a['p_yes']:.3f}, loss {b['loss']:.4f} -> "
            f"{a['loss']:.4f}; {result.s_per_step:.3f} s/step, {result.memory_label} "
            f"{result.peak_memory_gib:.2f} GiB"
        )
        console.print(f"tuned generator (use as generator.model): {result.tuned}")
        console.print(f"report: {result.report}")

    guarded(go, verbose=verbose, resume_hint=f"groundwork tune feedback {config}")


@tune_app.command("curate")
def curate(
    config: Annotated[Path, typer.Argument(help="The curate config (TOML); docs/tuning.md.")],
    rounds: Annotated[
        int | None, typer.Option("--rounds", help="Override the config's rounds.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks.")] = False,
) -> None:
    """Train the student generator on teacher images a VLM curates (EvolveDirector): judge
    both orders, keep/expand/mutate/delete, version the dataset, fine-tune the LoRA. Rerun to
    resume after the last finished round."""

    def go() -> None:
        from tuning.curate import load_curate_config, run_curate

        cfg = load_curate_config(config, rounds=rounds)
        err_console.print(
            f"curating for {cfg.student} from a {cfg.teacher.kind} teacher, {cfg.rounds} "
            f"round(s) -> {cfg.out_dir}"
        )
        result = run_curate(cfg, on_round=lambda r: err_console.print(r.line()))
        if result.resumed_from:
            err_console.print(f"(resumed after round {result.resumed_from})")
        console.print(f"student (use as generator.model): {result.student}")
        console.print(f"dataset: {cfg.out_dir / 'dataset'}; report: {cfg.out_dir / 'report.md'}")

    guarded(go, verbose=verbose, resume_hint=f"groundwork tune curate {config}")
