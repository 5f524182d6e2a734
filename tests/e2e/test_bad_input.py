"""Bad input: one clear line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.support.scripted_llm import ScriptedLLM


def _invoke(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


@pytest.fixture
def env(gw_env: dict[str, str], scripted_llm: ScriptedLLM) -> dict[str, str]:
    return {
        **gw_env,
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
    }


def _one_line_error(code: int, stderr: str, needle: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), stderr
    assert needle in stderr, stderr


@pytest.mark.parametrize("prompt", ["", "   \n\t "])
def test_empty_prompt(env: dict[str, str], prompt: str) -> None:
    _one_line_error(*_invoke(["run", prompt], env), "prompt is empty")


def test_prompt_over_the_documented_limit(env: dict[str, str]) -> None:
    code, err = _invoke(["run", "x" * 2001], env)
    _one_line_error(code, err, "limit is 2000")


def test_unknown_generator_model(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-pipeline"
    code, err = _invoke(["run", "a cat", "--model", str(missing)], env)
    _one_line_error(code, err, "no-such-pipeline")


def test_unknown_hub_model_offline(env: dict[str, str]) -> None:
    code, err = _invoke(["run", "a cat", "--model", "nobody/no-such-model-xyz"], env)
    _one_line_error(code, err, "nobody/no-such-model-xyz")


def test_unknown_llm_model(env: dict[str, str]) -> None:
    code, err = _invoke(["run", "a cat", "--llm-model", "gpt-99"], env)
    _one_line_error(code, err, "unknown model gpt-99")


def test_unreachable_endpoint(env: dict[str, str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = _invoke(["run", "a cat", "--llm-base-url", f"http://127.0.0.1:{port}/v1"], env)
    _one_line_error(code, err, "cannot reach the LLM endpoint")


def test_unreachable_policy_endpoint_fails_before_any_work(env: dict[str, str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/v1"
    code, err = _invoke(["run", "a cat", "--policy", "react", "--policy-base-url", dead], env)
    _one_line_error(code, err, "cannot reach the policy endpoint")
    assert "--policy-base-url" in err


def test_unwritable_output_folder(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = _invoke(["run", "a cat", "--out", str(blocker / "runs")], env)
    _one_line_error(code, err, "cannot write the run folder")


@pytest.mark.parametrize(
    ("option", "where"),
    [
        ("--out", "/proc/groundwork-test/runs"),
        ("--out", "/proc/self/runs"),
        ("--out", "/sys/groundwork-test"),
        ("GROUNDWORK_TRACES_DIR", "/proc/groundwork-traces"),
        ("GROUNDWORK_CHECKPOINT_DB", "/proc/groundwork/checkpoints.sqlite"),
    ],
)
def test_output_the_kernel_refuses_fails_before_any_work(
    env: dict[str, str], tmp_path: Path, option: str, where: str
) -> None:
    """Root passes os.access on /proc and /sys; the check really creates a probe, so the run
    stops with one line before research, not after the whole run (issue 22.10)."""
    args = ["run", "a cat"]
    if option.startswith("--"):
        args += [option, where]
    else:
        env = {**env, option: where}
    code, err = _invoke(args, env)
    _one_line_error(code, err, "cannot write the")
    assert not list(tmp_path.rglob("trace.jsonl"))  # nothing ran


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        (
            "GROUNDWORK_STORE__URL",
            "postgresql://gw:pw@127.0.0.1:{port}/gw",
            "cannot reach PostgreSQL",
        ),
        ("GROUNDWORK_STORE__URL", "mysql://gw@127.0.0.1/gw", "store.url"),
        ("GROUNDWORK_ARTIFACTS__URL", "s3://", "artifacts.url"),
    ],
)
def test_unusable_shared_store_fails_before_any_work(
    env: dict[str, str], key: str, value: str, needle: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = _invoke(["run", "a cat"], {**env, key: value.format(port=port)})
    _one_line_error(code, err, needle)
    assert ":pw@" not in err


def test_invalid_setting_from_env(env: dict[str, str]) -> None:
    code, err = _invoke(["run", "a cat"], {**env, "GROUNDWORK_GENERATOR__STEPS": "zero"})
    _one_line_error(code, err, "generator.steps")


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "chat"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [("a cat\x00 on a mat", "NUL byte"), ("a caf\udce9 au lait", "not valid UTF-8")],
)
def test_prompt_that_is_not_text(env: dict[str, str], prompt: str, needle: str) -> None:
    code, err = _invoke(["run", prompt], env)
    _one_line_error(code, err, needle)


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**80)])
def test_seed_outside_the_generators_range(env: dict[str, str], seed: str) -> None:
    code, err = _invoke(["run", "a cat", "--seed", seed], env)
    _one_line_error(code, err, "generator.seed")


@pytest.mark.parametrize(
    ("key", "value"),
    [("GROUNDWORK_TOOLS__ALLOW_HOSTS", "[not json"), ("GROUNDWORK_LLM", "{'base_url': 1")],
)
def test_setting_that_is_not_valid_json(env: dict[str, str], key: str, value: str) -> None:
    code, err = _invoke(["run", "a cat"], {**env, key: value})
    _one_line_error(code, err, "invalid setting")


@pytest.mark.parametrize("entry", ["127.0.0.1:99999", "127.0.0.1:http", "[::1]:-5"])
def test_allow_list_entry_with_a_bad_port(env: dict[str, str], entry: str) -> None:
    code, err = _invoke(["run", "a cat"], {**env, "GROUNDWORK_TOOLS__ALLOW_HOSTS": f'["{entry}"]'})
    _one_line_error(code, err, "allow")


def test_every_command_is_listed_in_help() -> None:
    result = CliRunner().invoke(app, ["--help"])
    for command in ("worker", "kb", "eval", "traces", "serve"):
        assert command in result.stdout
