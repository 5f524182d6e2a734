"""Our suites are well formed and big enough; external benchmark files load in their own
formats (GenEval, T2I-CompBench, WISE, DPG-Bench), and malformed files fail with the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.suites import SuiteError, builtin_suites, load_suite


@pytest.mark.parametrize("name", ["knowledge-v1", "compositional-v1"])
def test_builtin_suites_are_big_checkable_and_versioned(name: str) -> None:
    suite = load_suite(name)
    assert suite.name == name and suite.version == "1" and len(suite.sha256) == 64
    assert len(suite.prompts) >= 60
    assert len({p.prompt for p in suite.prompts}) == len(suite.prompts)
    for p in suite.prompts:
        assert p.requirements, p.id
        for r in p.requirements:
            assert r.question.endswith("?")
            assert r.fact and r.aliases, (p.id, r.id)
    kinds = {r.kind for p in suite.prompts for r in p.requirements}
    if name == "knowledge-v1":
        assert all(any(r.kind == "knowledge" for r in p.requirements) for p in suite.prompts)
        assert len({p.category for p in suite.prompts}) >= 5
    else:
        assert {"count", "color", "relation", "text"} <= kinds
    assert name in builtin_suites()


def test_geneval_metadata_becomes_count_colour_and_position_questions(tmp_path: Path) -> None:
    path = tmp_path / "evaluation_metadata.jsonl"
    rows = [
        {
            "tag": "single_object",
            "include": [{"class": "bench", "count": 1}],
            "prompt": "a photo of a bench",
        },
        {
            "tag": "counting",
            "include": [{"class": "clock", "count": 3}],
            "exclude": [{"class": "clock", "count": 4}],
            "prompt": "a photo of three clocks",
        },
        {
            "tag": "color_attr",
            "include": [
                {"class": "suitcase", "count": 1, "color": "purple"},
                {"class": "pizza", "count": 1, "color": "orange"},
            ],
            "prompt": "a photo of a purple suitcase and an orange pizza",
        },
        {
            "tag": "position",
            "include": [
                {"class": "bowl", "count": 1},
                {"class": "apple", "count": 1, "position": ["right of", 0]},
            ],
            "prompt": "a photo of an apple right of a bowl",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    suite = load_suite(tmp_path)  # the folder is detected as GenEval
    assert suite.format == "geneval" and len(suite.prompts) == 4
    bench, clocks, colours, position = suite.prompts
    assert bench.id == "00000" and bench.category == "single_object"
    assert bench.requirements[0].question == "Does the image show a bench?"
    assert clocks.requirements[0].question == "Does the image show exactly three clocks?"
    assert clocks.requirements[-1].question == "Does the image show fewer than four clocks?"
    assert [r.question for r in colours.requirements if r.kind == "color"] == [
        "Is the suitcase in the image purple?",
        "Is the pizza in the image orange?",
    ]
    rel = next(r for r in position.requirements if r.kind == "relation")
    assert rel.question == "Is the apple right of the bowl?"


def test_t2i_compbench_published_folder_loads_with_its_split(tmp_path: Path) -> None:
    # the published layout: <category>_train.txt and <category>_val.txt side by side
    (tmp_path / "color_train.txt").write_text("a green bench and a red car\na pink cup\n")
    (tmp_path / "color_val.txt").write_text("a green bench and a red car\n\na blue bowl\n")
    (tmp_path / "spatial_val.txt").write_text("a cat on the left of a dog\n")
    suite = load_suite(tmp_path, fmt="t2i-compbench")  # evaluations use val
    assert [p.id for p in suite.prompts] == ["color-val-0000", "color-val-0001", "spatial-val-0000"]
    assert suite.prompts[2].category == "spatial" and suite.prompts[0].meta["split"] == "val"
    assert suite.prompts[0].requirements[0].question == (
        'Does the image show "a green bench and a red car"?'
    )
    everything = load_suite(tmp_path, fmt="t2i-compbench", split="all")  # no "ids repeat"
    assert len(everything.prompts) == 5
    assert {p.meta["split"] for p in everything.prompts} == {"train", "val"}
    assert len(load_suite(tmp_path, split="train").prompts) == 2
    single = load_suite(tmp_path / "color_val.txt")
    assert single.format == "t2i-compbench" and len(single.prompts) == 2


def test_wise_explanation_goes_to_the_judge_not_to_word_matching(tmp_path: Path) -> None:
    data = [
        {
            "prompt_id": 1,
            "Prompt": "Traditional food of the Mid-Autumn Festival",
            "Explanation": "Mooncakes, round pastries with an imprinted top",
            "Category": "Cultural knowledge",
            "Subcategory": "Festival",
        },
        {"prompt_id": 2, "Prompt": "The tallest animal in the world"},
        {"prompt_id": 700, "Prompt": "x", "Explanation": "y", "Answer": "giraffe"},
    ]
    (tmp_path / "merge.json").write_text(json.dumps(data))
    suite = load_suite(tmp_path / "merge.json")
    assert suite.format == "wise" and suite.protocol and suite.protocol.name == "WISE_Verified"
    moon, tall, bio = suite.prompts
    assert moon.id == "1" and moon.category == "CULTURE" and moon.tags == ["Festival"]
    assert "Mooncakes" in moon.requirements[0].question
    # the Explanation restates the riddle: it is no fact for word matching; an answer entity
    # counts only where the file gives one
    assert moon.requirements[0].fact == "" and bio.requirements[0].fact == "giraffe"
    assert bio.category == "BIOLOGY"
    assert tall.requirements[0].id == "prompt"
    # legacy WISE files number differently: they keep their own Category, and no weighted
    # overall is claimed for them
    legacy = [{"prompt_id": 450, "Prompt": "p", "Explanation": "e", "Category": "Space"}]
    (tmp_path / "spatio-temporal_reasoning.json").write_text(json.dumps(legacy))
    old = load_suite(tmp_path / "spatio-temporal_reasoning.json")
    assert old.prompts[0].category == "SPACE"
    assert old.protocol and old.protocol.category_weights is None


def test_dpg_bench_csv_groups_questions_by_item(tmp_path: Path) -> None:
    head = (
        "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,"
        "tuple,question_natural_language\n"
    )
    body = (
        'dpg1,"A red kite above a beach.",kite,1,0,entity,whole,entity - whole (kite),'
        "Is there a kite?\n"
        'dpg1,"A red kite above a beach.",red,2,1,attribute,color,"attribute - color (kite, red)",'
        "Is the kite red?\n"
        'dpg2,"Two cats.",cats,1,0,entity,whole,entity - whole (cats),Are there cats\n'
    )
    path = tmp_path / "dpg_bench.csv"
    path.write_text(head + body)
    suite = load_suite(path)
    assert suite.format == "dpg" and [p.id for p in suite.prompts] == ["dpg1", "dpg2"]
    kite = suite.prompts[0]
    assert [r.id for r in kite.requirements] == ["p1", "p2"]
    assert kite.requirements[1].kind == "attribute"
    assert kite.meta["dependency"] == {"p1": "0", "p2": "1"}
    assert suite.prompts[1].requirements[0].question == "Are there cats?"
    jsonl = tmp_path / "dpg.jsonl"
    jsonl.write_text(
        json.dumps(
            {
                "item_id": "x",
                "prompt": "A dog.",
                "questions": [{"proposition_id": 1, "question": "Is there a dog?"}],
            }
        )
        + "\n"
    )
    assert load_suite(jsonl).prompts[0].requirements[0].question == "Is there a dog?"


def test_malformed_suites_fail_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad-v1.jsonl"
    bad.write_text(
        json.dumps({"id": "a", "prompt": "x", "requirements": []})
        + "\n"
        + json.dumps({"id": "b", "prompt": "y", "requirements": [{"id": "r", "question": "no"}]})
        + "\n"
    )
    with pytest.raises(SuiteError, match=r"bad-v1.jsonl:2: requirements.0.question"):
        load_suite(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(
        json.dumps({"id": "a", "prompt": "x"})
        + "\n"
        + json.dumps({"id": "a", "prompt": "y"})
        + "\n"
    )
    with pytest.raises(SuiteError, match="prompt ids repeat: a"):
        load_suite(dup)
    with pytest.raises(SuiteError, match="not found.*built-in"):
        load_suite("no-such-suite")
    limited = load_suite("knowledge-v1", limit=3)
    assert len(limited.prompts) == 3
