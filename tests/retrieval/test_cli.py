"""`groundwork kb add/search/stats/remove` through typer's CliRunner against kb_app."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.kb import kb_app


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_clip: str) -> Path:
    """Settings come from the environment like in production; options override them."""
    for k in list(__import__("os").environ):
        if k.startswith("GROUNDWORK_"):
            monkeypatch.delenv(k)
    kb = tmp_path / "kb"
    monkeypatch.setenv("GROUNDWORK_RETRIEVAL__KB_DIR", str(kb))
    monkeypatch.setenv("GROUNDWORK_RETRIEVAL__CLIP_MODEL", tiny_clip)
    monkeypatch.setenv("GROUNDWORK_RETRIEVAL__DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return kb


def test_add_search_stats_remove(env: Path, corpus_dir: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(kb_app, ["add", str(corpus_dir)])
    assert res.exit_code == 0, res.output
    assert "added 3 images, 5 documents" in res.output
    assert "skipped 4 files" in res.output and "not an image" in res.output
    assert "files/s" in res.output and "ETA" in res.output  # the progress bar

    res = runner.invoke(kb_app, ["add", str(corpus_dir), "-q"])
    assert res.exit_code == 0 and "unchanged" in res.output

    res = runner.invoke(kb_app, ["search", "Aurora sneaker colour", "--json", "-k", "2"])
    assert res.exit_code == 0, res.output
    hits = [json.loads(line) for line in res.output.splitlines()]
    assert hits[0]["kind"] == "text" and hits[0]["path"].endswith("brand.md")
    assert {h["kind"] for h in hits} == {"text", "image"} and len(hits) == 4

    res = runner.invoke(kb_app, ["search", "sunset", "--kind", "images"])
    assert res.exit_code == 0 and "images for 'sunset'" in res.output

    res = runner.invoke(kb_app, ["stats", "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    counts = {c["name"]: (c["count"], c["files"], c["dim"]) for c in st["collections"]}
    assert counts["images"] == (3, 3, 32) and counts["passages"][1] == 5
    res = runner.invoke(kb_app, ["stats"])
    assert res.exit_code == 0 and "passages" in res.output

    res = runner.invoke(kb_app, ["remove", str(corpus_dir / "images")])
    assert res.exit_code == 0 and "removed 3 entries" in res.output


def test_errors_are_one_line_and_exit_2(
    env: Path, tmp_path: Path, png: Callable[..., Path]
) -> None:
    runner = CliRunner()
    res = runner.invoke(kb_app, ["search", "anything"])
    assert res.exit_code == 2 and "No knowledge base" in res.output
    res = runner.invoke(kb_app, ["add", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(kb_app, ["add", str(tmp_path), "--index", "magic"])
    assert res.exit_code == 2
    png(tmp_path / "pics" / "a.png", (1, 2, 3))
    res = runner.invoke(
        kb_app,
        [
            "add",
            str(tmp_path / "pics"),
            "--kb-dir",
            str(tmp_path / "kb2"),
            "--clip-model",
            "ViT-B-32",
            "--clip-pretrained",
            "laion2b_s34b_b79k",
        ],
        env={"HF_HOME": str(tmp_path / "hf")},
    )
    assert res.exit_code == 2, res.output
    assert "ViT-B-32" in res.output and "not cached" in res.output
