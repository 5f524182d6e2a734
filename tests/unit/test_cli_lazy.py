"""The CLI registers its commands lazily: `groundwork --help` and `groundwork worker --help`
import no settings, graphs or models (the start-up time itself is `benchmarks.run startup`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("agent", "graphs", "evals", "service", "tuning", "torch", "diffusers", "langgraph")

PROBE = """
import json, sys
from cli.main import app
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(*args: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [("--help",), ("worker", "--help")])
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    loaded = _modules_after(*args)
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert heavy == []
    if args[0] == "worker":
        assert "cli.worker" in loaded
    else:
        assert not any(m.startswith("cli.") and m != "cli.main" for m in loaded)


def test_run_help_loads_settings_but_no_graph() -> None:
    """`run --help` needs the override table (agent.settings), not the graphs or models."""
    loaded = _modules_after("run", "--help")
    assert "agent.settings" in loaded
    heavy = sorted(
        m
        for m in loaded
        if m.split(".")[0] in {"graphs", "langgraph", "langchain_core", "torch", "diffusers"}
    )
    assert heavy == []


def test_root_help_lists_every_command_without_loading_it() -> None:
    result = CliRunner().invoke(cli_main.app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name, spec in cli_main.COMMANDS.items():
        assert name in result.stdout
        assert spec.help in result.stdout


def test_a_missing_command_module_is_one_line_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tune` lives in cli/tune.py; a checkout without it still starts, and using it says why."""
    monkeypatch.setitem(
        cli_main.COMMANDS,
        "tune",
        cli_main.LazyCommand("cli.no_such_module", "tune_app", "Train things."),
    )
    ok = CliRunner().invoke(cli_main.app, ["--help"])
    assert ok.exit_code == 0 and "tune" in ok.stdout
    result = CliRunner().invoke(cli_main.app, ["tune", "policy", "--epochs", "1"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "command 'tune' is not available" in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_every_registered_command_loads() -> None:
    """Each table entry names a real module attribute (tune only once cli/tune.py exists)."""
    for name, spec in cli_main.COMMANDS.items():
        if name == "tune" and not (REPO / "cli" / "tune.py").exists():
            continue
        command = cli_main.load_command(name, spec)
        assert command.name == name
        assert not (command.help or "").startswith("(unavailable)"), (name, command.help)
