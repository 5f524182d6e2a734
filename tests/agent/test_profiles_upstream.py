"""The gen-searcher profile reads its wording from a Gen-Searcher checkout (parsed with `ast`,
never executed), falls back to ours with a warning, and `profile-check` lists every difference
between a conversation and upstream's layout.

The fixture module below is laid out like upstream's agent module (same constant names, the
same kind of env-default budget, the truncation message as a local assignment) but its words
are ours: the test needs the layout, not their text.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

import pytest

from agent.profiles import (
    GEN_SEARCHER,
    Profile,
    RenderContext,
    ToolRequest,
    UpstreamError,
    get_profile,
    parse_upstream,
    upstream_profile,
)
from evals.profile_check import check_conversation, recorded_conversation
from tools.observations import ImageHit, Observation, Passage, SearchHit

FIXTURE = '''
"""An agent module laid out like Gen-Searcher's."""
import os

OBS_START = "<tool_response>"


def _budget():
    raw = os.environ.get("MAX_LLM_CALL_PER_RUN", "3")
    return int(raw)


MAX_IMAGES_PER_SEARCH_FOR_MODEL = 5

FINAL_MESSAGE = """
=== LAST TURN ===
No tools now. Answer with <answer>{...}</answer>.
""".strip()

SYSTEM_PROMPT_GEN_IMAGE = """Fixture rules for grounding prompts.

<tools>
{"type": "function", "function": {"name": "search", "description": "Fixture text search."}}
{"type": "function", "function": {"name": "image_search", "description": "Fixture images."}}
</tools>
"""

raise SystemExit("this module must never be executed")


class Agent:
    def run(self):
        if True:
            observation = (
                "=== RESPONSE TOO LONG ===\\n"
                "Fixture: be shorter."
            )
        else:
            observation = "Error: Invalid format. Fixture: one tag only."
        return observation
'''

TODAY = date(2026, 1, 2)


def _checkout(tmp_path: Path, text: str = FIXTURE) -> Path:
    module = (
        tmp_path
        / "Gen-DeepResearch-RL/rllm/vision_deepresearch_async_workflow"
        / "gen_image_deepresearch_agent.py"
    )
    module.parent.mkdir(parents=True)
    module.write_text(text, encoding="utf-8")
    return tmp_path


def test_parse_reads_constants_without_executing(tmp_path: Path) -> None:
    up = parse_upstream(_checkout(tmp_path))
    assert up.system.startswith("Fixture rules")
    assert up.final_message.startswith("=== LAST TURN ===")
    assert up.truncated_message == "=== RESPONSE TOO LONG ===\nFixture: be shorter."
    assert up.invalid_format == "Error: Invalid format. Fixture: one tag only."
    assert dict(up.tool_descriptions) == {
        "search": "Fixture text search.",
        "image_search": "Fixture images.",
    }
    assert up.llm_call_budget == 3 and up.max_attached_images == 5


def test_profile_uses_upstream_words(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    profile = get_profile(f"gen-searcher@{root}")
    assert profile.system([], TODAY, 8) == parse_upstream(root).system + "2026-01-02"
    assert profile.forced_final.startswith("=== LAST TURN")
    assert profile.llm_call_budget == 3
    assert profile.source.endswith("gen_image_deepresearch_agent.py")
    assert get_profile("gen-searcher") is GEN_SEARCHER


def test_missing_checkout_falls_back_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream_profile.cache_clear()
    with caplog.at_level(logging.WARNING):
        profile = get_profile("gen-searcher", source=tmp_path / "nowhere")
    assert profile.forced_final == GEN_SEARCHER.forced_final
    assert profile.source.startswith("groundwork (fallback")
    assert "own wording" in caplog.text
    with pytest.raises(UpstreamError):
        parse_upstream(tmp_path / "nowhere")


def test_fields_the_react_loop_obeys() -> None:
    p = GEN_SEARCHER
    assert p.llm_call_budget == 9 and p.stop_on_repeat and p.cut_after_tool_response
    assert p.max_listed_images == 10 and p.max_attached_images == 5 and p.max_images == 5
    assert not p.result_notes  # no "Note:" lines inside its tool results
    assert p.truncated_message and "TOO LONG" in p.truncated_message
    assert p.keep_reply("<tool_call>{}</tool_call>\n<tool_response>made up") == (
        "<tool_call>{}</tool_call>"
    )


def _conversation(profile: Profile, *, extra_note: bool = False) -> list[dict[str, object]]:
    """What a react loop obeying `profile` sends: system, prompt, a search, an image search
    with 12 results (10 listed, 5 attached), a truncation, then the budget's final message."""
    p = profile
    hits = [
        ImageHit(img_id=f"IMG_{i:03d}", sha256=f"{i:064x}", url=f"http://x/{i}.png", title=f"t{i}")
        for i in range(1, 13)
    ]
    ctx = RenderContext(budget_chars=4000, max_listed_images=p.max_listed_images)
    img_call = ToolRequest("image_search", {"query": "lantern"}, "c1")
    obs = [
        Observation(
            tool="image_search",
            query="lantern",
            ok=True,
            items=list[SearchHit | ImageHit | Passage](hits),
        )
    ]
    img_text, shas = p.render_tool_result(img_call, obs, ctx)
    if extra_note:
        img_text = img_text.replace("\n</tool_response>", "\nNote: 2 more images\n</tool_response>")
    search = ToolRequest("search", {"queries": ["lantern festival"]}, "c0")
    s_obs = [
        Observation(
            tool="search",
            query="lantern festival",
            ok=True,
            items=[SearchHit(title="A", url="http://a", snippet="s")],
        )
    ]
    s_text, _ = p.render_tool_result(search, s_obs, ctx)
    images = [
        {"type": "image_url", "image_url": {"url": f"artifact:{s}"}}
        for s in shas[: p.max_attached_images]
    ]
    call_s = (
        '<think>a</think>\n<tool_call>{"name": "search", "arguments": {"queries": ["x"]}}'
        "</tool_call>"
    )
    call_i = (
        '<think>b</think>\n<tool_call>{"name": "image_search", "arguments": '
        '{"query": "lantern"}}</tool_call>'
    )
    return [
        {"role": "system", "content": p.system([], TODAY, 8)},
        {"role": "user", "content": p.user("a lantern at the festival")},
        {"role": "assistant", "content": call_s},
        {"role": "user", "content": s_text},
        {"role": "assistant", "content": call_i},
        {"role": "user", "content": [*images, {"type": "text", "text": img_text}]},
        {"role": "assistant", "content": "<think>long"},
        {"role": "user", "content": p.truncated_message},
        {"role": "user", "content": p.forced_final},
        {"role": "assistant", "content": '<answer>{"gen_prompt": "x"}</answer>'},
    ]


def test_profile_check_faithful_conversation_has_no_differences(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    profile = get_profile("gen-searcher", source=root)
    messages = _conversation(profile)
    assert check_conversation(messages, parse_upstream(root)) == []
    # the same, read back from a run folder's trace
    run = tmp_path / "run"
    run.mkdir()
    record = {"kind": "llm", "role": "policy", "messages": messages[:-1], "answer": messages[-1]}
    (run / "trace.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    assert check_conversation(recorded_conversation(run), parse_upstream(root)) == []


def test_profile_check_reports_a_changed_template(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "a")
    changed = _checkout(tmp_path / "b", FIXTURE.replace("=== LAST TURN ===", "=== FINAL TURN ==="))
    messages = _conversation(get_profile("gen-searcher", source=root))
    diffs = [str(d) for d in check_conversation(messages, parse_upstream(changed))]
    assert any("never sends" in d and "LAST TURN" in d for d in diffs), diffs
    # our own wording against upstream's: system prompt and messages differ
    ours = [str(d) for d in check_conversation(_conversation(GEN_SEARCHER), parse_upstream(root))]
    assert any("system prompt differs" in d for d in ours), ours
    # an extra line inside a tool result is reported
    noted = _conversation(get_profile("gen-searcher", source=root), extra_note=True)
    extra = [str(d) for d in check_conversation(noted, parse_upstream(root))]
    assert any("extra line" in d and "Note:" in d for d in extra), extra


def test_profile_check_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.eval import eval_app

    root = _checkout(tmp_path / "gs")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_conversation(get_profile("gen-searcher", source=root))))
    ok = CliRunner().invoke(eval_app, ["profile-check", str(good), "--upstream", str(root)])
    assert ok.exit_code == 0 and ok.output.strip() == "", ok.output
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(_conversation(GEN_SEARCHER)))
    bad = CliRunner().invoke(eval_app, ["profile-check", str(ours), "--upstream", str(root)])
    assert bad.exit_code == 1 and "system prompt differs" in bad.output
