"""The report: Markdown with relative files that exist, and a self-contained HTML page that
headless Chromium renders with every image loaded (thumbnails and plots as data URIs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.artifacts import ArtifactStore
from evals import parse_config, run_eval
from tests.evals.support import (
    Oracle,
    OracleJudge,
    SyntheticArm,
    base_passes,
    body_counts,
    bonus,
    chromium_path,
    render_page,
    synthetic_config,
    write_synthetic_suite,
)


def _report(tmp_path: Path) -> tuple[Path, Path, int]:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=5)
    oracle = Oracle()
    store = ArtifactStore(tmp_path / "artifacts")
    arms = {
        "plain": SyntheticArm("plain", store, oracle, base_passes),
        "agent": SyntheticArm(
            "agent",
            store,
            oracle,
            lambda k, s: base_passes(k, s) + bonus(k, s),
            fail_keys={"synthetic-v1/p004"},
            gen_prompt=lambda p: p.prompt + ", <b>grounded</b> & | piped",
        ),
    }
    config = parse_config(synthetic_config(tmp_path, suite, seeds=[0, 1], max_attempts=1))
    result = run_eval(config, arms=arms, judge=OracleJudge(oracle), progress=False)
    assert result.report_md and result.report_html
    thumbs = 5 * 2 * 2 - 2  # prompts x seeds x arms, less the agent's two failed runs
    return result.report_md, result.report_html, thumbs


def test_markdown_links_files_that_exist_and_escapes_table_cells(tmp_path: Path) -> None:
    md_path, _, thumbs = _report(tmp_path)
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len([x for x in links if "/thumbs/" in x]) == thumbs
    assert {
        "report_files/scores.png",
        "report_files/deltas.png",
        "report_files/latency.png",
    } <= set(links)
    for link in links:
        assert (md_path.parent / link).is_file(), link
    assert "## Paired against `plain`" in md and "requirements ↑" in md
    assert "piped" in md and "\\| piped" in md  # a pipe in a prompt cannot break the table
    assert "synthetic failure" in md and "same seeds (0, 1)" in md
    # no raw HTML from a run reaches the Markdown (issue 22.10)
    assert "<b>grounded</b>" not in md and "&lt;b&gt;grounded&lt;/b&gt;" in md


@pytest.mark.parametrize("payload", ["<script>alert(1)</script>", "<img src=x onerror=y>"])
def test_hostile_strings_are_escaped_in_both_reports(tmp_path: Path, payload: str) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=2)
    oracle = Oracle()
    store = ArtifactStore(tmp_path / "artifacts")
    arms = {
        "plain": SyntheticArm("plain", store, oracle, base_passes),
        "agent": SyntheticArm(
            "agent", store, oracle, base_passes, gen_prompt=lambda p: f"{p.prompt} {payload}"
        ),
    }
    raw = synthetic_config(tmp_path, suite, name=f"x[/y] {payload}")
    result = run_eval(parse_config(raw), arms=arms, judge=OracleJudge(oracle), progress=True)
    assert result.report_md and result.report_html
    for text in (result.report_md.read_text(), result.report_html.read_text()):
        assert payload not in text
        assert payload.replace("<", "&lt;").replace(">", "&gt;") in text


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium_with_no_broken_image(tmp_path: Path) -> None:
    if chromium_path() is None:
        pytest.skip("chromium not installed (apt-get install chromium): the render check needs it")
    _, html_path, thumbs = _report(tmp_path)
    page = html_path.read_text()
    assert "<b>grounded</b>" not in page and "&lt;b&gt;grounded&lt;/b&gt;" in page
    assert not re.search(r"src=['\"](?!data:)", page), "the HTML must not depend on other files"
    shot = tmp_path / "report.png"
    dom = render_page(html_path, tmp_path / "chromium-profile", shot)
    counts = body_counts(dom)
    plots = 3
    assert counts == {"total": thumbs + plots, "loaded": thumbs + plots, "broken": 0}
    assert dom.count('class="thumb"') == thumbs
    assert len(re.findall(r"<table class=\"grid\"", dom)) == 5
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
