"""Structured-output models: what a small model's sloppy answer turns into."""

from __future__ import annotations

from agent.contracts import Gap, GroundedPrompt


def test_blank_and_repeated_queries_are_dropped_not_searched() -> None:
    gap = Gap.model_validate(
        {
            "kind": "entity",
            "span": "Zephyr X1",
            "text_queries": ["", "  zephyr   x1 specs ", "Zephyr X1 specs"],
            "image_queries": ["   "],
        }
    )
    assert gap.text_queries == ["zephyr x1 specs"]
    assert gap.image_queries == []


def test_reference_id_pattern_is_advertised_but_not_enforced() -> None:
    schema = GroundedPrompt.model_json_schema()
    assert schema["$defs"]["Ref"]["properties"]["img_id"]["pattern"] == r"^IMG_\d{3}$"
    # A malformed id validates; the synthesize node drops it with a notice instead of failing.
    grounded = GroundedPrompt.model_validate(
        {"gen_prompt": "a drone", "reference_images": [{"img_id": "image one"}]}
    )
    assert grounded.reference_images[0].img_id == "image one"
