"""Answer schemas are made once, not per call (issue 21.10: a long chat grew by a pydantic class
a turn; the RSS per turn is `python -m benchmarks.run chat-rss`)."""

from __future__ import annotations

import agent.checklist as checklist
from agent.contracts import GroundedPrompt, grounded_schema, verdict_schema


def test_answer_schemas_are_reused_across_calls() -> None:
    assert grounded_schema(True) is GroundedPrompt
    assert grounded_schema(False) is grounded_schema(False)
    assert grounded_schema(False).__name__ == "GroundedPrompt"
    assert "layout" not in grounded_schema(False).model_fields
    assert verdict_schema(3) is verdict_schema(3)
    assert verdict_schema(3) is not verdict_schema(4)
    field = verdict_schema(3).model_fields["checks"]
    assert any(getattr(m, "min_length", None) == 3 for m in field.metadata)
    plan = checklist._CHECKLIST_ONLY
    assert plan.__name__ == "PromptPlan" and "layout" not in plan.model_fields
