"""The one override table (agent.settings.RunContext): every row lands on its settings path, the
CLI's `run`/`chat` options are generated from it, and nothing else keeps a flag-to-setting map."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from agent.settings import (
    POLICIES,
    OverrideField,
    RunContext,
    Settings,
    override_fields,
)
from cli.options import OutOpt, PolicyOpt, with_overrides

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("GROUNDWORK_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def _get(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _sample(row: OverrideField) -> Any:
    """A valid, non-default value for the row's setting (inside its ge/le bounds)."""
    if row.type is int:
        lows = [m.ge for m in row.settings_field().metadata if hasattr(m, "ge")]
        default = row.settings_field().default
        value = (lows[0] if lows else 0) + 1
        return value + 1 if value == default else value
    return f"value-of-{row.name}"


def test_every_row_names_a_real_setting_of_its_type() -> None:
    rows = override_fields()
    assert rows, "the table is empty"
    for row in rows:
        info = row.settings_field()  # raises on a misspelt path
        assert row.help and row.path
        annotation = info.annotation
        assert annotation is not None
        assert row.type in (annotation, *getattr(annotation, "__args__", ())), row
        assert not (isinstance(annotation, type) and issubclass(annotation, BaseModel))


def test_each_row_lands_on_its_path_and_nowhere_else() -> None:
    base = Settings()
    for row in override_fields():
        value = _sample(row)
        applied = RunContext(**{row.name: value}).apply(base)
        assert _get(applied, row.path) == value, row
        changed = {
            f"{section}.{k}"
            for section, data in applied.model_dump().items()
            if isinstance(data, dict)
            for k, v in data.items()
            if v != base.model_dump()[section][k]
        }
        assert changed == {row.path}, row


def test_empty_context_keeps_the_settings_object() -> None:
    base = Settings()
    assert RunContext().apply(base) is base
    assert RunContext().overrides() == {}


def test_http_rows_are_per_run_knobs_only() -> None:
    """Endpoints and the generator's model configure long-lived services and can point the
    server anywhere: a request from outside may not set them."""
    http = {row.name for row in override_fields() if row.http}
    assert {"seed", "width", "height", "steps", "max_rounds", "max_tool_calls"} <= http
    assert not any("base_url" in name or name.endswith("model") for name in http)


def test_flags_are_unique_and_spelled_as_options() -> None:
    flags = [f for row in override_fields() if row.cli for f in row.flags]
    assert len(flags) == len(set(flags))
    assert all(f.startswith("-") for f in flags)


def _demo_app() -> tuple[typer.Typer, list[RunContext]]:
    seen: list[RunContext] = []
    app = typer.Typer()

    @app.command()
    @with_overrides
    def go(
        prompt: Annotated[str | None, typer.Argument()] = None,
        out: OutOpt = None,
        policy: PolicyOpt = "planned",
        *,
        overrides: RunContext,
    ) -> None:
        seen.append(overrides)

    return app, seen


def test_generated_options_fill_one_run_context() -> None:
    app, seen = _demo_app()
    args = ["a cat"]
    expected: dict[str, Any] = {}
    for row in override_fields():
        if row.cli:
            value = _sample(row)
            args += [row.flags[0], str(value)]
            expected[row.name] = value
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {k: getattr(seen[0], k) for k in expected} == expected


def test_rows_without_cli_get_no_option_and_help_groups_them() -> None:
    app, _ = _demo_app()
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for row in override_fields():
        present = f"{row.flags[0]} " in result.output
        assert present == row.cli, row
    assert "Overrides" in result.output


def test_policy_choice_is_the_one_literal() -> None:
    app, _ = _demo_app()
    result = CliRunner().invoke(app, ["x", "--policy", "nonsense"])
    assert result.exit_code == 2
    assert set(POLICIES) == {"planned", "react"}


def test_run_and_chat_take_their_options_from_the_table() -> None:
    from cli import run as run_module

    cli_rows = {row.name for row in override_fields() if row.cli}
    for command in (run_module.run, run_module.chat):
        params = set(inspect.signature(command).parameters)
        assert cli_rows <= params, command
        assert "overrides" not in params


def test_no_second_policy_literal_in_the_product() -> None:
    """The Policy Literal is defined once (agent.settings) and imported everywhere else."""
    offenders = []
    for pkg in ("agent", "graphs", "evals", "service", "cli", "tuning", "tools"):
        for f in (REPO / pkg).rglob("*.py"):
            text = f.read_text()
            if 'Literal["planned", "react"]' in text and f != REPO / "agent" / "settings.py":
                offenders.append(str(f.relative_to(REPO)))
    assert offenders == []
