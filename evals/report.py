"""report.md and a self-contained report.html from the results file.

The HTML embeds everything (thumbnails and plots as data URIs), so it can be mailed or
archived alone; the Markdown links the same thumbnails and plots as files under
`report_files/`. Both show the statistics, the plots (score per arm with its CI, the paired
deltas against the baseline, latency per stage) and, per prompt, every arm's image for every
seed with the prompt the generator received and the judge's verdict on each requirement.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.artifacts import ArtifactNotFound, ArtifactStore
from evals.analysis import Analysis
from evals.config import EvalConfig, eval_settings
from evals.metrics import higher_is_better, quality_metrics
from evals.store import RESULTS_DB, ItemRecord, ResultStore
from evals.suites import Suite, SuitePrompt

COST = ("latency_s", "llm_calls", "tokens", "tool_calls")


@dataclass
class Figure:
    name: str
    title: str
    png: bytes


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]


def _settings_store(config: EvalConfig) -> ArtifactStore:
    return ArtifactStore.from_settings(eval_settings(config).artifacts)


def thumbnail(store: ArtifactStore, sha: str, px: int) -> bytes | None:
    try:
        image = store.open_image(sha)
    except (ArtifactNotFound, OSError, ValueError):
        return None
    image = image.convert("RGB")
    image.thumbnail((px, px))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _data_uri(data: bytes, media: str) -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


# -- plots -----------------------------------------------------------------------------------


def make_figures(store: ResultStore, analysis: Analysis) -> tuple[list[Figure], str | None]:
    """PNG plots; (figures, None) or ([], why not) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return [], f"plots skipped: matplotlib unavailable ({exc}); pip install 'groundwork[eval]'"
    figures: list[Figure] = []

    def save(fig: Any, name: str, title: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        figures.append(Figure(name, title, buf.getvalue()))

    quality = [m for m in quality_metrics() if any(s.metric == m for s in analysis.summaries)]
    if quality:
        fig, axes = plt.subplots(1, len(quality), figsize=(4.2 * len(quality), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], quality, strict=True):
            rows = [s for s in analysis.summaries if s.metric == metric and s.n > 0]
            xs = list(range(len(rows)))
            means = [s.mean for s in rows]
            err = [[s.mean - s.lo for s in rows], [s.hi - s.mean for s in rows]]
            ax.errorbar(xs, means, yerr=err, fmt="o", capsize=5, color="#2a6fb0")
            ax.set_xticks(xs, [s.arm for s in rows], rotation=20)
            ax.set_title(f"{metric} (mean, 95% CI)")
            ax.grid(axis="y", alpha=0.3)
        save(fig, "scores", "Score per arm with its 95% bootstrap CI")

    primary = next((m for m in quality_metrics() if m in analysis.per_prompt), None)
    others = [a for a in analysis.arms if a != analysis.baseline]
    if primary and others:
        values = analysis.per_prompt[primary]
        base = values[analysis.baseline]
        fig, ax = plt.subplots(figsize=(max(4.0, 2.2 * len(others)), 3.4))
        data = []
        for arm in others:
            d = [a - b for a, b in zip(values[arm], base, strict=True)]
            data.append([x for x in d if not math.isnan(x)] or [0.0])
        ax.violinplot(data, showmeans=True)
        for i, arm in enumerate(others, 1):
            p = next((p for p in analysis.paired if p.metric == primary and p.arm == arm), None)
            if p is not None and p.n:
                ax.plot([i, i], [p.lo, p.hi], color="#c0392b", linewidth=3)
        ax.axhline(0, color="grey", linewidth=1)
        ax.set_xticks(range(1, len(others) + 1), others)
        ax.set_title(f"{primary}: per-prompt delta vs {analysis.baseline} (red: 95% CI)")
        save(fig, "deltas", f"Paired deltas of {primary} against {analysis.baseline}")

    if analysis.categories:
        keys = sorted({(c.suite, c.metric) for c in analysis.categories})
        fig, axes = plt.subplots(len(keys), 1, figsize=(7.5, 3.0 * len(keys)), squeeze=False)
        for ax, (suite, metric) in zip(axes[:, 0], keys, strict=True):
            crows = [c for c in analysis.categories if (c.suite, c.metric) == (suite, metric)]
            cats = sorted({c.category for c in crows})
            width = 0.8 / max(1, len(analysis.arms))
            for j, arm in enumerate(analysis.arms):
                mine = {c.category: c for c in crows if c.arm == arm and c.n > 0}
                bx = [i + j * width for i, cat in enumerate(cats) if cat in mine]
                ys = [mine[cat].mean for cat in cats if cat in mine]
                err = [
                    [mine[cat].mean - mine[cat].lo for cat in cats if cat in mine],
                    [mine[cat].hi - mine[cat].mean for cat in cats if cat in mine],
                ]
                ax.bar(bx, ys, width=width, yerr=err, capsize=3, label=arm)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, rotation=20)
            ax.set_title(f"{suite}: {metric} per category (mean, 95% CI)")
            ax.legend(fontsize=7)
            ax.grid(axis="y", alpha=0.3)
        save(fig, "categories", "Score per category with its 95% bootstrap CI")

    stage_means = _stage_latency(store, analysis)
    if stage_means:
        stages = sorted({s for per in stage_means.values() for s in per})
        arms = list(stage_means)
        fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(arms) + 1.5))
        left = [0.0] * len(arms)
        for stage in stages:
            widths = [stage_means[a].get(stage, 0.0) for a in arms]
            ax.barh(arms, widths, left=left, label=stage)
            left = [x + w for x, w in zip(left, widths, strict=True)]
        ax.set_xlabel("mean seconds per image")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title("Latency per stage")
        save(fig, "latency", "Mean latency per stage")
    return figures, None


def _stage_latency(store: ResultStore, analysis: Analysis) -> dict[str, dict[str, float]]:
    wanted = set(analysis.prompts)
    seeds = set(analysis.seeds)
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for row in store.scores("latency_s"):
        if row.arm not in analysis.arms or row.prompt_id not in wanted or row.seed not in seeds:
            continue
        stages = row.detail.get("stages") or {}
        if not stages:
            continue
        counts[row.arm] = counts.get(row.arm, 0) + 1
        per = sums.setdefault(row.arm, {})
        for stage, secs in stages.items():
            per[stage] = per.get(stage, 0.0) + float(secs)
    return {
        arm: {s: v / counts[arm] for s, v in per.items()}
        for arm, per in sums.items()
        if counts.get(arm)
    }


# -- tables ----------------------------------------------------------------------------------


def summary_rows(analysis: Analysis) -> list[list[str]]:
    rows = []
    for s in analysis.summaries:
        rows.append([s.metric, s.arm, str(s.n), _fmt(s.mean), f"[{_fmt(s.lo)}, {_fmt(s.hi)}]"])
    return rows


def paired_rows(analysis: Analysis) -> list[list[str]]:
    rows = []
    for p in analysis.paired:
        arrow = "↑" if higher_is_better(p.metric) else "↓"
        sig = "yes" if p.significant else "no"
        rows.append(
            [
                f"{p.metric} {arrow}",
                f"{p.arm} − {p.baseline}",
                str(p.n),
                _fmt(p.delta),
                f"[{_fmt(p.lo)}, {_fmt(p.hi)}]",
                sig,
                f"{p.wins}/{p.ties}/{p.losses}",
                _fmt(p.p_wilcoxon, 4),
            ]
        )
    return rows


def pairwise_rows(analysis: Analysis) -> list[list[str]]:
    return [
        [
            f"{p.arm} vs {p.other}",
            str(p.n),
            _fmt(p.win_rate),
            f"[{_fmt(p.lo)}, {_fmt(p.hi)}]",
            f"{p.wins}/{p.ties}/{p.losses}",
            _fmt(p.position_bias),
            str(p.unanswered),
        ]
        for p in analysis.pairwise
    ]


def ranking_rows(analysis: Analysis) -> list[list[str]]:
    return [
        [str(r.rank), r.arm, _fmt(r.strength), f"[{_fmt(r.lo)}, {_fmt(r.hi)}]"]
        for r in analysis.ranking
    ]


def category_rows(analysis: Analysis) -> list[list[str]]:
    return [
        [
            c.suite,
            c.metric,
            c.category,
            c.arm,
            str(c.n),
            _fmt(c.mean),
            f"[{_fmt(c.lo)}, {_fmt(c.hi)}]",
        ]
        for c in analysis.categories
    ]


def overall_rows(analysis: Analysis) -> list[list[str]]:
    return [
        [
            o.suite,
            o.protocol,
            o.arm,
            _fmt(o.value),
            f"[{_fmt(o.lo)}, {_fmt(o.hi)}]",
            ", ".join(f"{c} {w:.2f}" for c, w in o.weights.items()),
            o.source,
        ]
        for o in analysis.overall
    ]


CATEGORY_HEAD = ["suite", "metric", "category", "arm", "prompts", "mean", "95% CI"]
OVERALL_HEAD = ["suite", "protocol", "arm", "overall", "95% CI", "weights", "source"]
SUMMARY_HEAD = ["metric", "arm", "prompts", "mean", "95% CI"]
PAIRED_HEAD = ["metric", "delta", "prompts", "mean Δ", "95% CI", "CI excludes 0", "W/T/L", "p"]
PAIRWISE_HEAD = ["pair", "judged", "win rate", "95% CI", "W/T/L", "position bias", "unanswered"]
RANK_HEAD = ["rank", "arm", "log-strength", "95% CI"]


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def fairness_lines(config: EvalConfig, suites: list[Suite]) -> list[str]:
    seeds = ", ".join(str(s) for s in config.seed_list())
    lines = [
        f"Every arm ran the same {sum(len(s.prompts) for s in suites)} prompts "
        f"({', '.join(f'{s.name} sha256 {s.sha256[:12]}' for s in suites)}) with the same "
        f"seeds ({seeds}), the same generator and the same research tools.",
        "Statistics resample prompts (seeds of a prompt are averaged first); CIs are 95% "
        f"BCa bootstraps ({config.report.bootstrap} resamples, scipy.stats.bootstrap).",
    ]
    if importlib.util.find_spec("scipy") is None:
        lines.append(
            "p-values unavailable: scipy is not installed (pip install 'groundwork[eval]')."
        )
    if config.record:
        lines.append(f"Tool results were recorded to {config.record}: arms saw identical evidence.")
    if config.replay:
        lines.append(_replay_line(config))
    checked = _meta(config, "known_answers")
    if isinstance(checked, dict) and checked:
        by_judge: dict[str, list[str]] = {}
        for metric, judge in sorted(checked.items()):
            by_judge.setdefault(str(judge), []).append(str(metric))
        lines += [
            f"Metric validity: {', '.join(ms)} scored their known good outputs above the bad "
            f"ones with judge {judge} before the run."
            for judge, ms in by_judge.items()
        ]
    return lines


def _meta(config: EvalConfig, key: str) -> Any:
    db = config.out_dir / RESULTS_DB
    if not db.is_file():
        return None
    store = ResultStore(db, readonly=True)
    try:
        return store.get_meta(key)
    finally:
        store.close()


def _replay_line(config: EvalConfig) -> str:
    """Determinism is claimed only when the replay reproduced the recorded observations (image
    ids included) and verdicts of every item both runs made."""
    check: Any = None
    db = config.out_dir / RESULTS_DB
    if db.is_file():
        store = ResultStore(db, readonly=True)
        try:
            check = store.get_meta("replay_check")
        finally:
            store.close()
    where = f"Tool results were replayed from {config.replay} (offline)"
    if not isinstance(check, dict) or not check.get("compared"):
        return f"{where}; no recorded observations to compare with: determinism not shown."
    n, ok = int(check["compared"]), int(check["reproduced"])
    if ok == n:
        return (
            f"{where}: all {n} recorded items reproduced their observations, image ids and "
            "verdicts (deterministic)."
        )
    shown = ", ".join(check.get("differences") or [])[:300]
    return f"{where}: NOT deterministic: {n - ok} of {n} items differ from the recording ({shown})."


# -- the grid --------------------------------------------------------------------------------


@dataclass
class Cell:
    item: ItemRecord | None
    thumb: bytes | None
    thumb_path: str | None
    verdicts: dict[str, bool | None]
    scores: dict[str, float | None]


def _cells(
    store: ResultStore,
    config: EvalConfig,
    suites: list[Suite],
    artifacts: ArtifactStore,
    files: Path,
) -> list[tuple[str, SuitePrompt, dict[tuple[str, int], Cell]]]:
    scores: dict[tuple[str, str, int], dict[str, ScoreDetail]] = {}
    for row in store.scores():
        scores.setdefault((row.arm, row.prompt_id, row.seed), {})[row.metric] = (
            row.value,
            row.detail,
        )
    items = {(r.arm, r.prompt_id, r.seed): r for r in store.items()}
    out = []
    limit = config.report.max_prompts
    prompts = [(s.key(p), p) for s in suites for p in s.prompts]
    for key, prompt in prompts[: limit or None]:
        cells: dict[tuple[str, int], Cell] = {}
        for arm in config.arms:
            for seed in config.seed_list():
                item = items.get((arm.name, key, seed))
                thumb = thumb_path = None
                if item is not None and item.image_sha256:
                    thumb = thumbnail(artifacts, item.image_sha256, config.report.thumb_px)
                    if thumb is not None:
                        rel = (
                            Path("report_files") / "thumbs" / arm.name / f"{_safe(key)}-s{seed}.jpg"
                        )
                        (files.parent / rel).parent.mkdir(parents=True, exist_ok=True)
                        (files.parent / rel).write_bytes(thumb)
                        thumb_path = rel.as_posix()
                sc = scores.get((arm.name, key, seed), {})
                req = sc.get("requirements")
                verdicts = dict((req[1] if req else {}).get("verdicts") or {})
                cells[(arm.name, seed)] = Cell(
                    item, thumb, thumb_path, verdicts, {k: v[0] for k, v in sc.items()}
                )
        out.append((key, prompt, cells))
    return out


ScoreDetail = tuple[float | None, dict[str, Any]]


def _mark(v: bool | None) -> str:
    return "✓" if v is True else ("✗" if v is False else "?")


# -- writers ---------------------------------------------------------------------------------


def write_report(
    store: ResultStore, config: EvalConfig, suites: list[Suite], analysis: Analysis
) -> tuple[Path, Path]:
    out = config.out_dir
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    figures, plot_note = make_figures(store, analysis)
    for fig in figures:
        (files / f"{fig.name}.png").write_bytes(fig.png)
    grid = _cells(store, config, suites, _settings_store(config), files)
    md = _markdown(config, suites, analysis, figures, plot_note, grid)
    page = _html(config, suites, analysis, figures, plot_note, grid)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(md, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path


def _counts_line(analysis: Analysis) -> list[str]:
    return [
        f"{arm}: " + ", ".join(f"{k} {v}" for k, v in sorted(analysis.counts.get(arm, {}).items()))
        for arm in analysis.arms
    ]


def _markdown(
    config: EvalConfig,
    suites: list[Suite],
    analysis: Analysis,
    figures: list[Figure],
    plot_note: str | None,
    grid: list[tuple[str, SuitePrompt, dict[tuple[str, int], Cell]]],
) -> str:
    parts = [f"# Eval report: {_md_text(config.name)}", ""]
    parts += [f"- {line}" for line in fairness_lines(config, suites)]
    parts += ["", "## Runs", ""] + [f"- {line}" for line in _counts_line(analysis)]
    if analysis.skips:
        parts += ["", "## Metrics skipped", ""]
        parts += [f"- **{m}**: {r}" for m, r in sorted(analysis.skips.items())]
    parts += _md_protocols(config, analysis)
    parts += ["", "## Scores per arm", "", _md_table(SUMMARY_HEAD, summary_rows(analysis))]
    if analysis.categories:
        parts += [
            "",
            "## Scores per category",
            "",
            _md_table(CATEGORY_HEAD, category_rows(analysis)),
        ]
    if analysis.paired:
        parts += [
            "",
            f"## Paired against `{analysis.baseline}`",
            "",
            "Per-prompt deltas (arm − baseline); ↑ higher is better, ↓ lower is better; "
            "W/T/L counted in the better direction; p: Wilcoxon signed-rank.",
            "",
            _md_table(PAIRED_HEAD, paired_rows(analysis)),
        ]
    if analysis.pairwise:
        parts += [
            "",
            "## Pairwise judge (both orders)",
            "",
            "Win rate of the first arm (ties count half); a verdict that flips when the images "
            "swap places is a tie (position bias).",
            "",
            _md_table(PAIRWISE_HEAD, pairwise_rows(analysis)),
        ]
    if analysis.ranking:
        parts += [
            "",
            f"## Bradley-Terry ranking ({analysis.ranking_metric}, per-prompt wins)",
            "",
            _md_table(RANK_HEAD, ranking_rows(analysis)),
        ]
    parts += ["", "## Plots", ""]
    if plot_note:
        parts.append(plot_note)
    parts += [f"![{f.title}](report_files/{f.name}.png)" for f in figures]
    parts += ["", "## Images", ""]
    for key, prompt, cells in grid:
        parts += [f"### {_md_text(key)}", "", f"> {_md_text(prompt.prompt)}", ""]
        if prompt.requirements:
            parts += [
                f"- `{_md_text(r.id)}` {_md_text(r.question)}" for r in prompt.requirements
            ] + [""]
        head = ["arm", *[f"seed {s}" for s in config.seed_list()]]
        rows = []
        for arm in config.arms:
            row = [arm.name]
            for seed in config.seed_list():
                cell = cells[(arm.name, seed)]
                row.append(_md_cell(cell))
            rows.append(row)
        parts += [_md_table(head, rows), ""]
    return "\n".join(parts) + "\n"


def _md_protocols(config: EvalConfig, analysis: Analysis) -> list[str]:
    """The benchmark-defined overall scores, each labelled with its source, and where each
    metric's judge instruction came from."""
    sources = _metric_sources(config)
    if not analysis.overall and not sources:
        return []
    parts = ["", "## Benchmark protocols", ""]
    parts += [f"- **{m}**: {_md_text(src)}" for m, src in sorted(sources.items())]
    seen = set()
    for o in analysis.overall:
        if (o.suite, o.protocol) not in seen:
            seen.add((o.suite, o.protocol))
            parts.append(
                f"- **{_md_text(o.protocol)}** ({o.suite}): {_md_text(o.note)}; "
                f"source: {_md_text(o.source)}"
            )
    parts += ["", _md_table(OVERALL_HEAD, overall_rows(analysis)) if analysis.overall else ""]
    return parts


def _metric_sources(config: EvalConfig) -> dict[str, str]:
    db = config.out_dir / RESULTS_DB
    if not db.is_file():
        return {}
    store = ResultStore(db, readonly=True)
    try:
        value = store.get_meta("metric_sources", {})
    finally:
        store.close()
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _md_text(text: str) -> str:
    """Text from runs, suites and the web, made inert in Markdown: no raw HTML survives."""
    return html.escape(text, quote=False)


def _md_cell(cell: Cell) -> str:
    item = cell.item
    if item is None:
        return "not run"
    bits = []
    if cell.thumb_path:
        bits.append(f"![{item.arm}]({cell.thumb_path})")
    bits.append(f"**{item.status}**")
    if cell.verdicts:
        bits.append(" ".join(f"{_mark(v)}{k}" for k, v in cell.verdicts.items()))
    if item.error:
        bits.append(f"error: {_md_text(item.error[:160])}")
    if item.gen_prompt:
        bits.append(f"prompt: {_md_text(item.gen_prompt[:300])}")
    return "<br>".join(bits)


def _html(
    config: EvalConfig,
    suites: list[Suite],
    analysis: Analysis,
    figures: list[Figure],
    plot_note: str | None,
    grid: list[tuple[str, SuitePrompt, dict[tuple[str, int], Cell]]],
) -> str:
    """The page, rendered by the Jinja2 template in evals/report_template.py (autoescape)."""
    from evals.report_template import render

    seeds = config.seed_list()
    protocol_md = _md_protocols(config, analysis)
    protocols = [line.removeprefix("- ") for line in protocol_md[3:] if line.startswith("- ")]
    context = {
        "name": config.name,
        "fairness": fairness_lines(config, suites),
        "counts": _counts_line(analysis),
        "skips": sorted(analysis.skips.items()),
        "protocols": [html.unescape(p.replace("**", "")) for p in protocols],
        "overall": {"head": OVERALL_HEAD, "rows": overall_rows(analysis)},
        "summary": {"head": SUMMARY_HEAD, "rows": summary_rows(analysis)},
        "categories": {"head": CATEGORY_HEAD, "rows": category_rows(analysis)},
        "paired": {"head": PAIRED_HEAD, "rows": paired_rows(analysis)},
        "pairwise": {"head": PAIRWISE_HEAD, "rows": pairwise_rows(analysis)},
        "ranking": {"head": RANK_HEAD, "rows": ranking_rows(analysis)},
        "ranking_metric": analysis.ranking_metric or "",
        "baseline": analysis.baseline,
        "plot_note": plot_note,
        "figures": [{"title": f.title, "src": _data_uri(f.png, "image/png")} for f in figures],
        "seeds": seeds,
        "grid": [
            {
                "key": key,
                "prompt": prompt.prompt,
                "requirements": prompt.requirements,
                "rows": [
                    {
                        "name": arm.name,
                        "cells": [_cell_view(cells[(arm.name, s)]) for s in seeds],
                    }
                    for arm in config.arms
                ],
            }
            for key, prompt, cells in grid
        ],
    }
    return render(context)


def _cell_view(cell: Cell) -> dict[str, Any] | None:
    item = cell.item
    if item is None:
        return None
    quality = set(quality_metrics())
    return {
        "thumb": _data_uri(cell.thumb, "image/jpeg") if cell.thumb is not None else None,
        "alt": f"{item.arm} seed {item.seed}",
        "status": item.status,
        "verdicts": [
            (k, "ok" if v else ("bad" if v is False else "unk"), _mark(v))
            for k, v in cell.verdicts.items()
        ],
        "scores": [
            f"{k} {_fmt(v, 2)}" for k, v in cell.scores.items() if k in quality and v is not None
        ],
        "error": item.error[:300] if item.error else None,
        "gen_prompt": item.gen_prompt[:1500] if item.gen_prompt else None,
    }
