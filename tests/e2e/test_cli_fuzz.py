"""Arbitrary prompt text, option values and environment settings never make the CLI print a
traceback: every outcome is an exit code in {0, 1, 2, 130} with at most a one-line error.

The LLM endpoint is a closed loopback port, so a valid invocation stops at the pre-flight check
(exit 2) within milliseconds; what is fuzzed is everything before and around that.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app

pytestmark = pytest.mark.slow

CLOSED = "http://127.0.0.1:9/v1"
ENV_KEYS = [
    "GROUNDWORK_GENERATOR__SEED",
    "GROUNDWORK_GENERATOR__WIDTH",
    "GROUNDWORK_AGENT__MAX_TOOL_CALLS",
    "GROUNDWORK_TOOLS__ALLOW_HOSTS",
    "GROUNDWORK_LLM__TEMPERATURE",
    "GROUNDWORK_AGENT__GAP_TRUST",
    "GROUNDWORK_RETRIEVAL__KB_DIR",
    "GROUNDWORK_LLM__API_KEY",
]
_nasty = st.sampled_from(
    ["\x00", "\x1b[31m", "[bold red]", "[/]", "\udcff", "\n", "'", '"', "{", "]"]
)
text = st.lists(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | _nasty,
    max_size=6,
).map("".join)
env_text = text.map(lambda s: s.replace("\x00", ""))  # the OS cannot hold NUL in env
ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 64, 2**63]))


def _base_env(tmp: Path) -> dict[str, str]:
    return {
        "GROUNDWORK_LLM__BASE_URL": CLOSED,
        "GROUNDWORK_RUNS_DIR": str(tmp / "runs"),
        "GROUNDWORK_CHECKPOINT_DB": str(tmp / "c.sqlite"),
        "GROUNDWORK_ARTIFACTS__ROOT": str(tmp / "a"),
        "GROUNDWORK_RETRIEVAL__KB_DIR": str(tmp / "kb"),
        "GROUNDWORK_TRACES_DIR": str(tmp / "t"),
        "HF_HUB_OFFLINE": "1",
    }


def _check(result: object) -> None:
    code = result.exit_code  # type: ignore[attr-defined]
    output = result.output  # type: ignore[attr-defined]
    exc = result.exception  # type: ignore[attr-defined]
    assert code in {0, 1, 2, 130}, output
    assert exc is None or isinstance(exc, SystemExit), repr(exc)
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1, output


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt=text,
    seed=ints,
    width=ints,
    env=st.dictionaries(st.sampled_from(ENV_KEYS), env_text, max_size=3),
    command=st.sampled_from(["run", "chat"]),
)
def test_run_and_chat_never_show_a_traceback(
    tmp_path: Path, prompt: str, seed: int, width: int, env: dict[str, str], command: str
) -> None:
    args = [command] + ([prompt] if command == "run" else [])
    args += ["--seed", str(seed), "--width", str(width)]
    result = CliRunner().invoke(
        app, args, env={**_base_env(tmp_path), **env}, input="/quit\n", catch_exceptions=True
    )
    _check(result)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    query=text,
    sub=st.sampled_from(["search", "stats", "add", "remove"]),
    env=st.dictionaries(st.sampled_from(ENV_KEYS), env_text, max_size=2),
)
def test_kb_never_shows_a_traceback(
    tmp_path: Path, query: str, sub: str, env: dict[str, str]
) -> None:
    args = ["kb", sub] + ([] if sub == "stats" else [query or "x"])
    result = CliRunner().invoke(
        app, args, env={**_base_env(tmp_path), **env}, catch_exceptions=True
    )
    _check(result)
