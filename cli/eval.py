"""`groundwork eval ...`: run an A/B eval from a TOML config, rebuild its report, compare two
results files, list the built-in suites. Parses, calls `evals`, renders; exit codes follow the
main CLI (1 failed, 2 bad input or configuration, 130 interrupted: rerun to resume)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.common import guarded
from core.errors import InputError

if TYPE_CHECKING:
    from evals.stats import Paired

eval_app = typer.Typer(
    help="A/B evaluation: arms (plain, rewrite, agent, trained, imported) on the same prompts, "
    "seeds, generator and tools; paired statistics; Markdown and HTML reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks and logs.")]


def _logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, markup=False)],
    )
    for noisy in ("httpx", "httpcore", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _paired_table(title: str, rows: list[Paired]) -> Table:
    from evals.metrics import higher_is_better

    table = Table(title=title, title_justify="left")
    for col in ("metric", "arm", "vs", "n", "mean Δ", "95% CI", "W/T/L", "p"):
        table.add_column(col)
    for p in rows:
        arrow = "↑" if higher_is_better(p.metric) else "↓"
        table.add_row(
            escape(f"{p.metric} {arrow}"),
            escape(p.arm),
            escape(p.baseline),
            str(p.n),
            _num(p.delta),
            f"[{_num(p.lo)}, {_num(p.hi)}]" + (" *" if p.significant else ""),
            f"{p.wins}/{p.ties}/{p.losses}",
            _num(p.p_wilcoxon, 4),
        )
    return table


@eval_app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="The eval's TOML config.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    record: Annotated[
        Path | None, typer.Option("--record", help="Record every tool result into SNAP.")
    ] = None,
    replay: Annotated[
        Path | None, typer.Option("--replay", help="Replay tool results from SNAP (offline).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-j", help="Items in flight.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    limit: Annotated[
        int | None, typer.Option("--limit", help="First N prompts of each suite (smoke run).")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run (or resume) an eval: every arm on every prompt and seed, metrics, statistics,
    report.md and report.html in the output folder. Rerunning skips what is done; exit 1 when
    an arm produced no image at all."""
    _logging(verbose)

    def go() -> None:
        from evals import load_config, run_eval

        cfg = load_config(
            config,
            out_dir=str(out) if out else None,
            record=str(record) if record else None,
            replay=str(replay) if replay else None,
            concurrency=concurrency,
            limit=limit,
        )
        if out is not None:
            cfg.out_dir = out
        if record is not None:
            cfg.record = record
        if replay is not None:
            cfg.replay = replay
        result = run_eval(cfg, progress=progress, console=err_console)
        a = result.analysis
        for arm in a.arms:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(a.counts.get(arm, {}).items()))
            console.print(f"{escape(arm)}: {escape(counts or 'nothing run')}")
        for metric, reason in sorted(a.skips.items()):
            console.print(f"skipped {escape(metric)}: {escape(reason)}")
        for notice in result.notices[:20]:
            console.print(f"note: {escape(notice)}")
        for o in a.overall:
            console.print(
                escape(
                    f"{o.protocol} ({o.suite}) {o.arm}: {_num(o.value)} "
                    f"[{_num(o.lo)}, {_num(o.hi)}]; source: {o.source}"
                )
            )
        if a.paired:
            console.print(_paired_table(f"paired against {a.baseline}", a.paired))
        console.print(f"results: {escape(str(result.db_path))}")
        if result.report_html:
            console.print(f"report: {escape(str(result.report_html))}")
            console.print(f"report: {escape(str(result.report_md))}")
        empty = result.arms_without_result()
        if empty:
            err_console.print(
                f"error: no image from arm(s) {escape(', '.join(empty))}; see the errors above "
                "and rerun after the fix (failed items are retried)"
            )
            raise typer.Exit(1)

    guarded(go, verbose=verbose, resume_hint=f"groundwork eval run {config}")


@eval_app.command("check-metrics")
def check_metrics(
    config: Annotated[Path, typer.Argument(help="The eval's TOML config.")],
    verbose: VerboseOpt = False,
) -> None:
    """Run every enabled metric's known-answer cases (a good and a bad output for the same
    prompt) against the configured judges; exit 1 when a metric cannot tell them apart."""
    _logging(verbose)

    def go() -> None:
        import asyncio

        from evals import load_config
        from evals.harness import load_suites
        from evals.validity import check_config

        cfg = load_config(config)
        results, skipped = asyncio.run(check_config(cfg, load_suites(cfg)))
        for name, reason in skipped.items():
            console.print(f"skipped {escape(name)}: {escape(reason)}")
        for r in results:
            console.print(escape(r.line()))
        if any(not r.passed for r in results):
            raise typer.Exit(1)

    guarded(go, verbose=verbose)


@eval_app.command("profile-check")
def profile_check(
    conversation: Annotated[
        Path, typer.Argument(help="A run folder (its trace.jsonl), a trace.jsonl or a JSON file.")
    ],
    upstream: Annotated[
        Path, typer.Option("--upstream", help="A Gen-Searcher checkout (or its agent module).")
    ],
    verbose: VerboseOpt = False,
) -> None:
    """Every difference between what the policy received in a (replayed) conversation and
    Gen-Searcher's own layout; nothing printed and exit 0 when faithful, exit 1 otherwise."""

    def go() -> None:
        from evals.profile_check import profile_check as check

        diffs = check(conversation, upstream)
        for d in diffs:
            console.print(escape(str(d)), soft_wrap=True)
        if diffs:
            raise typer.Exit(1)

    guarded(go, verbose=verbose)


@eval_app.command("report")
def report(
    config: Annotated[Path, typer.Argument(help="The eval's TOML config.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Rebuild report.md and report.html from the results file, running nothing."""
    _logging(verbose)

    def go() -> None:
        from evals import load_config
        from evals.harness import RESULTS_DB, analyze_store, load_suites
        from evals.report import write_report
        from evals.store import ResultStore

        cfg = load_config(config)
        if out is not None:
            cfg.out_dir = out
        store = ResultStore(cfg.out_dir / RESULTS_DB, readonly=True)
        try:
            suites = load_suites(cfg)
            analysis = analyze_store(store, cfg, suites)
            md, page = write_report(store, cfg, suites, analysis)
        finally:
            store.close()
        console.print(f"report: {escape(str(page))}")
        console.print(f"report: {escape(str(md))}")

    guarded(go, verbose=verbose)


@eval_app.command("compare")
def compare(
    a: Annotated[Path, typer.Argument(help="Results file A (results.sqlite).")],
    b: Annotated[Path, typer.Argument(help="Results file B, same suite(s).")],
    arm: Annotated[
        list[str] | None,
        typer.Option("--arm", help="Compare arm X of A with arm Y of B: X=Y (repeatable)."),
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Also write the table here.")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Paired deltas B − A, per metric and arm, over the prompts and seeds both runs have."""
    _logging(verbose)

    def go() -> None:
        from evals import compare_runs

        pairs = None
        if arm:
            pairs = []
            for spec in arm:
                x, sep, y = spec.partition("=")
                if not sep or not x or not y:
                    raise InputError(f"--arm takes X=Y (arm in A = arm in B), got {spec!r}")
                pairs.append((x, y))
        result = compare_runs(a, b, arms=pairs)
        console.print(
            f"{result.prompts} prompts x seeds {result.seeds} in both; B = {escape(str(b))}"
        )
        if result.only_a or result.only_b:
            console.print(
                f"arms only in A: {escape(', '.join(result.only_a) or '-')}; "
                f"only in B: {escape(', '.join(result.only_b) or '-')}"
            )
        console.print(_paired_table("B − A", result.rows))
        if markdown is not None:
            from evals.report import PAIRED_HEAD, _md_table

            rows = [
                [
                    p.metric,
                    f"{p.arm}: B − A",
                    str(p.n),
                    _num(p.delta),
                    f"[{_num(p.lo)}, {_num(p.hi)}]",
                    "yes" if p.significant else "no",
                    f"{p.wins}/{p.ties}/{p.losses}",
                    _num(p.p_wilcoxon, 4),
                ]
                for p in result.rows
            ]
            markdown.write_text(
                f"# {b} vs {a}\n\n" + _md_table(PAIRED_HEAD, rows) + "\n", encoding="utf-8"
            )
            console.print(f"written: {escape(str(markdown))}")

    guarded(go, verbose=verbose)


@eval_app.command("suites")
def suites(
    path: Annotated[
        str | None, typer.Argument(help="A suite file/folder to check (default: list built-in).")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="auto, groundwork, geneval, t2i-compbench, wise, knowgen, dpg."
        ),
    ] = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """List the built-in suites, or load a suite file to check it."""

    def go() -> None:
        from evals.suites import builtin_suites, load_suite

        names = [path] if path else builtin_suites()
        table = Table()
        for col in ("suite", "format", "prompts", "requirements", "sha256"):
            table.add_column(col)
        for name in names:
            s = load_suite(name, fmt=fmt)  # type: ignore[arg-type]
            table.add_row(
                escape(s.name),
                s.format,
                str(len(s.prompts)),
                str(sum(len(p.requirements) for p in s.prompts)),
                s.sha256[:12],
            )
        console.print(table)

    guarded(go, verbose=verbose)
