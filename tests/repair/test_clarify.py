"""One clarifying question in chat (a LangGraph interrupt), answered by the next message; never
asked when questions are off (`groundwork run`, `chat --no-questions`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import Settings
from agent.stages.clarify import flags
from agent.state import RunState
from graphs.runner import Runner
from tests.conftest import REPO
from tests.repair.conftest import NO_GAPS
from tests.support.scripted_llm import ScriptedLLM
from tests.support.stage_paths import expected_stages

PROMPT = "a portrait of my dog Max in the snow"
QUESTION = "What does Max look like (breed, colour)?"
ANSWER = "a small white West Highland terrier"
ASK = {"ask": True, "question": QUESTION, "why": "only the user knows their dog"}


def _no_critic(settings: Settings, **agent: object) -> Settings:
    s = settings.merged({"agent": agent}) if agent else settings
    return s.model_copy(update={"llm": s.llm.model_copy(update={"critique_model": None})})


def test_rules_flag_what_research_cannot_settle() -> None:
    assert flags({"prompt": PROMPT})
    jaguar: RunState = {
        "prompt": "a Jaguar on a mountain road",
        "gaps": {"gaps": [{"span": "Jaguar"}]},
    }
    assert flags(jaguar)
    assert not flags({"prompt": "the 2026 Zephyr X1 drone over Lake Bled"})


@pytest.mark.slow
async def test_the_question_interrupts_and_the_answer_resumes_the_thread(
    settings: Settings, scripted_llm: ScriptedLLM
) -> None:
    from agent.services import Services

    scripted_llm.add("GapReport", NO_GAPS, NO_GAPS)
    scripted_llm.add("Clarification", ASK)
    chat = _no_critic(settings)
    services = Services(chat)
    events: list[dict[str, object]] = []
    try:
        async with Runner(chat, services) as runner:
            asked = await runner.run(PROMPT, thread_id="c", on_event=events.append)  # type: ignore[arg-type]
            assert asked.status == "interrupted" and asked.question == QUESTION
            assert asked.run_dir is None
            assert await runner.pending("c") == ("ask",)
            assert {"kind": "interrupt", "data": {"question": QUESTION}} in events
            done = await runner.run(ANSWER, thread_id="c")
    finally:
        await services.aclose()

    assert done.status == "done", done.error
    out = done.output
    assert out["prompt"] == f"{PROMPT} ({ANSWER})"
    assert ANSWER in out["grounded"]["gen_prompt"]  # the answer reached the image prompt
    assert out["clarification"]["question"] == QUESTION
    assert out["clarification"]["answer"] == ANSWER
    stages = [s["stage"] for s in out["stages"]]
    way = expected_stages("planned", "intake", "analyze", "clarify", "ask", "analyze", "research")
    assert stages[: len(way)] == way
    # the decision was not asked again on resume, analysis ran again with the answer
    assert len(scripted_llm.calls("Clarification")) == 1
    second = scripted_llm.calls("GapReport")[1]["messages"][-1]["content"]
    assert ANSWER in second
    assert done.run_dir is not None
    dossier = (done.run_dir / "dossier.md").read_text()
    assert f"**Asked:** {QUESTION} — **answer:** {ANSWER}" in dossier


@pytest.mark.slow
async def test_no_question_when_questions_are_off(
    settings: Settings, scripted_llm: ScriptedLLM
) -> None:
    from agent.services import Services

    scripted_llm.add("GapReport", NO_GAPS)
    quiet = _no_critic(settings, ask_questions=False)
    services = Services(quiet)
    try:
        async with Runner(quiet, services) as runner:
            outcome = await runner.run(PROMPT, thread_id="q")
    finally:
        await services.aclose()
    assert outcome.status == "done", outcome.error
    assert "clarify" not in [s["stage"] for s in outcome.output["stages"]]
    assert scripted_llm.calls("Clarification") == []


@pytest.mark.slow
def test_chat_asks_and_the_next_message_answers(
    tmp_path: Path, gw_env: dict[str, str], scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.add("GapReport", NO_GAPS, NO_GAPS)
    scripted_llm.add("Clarification", ASK)
    env = {
        **gw_env,
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
        "GROUNDWORK_TOOLS__TEXT_PROVIDER": "none",
        "GROUNDWORK_TOOLS__IMAGE_PROVIDER": "none",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.cli_entry", "chat", "--thread", "ask1"],
        input=f"{PROMPT}\n{ANSWER}\n/quit\n",
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    out = " ".join(proc.stdout.split())
    assert f"question {QUESTION}" in out
    assert out.count("run folder:") == 1
    (record_path,) = (tmp_path / "runs").glob("*/run.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "done"
    assert record["clarification"]["answer"] == ANSWER
    assert record["prompt"] == f"{PROMPT} ({ANSWER})"
