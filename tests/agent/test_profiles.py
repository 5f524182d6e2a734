"""The protocol profiles' parser and ordinal resolution, without a server."""

from __future__ import annotations

import dataclasses

import pytest

from agent.profiles import (
    GEN_SEARCHER,
    PROFILES,
    OrdinalRef,
    get_profile,
    loads_lenient,
    parse_text_protocol,
    register_profile,
    resolve_ordinals,
)
from core.errors import InputError


def test_lenient_json_reads_what_trained_models_write() -> None:
    assert loads_lenient("{name: 'search', arguments: {queries: ['a',],},}") == {
        "name": "search",
        "arguments": {"queries": ["a"]},
    }
    with pytest.raises(ValueError):
        loads_lenient("{'name': ")


def test_tool_calls_are_parsed_after_think_and_before_invented_results() -> None:
    reply = (
        "<think>I should search.</think>\n<tool_call>\n"
        '{"name": "search", "arguments": "{\\"queries\\": [\\"zephyr\\"]}"}\n</tool_call>\n'
        '<tool_response>made-up result <tool_call>{"name": "browse"}</tool_call>'
    )
    parsed = parse_text_protocol(reply, turn=3)
    assert parsed.error is None and parsed.answer is None
    assert [(c.name, c.arguments, c.call_id) for c in parsed.calls] == [
        ("search", {"queries": ["zephyr"]}, "call_3_0")
    ]


def test_a_lone_closing_think_and_a_missing_closing_tag() -> None:
    # Templates that open <think> in the prompt leave only its end; truncation drops the close.
    parsed = parse_text_protocol(
        'planning <tool_call> fake </think><tool_call>{"name": "image_search", '
        '"arguments": {"query": "x"}}',
        turn=0,
    )
    assert [c.name for c in parsed.calls] == ["image_search"]


def test_answers_tagged_fenced_or_bare() -> None:
    tagged = parse_text_protocol(
        '<think>done</think><answer>\n```json\n{"gen_prompt": "a", "reference_images": []}\n'
        "```\n</answer>",
        turn=0,
    )
    assert tagged.answer == {"gen_prompt": "a", "reference_images": []}
    bare = parse_text_protocol('Here it is: {"gen_prompt": "b"}', turn=0)
    assert bare.answer == {"gen_prompt": "b"}
    assert parse_text_protocol("<answer>[1, 2]</answer>", turn=0).error == (
        'the answer must be a JSON object with a "gen_prompt" string'
    )


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("<tool_call>{'name': 'search', 'arguments': }</tool_call>", "not valid JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'must be {"name"'),
        ('<tool_call>{"name": "search", "arguments": [1]}</tool_call>', "must be a JSON object"),
        ("Let me think about it.", "exactly one <tool_call> or an <answer>"),
        ("<answer>{'gen_prompt': </answer>", "the answer is not valid JSON"),
    ],
)
def test_malformed_replies_say_what_is_wrong(reply: str, error: str) -> None:
    parsed = parse_text_protocol(reply, turn=0)
    assert not parsed.calls and parsed.answer is None
    assert parsed.error is not None and error in parsed.error


def test_a_bad_block_beside_good_ones_is_a_note() -> None:
    parsed = parse_text_protocol(
        '<tool_call>{"name": "search", "arguments": {"queries": ["a"]}}</tool_call>'
        "<tool_call>{broken</tool_call>",
        turn=1,
    )
    assert [c.call_id for c in parsed.calls] == ["call_1_0"]
    assert parsed.notes and "not valid JSON" in parsed.notes[0]


REFS = [
    OrdinalRef("IMG_002", "a red scooter."),
    OrdinalRef("IMG_004", "", fallback="Lake Bled island"),
    OrdinalRef("IMG_007", "the rider's yellow helmet"),
]


def test_text_only_generators_get_notes_never_the_phrase() -> None:
    text, mapping = resolve_ordinals(
        "The first reference image parked by the second reference image, rider wearing the "
        "third reference image; see the fifth reference image.",
        REFS,
        keep_phrases=False,
    )
    assert text == (
        "A red scooter parked by Lake Bled island, rider wearing the rider's yellow helmet; "
        "see the subject."
    )
    assert "reference image" not in text
    assert [m["img_id"] for m in mapping] == ["IMG_002", "IMG_004", "IMG_007", ""]


def test_edit_models_keep_phrases_renumbered_past_dropped_references() -> None:
    refs = [dataclasses.replace(REFS[0], kept=False), REFS[1], REFS[2]]
    text, mapping = resolve_ordinals(
        "the first reference image beside the second reference image and the third reference image",
        refs,
        keep_phrases=True,
    )
    # IMG_002 was dropped: its phrase becomes its note; the others move up one place.
    assert text == ("a red scooter beside the first reference image and the second reference image")
    assert [m["replaced_with"] for m in mapping] == [
        "a red scooter",
        "the first reference image",
        "the second reference image",
    ]
    only, kept = resolve_ordinals("The only reference image", REFS[1:2], keep_phrases=True)
    assert only == "The only reference image"
    assert kept == [
        {"phrase": "The only reference image", "img_id": "IMG_004", "replaced_with": ""}
    ]


def test_plural_and_unrelated_phrases_are_left_alone() -> None:
    text, mapping = resolve_ordinals(
        "the reference images, a first draft", REFS, keep_phrases=False
    )
    assert text == "the reference images, a first draft" and mapping == []


def test_profiles_registry_is_open() -> None:
    with pytest.raises(InputError, match="unknown react profile 'nope'"):
        get_profile("nope")
    custom = dataclasses.replace(GEN_SEARCHER, name="gen-searcher-verbatim")
    try:
        assert get_profile(register_profile(custom).name) is custom
    finally:
        PROFILES.pop("gen-searcher-verbatim")


def test_a_copied_template_placeholder_is_not_a_prompt() -> None:
    from agent.stages.react import is_placeholder

    assert is_placeholder("<the prompt for the image model>")
    assert is_placeholder("  <description>  ")
    assert not is_placeholder("an orange drone <with> four rotors over a lake")
    assert not is_placeholder("an orange drone over a lake")
