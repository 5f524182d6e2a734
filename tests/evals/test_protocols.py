"""Benchmark protocols as their authors define them, on small files in each published format
written here: WISE_Verified (categories by prompt_id, weighted overall), KnowGen (four scores,
weighted item score, two-group headline, the ground-truth image reaching the judge and no arm),
GenEval-VLM (per-tag accuracy and their mean, correct plurals)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.artifacts import ArtifactStore
from evals import parse_config, run_eval
from evals.arms import Produced
from evals.judge import Preference
from evals.suites import SuitePrompt, load_suite, plural


class RecordingArm:
    """Makes one distinct image per (prompt, seed) and remembers every prompt it was given."""

    resumable = False

    def __init__(self, name: str, store: ArtifactStore) -> None:
        self.name = name
        self.kind = "synthetic"
        self.store = store
        self.seen: list[SuitePrompt] = []
        self.shas: dict[str, str] = {}

    async def start(self) -> None:
        return None

    async def produce(
        self, prompt: SuitePrompt, key: str, seed: int, *, thread_id: str, resume: bool
    ) -> Produced:
        self.seen.append(prompt)
        d = hashlib.sha256(f"{self.name}/{key}/{seed}".encode()).digest()
        ref = self.store.put_image(Image.new("RGB", (8, 8), (d[0], d[1], d[2])), {})
        self.shas[ref.sha256] = prompt.id
        return Produced("done", image_sha256=ref.sha256, gen_prompt=prompt.prompt)

    async def close(self) -> None:
        return None


class ScriptedJudge:
    """Answers from a table keyed by the prompt id of the image's arm; records every image."""

    name = "scripted"

    def __init__(self, arms: list[RecordingArm], answers: dict[str, Any]) -> None:
        self.arms = arms
        self.answers = answers
        self.images: list[list[bytes]] = []

    def _pid(self, png: bytes) -> str:
        sha = hashlib.sha256(png).hexdigest()
        return next(a.shas[sha] for a in self.arms if sha in a.shas)

    async def ask(self, images: list[bytes], system: str, text: str, parse: Any, **_: Any) -> Any:
        self.images.append(images)
        return parse(json.dumps(self.answers[self._pid(images[0])]))

    async def yes_no(self, image_png: bytes, question: str, prompt: str) -> bool | None:
        return bool(self.answers[self._pid(image_png)].get(question, True))

    async def prefer(self, first_png: bytes, second_png: bytes, prompt: str) -> Preference | None:
        return "tie"


def _config(tmp: Path, suite: Path, metric: str) -> dict[str, Any]:
    return {
        "name": "protocol",
        "out_dir": str(tmp / "out"),
        "suites": [str(suite)],
        "arms": [{"name": "a", "kind": "plain"}],
        "metrics": {"enabled": [metric], "check": False},
        "settings": {"artifacts": {"root": str(tmp / "artifacts")}},
        "report": {"bootstrap": 200},
    }


def test_wise_categories_by_prompt_id_and_weighted_overall(tmp_path: Path) -> None:
    ids = [1, 2, 3, 400, 401, 402, 521, 641, 761, 881, 1000]
    records = [{"prompt_id": i, "Prompt": f"riddle {i}", "Explanation": f"answer {i}"} for i in ids]
    path = tmp_path / "merge.json"
    path.write_text(json.dumps(records))
    scores = {1: 1, 2: 1, 3: 0, 400: 0, 401: 1, 402: 0, 521: 1, 641: 0, 761: 1, 881: 1, 1000: 0}
    arm = RecordingArm("a", ArtifactStore(tmp_path / "artifacts"))
    judge = ScriptedJudge([arm], {str(k): {"score": v} for k, v in scores.items()})
    result = run_eval(
        parse_config(_config(tmp_path, path, "wise")), arms={"a": arm}, judge=judge, progress=False
    )
    cats = {c.category: c.mean for c in result.analysis.categories if c.metric == "wise"}
    assert cats == {
        "CULTURE": 0.5,
        "TIME": 0.5,
        "SPACE": 1.0,
        "BIOLOGY": 0.0,
        "PHYSICS": 1.0,
        "CHEMISTRY": 0.5,
    }
    (overall,) = result.analysis.overall
    expected = 0.40 * 0.5 + 0.12 * (0.5 + 1.0 + 0.0 + 1.0 + 0.5)
    assert overall.protocol == "WISE_Verified" and "PKU-YuanGroup/WISE" in overall.source
    assert abs(overall.value - expected) < 1e-12 and overall.lo <= expected <= overall.hi
    # every judge call saw the image; the report names the protocol, its source and the
    # instruction's origin, per category with CIs, and draws the per-category chart
    assert all(len(images) == 1 for images in judge.images)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "WISE_Verified" in md and "Groundwork's own" in md and "Scores per category" in md
    assert (tmp_path / "out" / "report_files" / "categories.png").is_file()


def test_wise_judge_instruction_from_a_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "WISE"
    checkout.mkdir()
    (checkout / "verified_eval.py").write_text(
        'PROMPT = """Fixture instruction: read the Explanation, give a score of 0 or 1."""\n'
        "raise SystemExit('never run')\n"
    )
    path = tmp_path / "merge.json"
    path.write_text(json.dumps([{"prompt_id": 5, "Prompt": "p", "Explanation": "e"}]))
    arm = RecordingArm("a", ArtifactStore(tmp_path / "artifacts"))
    judge = ScriptedJudge([arm], {"5": {"score": 1}})
    raw = _config(tmp_path, path, "wise")
    raw["metrics"]["wise_checkout"] = str(checkout)
    run_eval(parse_config(raw), arms={"a": arm}, judge=judge, progress=False)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "from the WISE checkout" in md and "verified_eval.py:PROMPT" in md


def test_knowgen_scores_groups_and_ground_truth_only_for_the_judge(tmp_path: Path) -> None:
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    items = []
    # category -> (F, V, T or None for N/A, A)
    table = {
        "k1": ("physics", (1, 1, None, 0.5)),
        "k2": ("history", (0.5, 0, 1, 1)),
        "k3": ("anime", (1, 0.5, 0.5, 0)),
        "k4": ("news", (0, 0, 0, 0)),
        "k5": ("film", (1, 1, 1, 1)),
    }
    for i, (item_id, (category, _)) in enumerate(table.items()):
        Image.new("RGB", (8, 8), (i * 40, 7, 9)).save(gt_dir / f"{item_id}.png")
        items.append(
            {
                "id": item_id,
                "prompt": f"prompt {item_id}",
                "meta": {"category": category, "difficulty": "easy"},
                "gt_image": f"gt/{item_id}.png",
            }
        )
    path = tmp_path / "knowgen.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in items) + "\n")
    answers = {}
    for item_id, (_, (f, v, t, a)) in table.items():
        answers[item_id] = {
            "rationale": "r",
            "faithfulness": f,
            "visual_correctness": v,
            "text_accuracy": 0 if t is None else t,
            "text_accuracy_na": t is None,
            "aesthetics": a,
        }
    arm = RecordingArm("a", ArtifactStore(tmp_path / "artifacts"))
    judge = ScriptedJudge([arm], answers)
    result = run_eval(
        parse_config(_config(tmp_path, path, "knowgen")),
        arms={"a": arm},
        judge=judge,
        progress=False,
    )

    def item_score(f: float, v: float, t: float | None, a: float) -> float:
        return 0.1 * f + 0.4 * v + 0.4 * (0.5 if t is None else t) + 0.1 * a

    per_item = {k: item_score(*s) for k, (_, s) in table.items()}
    science = np.mean([per_item["k1"], per_item["k2"]])
    pop = np.mean([per_item["k3"], per_item["k4"], per_item["k5"]])
    (overall,) = result.analysis.overall
    assert overall.protocol == "KnowGen" and abs(overall.value - (science + pop) / 2) < 1e-9
    groups = {c.category: c.mean for c in result.analysis.categories if c.metric == "knowgen"}
    assert abs(groups["science_and_knowledge"] - science) < 1e-9
    assert abs(groups["pop_culture_and_news"] - pop) < 1e-9
    # the judge saw the generated image and then the ground truth ...
    gt_bytes = {p.read_bytes() for p in gt_dir.iterdir()}
    assert len(judge.images) == 5
    assert all(len(imgs) == 2 and imgs[1] in gt_bytes for imgs in judge.images)
    # ... and the arm never did: no path, no field
    assert len(arm.seen) == 5
    for prompt in arm.seen:
        assert "gt_image" not in prompt.meta
        assert "gt/" not in json.dumps(prompt.model_dump())


def test_geneval_vlm_per_tag_accuracy_mean_and_plurals(tmp_path: Path) -> None:
    rows = [
        {"tag": "counting", "include": [{"class": "bus", "count": 4}], "prompt": "four buses"},
        {"tag": "counting", "include": [{"class": "knife", "count": 2}], "prompt": "two knives"},
        {"tag": "single_object", "include": [{"class": "person", "count": 1}], "prompt": "p"},
    ]
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    suite = load_suite(path)
    assert suite.protocol and suite.protocol.name == "GenEval-VLM"
    assert "not comparable" in suite.protocol.source
    questions = [r.question for p in suite.prompts for r in p.requirements]
    assert "Does the image show exactly four buses?" in questions
    assert "Does the image show exactly two knives?" in questions
    assert plural("wine glass") == "wine glasses" and plural("person") == "people"
    assert plural("sandwich") == "sandwiches" and plural("cat") == "cats"
    assert not any(re.search(r"\b(bus|knife)\?", q) for q in questions)

    arm = RecordingArm("a", ArtifactStore(tmp_path / "artifacts"))
    # prompt 00000 fails its question, 00001 and 00002 pass
    wrong = "Does the image show exactly four buses?"
    judge = ScriptedJudge([arm], {"00000": {wrong: False}, "00001": {}, "00002": {}})
    result = run_eval(
        parse_config(_config(tmp_path, path, "geneval_vlm")),
        arms={"a": arm},
        judge=judge,
        progress=False,
    )
    tags = {c.category: c.mean for c in result.analysis.categories}
    assert tags == {"counting": 0.5, "single_object": 1.0}
    (overall,) = result.analysis.overall
    assert overall.protocol == "GenEval-VLM" and abs(overall.value - 0.75) < 1e-12
