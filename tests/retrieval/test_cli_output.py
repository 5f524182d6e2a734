"""Nothing that came from a file name, a document, a setting or an argument is read as Rich
markup or reaches the terminal as an escape sequence, in any `kb` command's output or errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.kb import kb_app

NAME = "[bold red]x\x1b[31m:warning:"  # markup, a raw escape, an emoji code
DOC = (
    "# [link=file:///etc]Heading[/link]\n\nThe [bold]kite[/bold] \x1b[2J\x1b]0;title\x07"
    "flies \x9b31mhigh \u202eover\u202c the :fire: hills.\n"
)
RAW = ("\x1b", "\x9b", "\x07", "\u202e")


@pytest.fixture()
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_clip: str) -> CliRunner:
    for k in list(__import__("os").environ):
        if k.startswith("GROUNDWORK_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("GROUNDWORK_RETRIEVAL__CLIP_MODEL", tiny_clip)
    monkeypatch.setenv("GROUNDWORK_RETRIEVAL__DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping inside table cells
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def clean(output: str) -> None:
    bad = [c for c in RAW if c in output]
    assert not bad, f"raw control characters {bad!r} in: {output!r}"


def test_names_and_documents_print_literally(
    runner: CliRunner, tmp_path: Path, png: Callable[..., Path]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / f"{NAME}.md").write_text(DOC, encoding="utf-8")
    png(data / f"{NAME}.png", (30, 60, 90))
    (data / f"{NAME}-broken.jpg").write_bytes(b"not a jpeg")  # listed in the skip table
    kb = tmp_path / f"kb [blue]{chr(27)}[5m"
    res = runner.invoke(kb_app, ["add", str(data), "--kb-dir", str(kb), "-q"])
    assert res.exit_code == 0, res.output
    clean(res.output)
    assert "[bold red]x" in res.output and ":warning:" in res.output  # shown, not interpreted

    res = runner.invoke(kb_app, ["search", "[bold]kite[/bold]", "--kb-dir", str(kb)])
    assert res.exit_code == 0, res.output
    clean(res.output)
    assert "[bold red]x" in res.output  # the file column
    assert "[bold]kite[/bold]" in res.output  # the passage and the query in the title
    assert ":fire:" in res.output

    res = runner.invoke(kb_app, ["search", "kite", "--kb-dir", str(kb), "--json"])
    assert res.exit_code == 0, res.output
    clean(res.output)
    hits = [json.loads(line) for line in res.output.splitlines()]
    assert any(Path(h["path"]).name.startswith("[bold red]x\x1b[31m") for h in hits)  # exact

    res = runner.invoke(kb_app, ["stats", "--kb-dir", str(kb)])
    assert res.exit_code == 0, res.output
    clean(res.output)
    assert "kb [blue]" in res.output

    res = runner.invoke(kb_app, ["remove", str(data / f"{NAME}.md"), "--kb-dir", str(kb)])
    assert res.exit_code == 0, res.output
    clean(res.output)


@pytest.mark.parametrize(
    "args",
    [
        ["add", f"/nonexistent/{NAME}"],
        ["search", "q", "--kb-dir", f"/nonexistent/{NAME}"],
        ["stats", "--kb-dir", f"/nonexistent/{NAME}"],
        ["remove", "x", "--kb-dir", f"/nonexistent/{NAME}"],
        ["add", ".", "--index", NAME],
        ["search", "q", "--kind", NAME],
    ],
    ids=["add-path", "search-kb", "stats-kb", "remove-kb", "add-index", "search-kind"],
)
def test_errors_print_arguments_literally_on_one_line(runner: CliRunner, args: list[str]) -> None:
    res = runner.invoke(kb_app, args)
    assert res.exit_code == 2, res.output
    clean(res.output)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "[bold red]x" in res.output and ":warning:" in res.output


def test_bad_setting_is_one_line_not_a_traceback(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROUNDWORK_RETRIEVAL__BATCH_SIZE", "[red]lots\x1b[0m")
    res = runner.invoke(kb_app, ["stats"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    clean(res.output)
    assert res.output.startswith("error:") and "batch_size" in res.output
