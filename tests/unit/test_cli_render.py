"""Nothing from the web, a file name, a setting or a prompt is interpreted as Rich markup or
reaches the terminal as raw escape sequences in `run` and `chat` output."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cli import run as main
from cli.common import fail

HOSTILE = "[bold red]pwned[/] \x1b[31mred\x1b[0m \x1b]0;title\x07 \u202etxt.exe"


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system="standard")
    monkeypatch.setattr(main, "console", console)
    return out


def _check(text: str) -> None:
    assert "[bold red]pwned[/]" in text  # shown as the literal text it is
    assert "\x1b]0;" not in text and "\x07" not in text  # no terminal title change
    assert "\x1b[31mred" not in text  # the web's colour codes are not passed through
    assert "\u202e" not in text  # no bidi override


def test_stage_tool_and_notice_events_are_shown_as_text(screen: io.StringIO) -> None:
    renderer = main.StageRenderer()
    renderer({"kind": "stage", "data": {"stage": "analyze", "summary": HOSTILE, "elapsed_s": 0.1}})
    renderer({"kind": "notice", "data": {"text": HOSTILE}})
    renderer(
        {
            "kind": "tool",
            "data": {"tool": "search", "query": HOSTILE, "ok": False, "items": 0, "error": HOSTILE},
        }
    )
    _check(screen.getvalue())


def test_error_lines_are_shown_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    fail(HOSTILE, 1)
    _check(capsys.readouterr().err)
