"""`groundwork eval ...` (the Typer sub-app): run from a TOML config, rebuild the report,
compare two results files, list suites; bad input is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from cli.eval import eval_app
from tests.evals.support import write_synthetic_suite

runner = CliRunner()


def _imported_eval(tmp: Path, name: str, shade: int) -> Path:
    """A config of two imported arms (images made elsewhere): runs in well under a second."""
    suite = tmp / "synthetic-v1.jsonl"
    if not suite.exists():
        write_synthetic_suite(suite, n=4)
    folder = tmp / f"{name}-images"
    folder.mkdir()
    lines = []
    for i in range(4):
        Image.new("RGB", (8, 8), (shade, i * 40, 0)).save(folder / f"{i}.png")
        usage = {"llm_calls": i + (shade > 100), "tool_calls": 0}
        lines.append(
            json.dumps(
                {"prompt_id": f"p{i:03d}", "image": f"{i}.png", "gen_prompt": "x", "usage": usage}
            )
        )
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    config = tmp / f"{name}.toml"
    config.write_text(
        f"""
name = "{name}"
out_dir = "{name}-out"
suites = ["synthetic-v1.jsonl"]
baseline = "base"
concurrency = 2

[settings]
artifacts = {{root = "artifacts"}}

[[arms]]
name = "base"
kind = "imported"
manifest = "{name}-images/manifest.jsonl"

[[arms]]
name = "other"
kind = "imported"
manifest = "{name}-images/manifest.jsonl"

[metrics]
enabled = ["requirements", "cost"]
"""
    )
    return config


def test_run_report_and_compare_from_the_command_line(tmp_path: Path) -> None:
    config_a = _imported_eval(tmp_path, "a", 10)
    result = runner.invoke(eval_app, ["run", str(config_a), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "base: done 4" in result.output
    assert "skipped requirements: no VLM judge configured" in result.output
    out_a = tmp_path / "a-out"
    assert (tmp_path / "artifacts").is_dir()  # [settings] paths are relative to the config
    assert (out_a / "report.html").is_file() and (out_a / "results.sqlite").is_file()

    (out_a / "report.html").unlink()
    rebuilt = runner.invoke(eval_app, ["report", str(config_a)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert (out_a / "report.html").is_file()

    config_b = _imported_eval(tmp_path, "b", 200)
    assert runner.invoke(eval_app, ["run", str(config_b), "--no-progress"]).exit_code == 0
    md = tmp_path / "compare.md"
    compared = runner.invoke(
        eval_app,
        [
            "compare",
            str(out_a / "results.sqlite"),
            str(tmp_path / "b-out" / "results.sqlite"),
            "--markdown",
            str(md),
        ],
    )
    assert compared.exit_code == 0, compared.output
    assert "4 prompts" in compared.output
    text = md.read_text()
    assert "| llm_calls | base: B − A | 4 | 1.000 |" in text


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = runner.invoke(eval_app, ["run", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "not found" in missing.output
    bad = tmp_path / "bad.toml"
    bad.write_text('suites = ["knowledge-v1"]\n[[arms]]\nname = "x"\nkind = "magic"\n')
    invalid = runner.invoke(eval_app, ["run", str(bad)])
    assert invalid.exit_code == 2 and "invalid eval config" in invalid.output
    assert "Traceback" not in invalid.output
    arm = runner.invoke(eval_app, ["compare", str(bad), str(bad), "--arm", "nonsense"])
    assert arm.exit_code == 2


def test_suites_lists_the_builtin_ones() -> None:
    result = runner.invoke(eval_app, ["suites"])
    assert result.exit_code == 0, result.output
    assert "knowledge-v1" in result.output and "compositional-v1" in result.output


def test_the_example_config_validates_and_its_arms_build_settings() -> None:
    from evals import load_config
    from evals.arms import arm_settings
    from evals.config import eval_settings

    example = Path(__file__).resolve().parents[2] / "evals" / "examples" / "plain-vs-trained.toml"
    config = load_config(example)
    kinds = {a.name: a.kind for a in config.arms}
    assert kinds["plain"] == "plain" and kinds["trained"] == "trained"
    base = eval_settings(config)
    trained = arm_settings(config.arm("trained"), base)
    assert trained.agent.react_profile == "gen-searcher"
    # only the policy role goes to the trained endpoint; helper roles stay the eval's
    assert trained.llm.endpoint_for("policy").model == "Gen-Searcher-8B"
    assert trained.llm.endpoint_for("policy").base_url == "http://localhost:8000/v1"
    for role in ("checklist", "shorten", "analyze", "synthesize"):
        assert trained.llm.endpoint_for(role) == base.llm.endpoint_for(role)
    # every arm keeps the eval's critic, whatever endpoint it brings
    critics = {arm_settings(a, base).llm.base_url_for("critique") for a in config.arms}
    assert critics == {"http://localhost:8002/v1"}


def test_limit_runs_a_smoke_subset_and_an_arm_without_images_exits_1(tmp_path: Path) -> None:
    config = _imported_eval(tmp_path, "lim", 10)
    result = runner.invoke(eval_app, ["run", str(config), "--no-progress", "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "base: done 2" in result.output
    # an arm whose every image is missing produced no result: exit 1, saying which arm
    manifest = tmp_path / "lim-images" / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('.png"', '-gone.png"'))
    gone = runner.invoke(
        eval_app, ["run", str(config), "--no-progress", "-o", str(tmp_path / "o2")]
    )
    assert gone.exit_code == 1
    assert "no image from arm(s) base, other" in gone.output
