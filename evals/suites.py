"""Prompt suites: our versioned JSONL suites, plus loaders for public benchmarks' own files.

A suite is data, not code: every prompt carries the requirements an image must meet, each as
one yes/no question a VLM judge can answer from the image (TIFA/DSG style), the fact a grounded
prompt should carry for it, and the aliases that count as naming that fact. Prompts of a suite
are identified as `<suite>/<id>`, so results from different suites never collide.

External formats are read from the benchmark's own files, by path (nothing is downloaded):
GenEval (`evaluation_metadata.jsonl`), T2I-CompBench (`<category>_val.txt`, one prompt a
line), WISE (JSON lists with `Prompt` and `Explanation`) and DPG-Bench (`dpg_bench.csv`, one row
per question, or JSONL with a `questions` list).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from core.errors import InputError

SUITES_DIR = Path(__file__).parent / "suites"
SuiteFormat = Literal["auto", "groundwork", "geneval", "t2i-compbench", "wise", "knowgen", "dpg"]
RequirementKind = Literal[
    "knowledge", "object", "count", "color", "relation", "text", "attribute", "style", "other"
]


class SuiteError(InputError):
    """A suite file is missing or malformed; the message names the file and the line."""


class Requirement(BaseModel):
    """One checkable property of the right image."""

    id: str = Field(min_length=1, max_length=40)
    question: str = Field(
        min_length=5, description="A yes/no question answerable from the image alone."
    )
    fact: str = Field(
        default="", description="What a grounded prompt must say for this requirement."
    )
    aliases: list[str] = Field(
        default_factory=list,
        description="Phrases that count as naming the fact in a prompt (case-insensitive).",
    )
    kind: RequirementKind = "other"

    @field_validator("question")
    @classmethod
    def _is_question(cls, q: str) -> str:
        if not q.rstrip().endswith("?"):
            raise ValueError("a requirement's question must end with '?'")
        return q.strip()


JUDGE_ONLY_META = ("gt_image",)
"""Record fields that are inputs of the judge only (KnowGen's ground-truth image): an arm never
sees them (`SuitePrompt.for_arm`)."""


class SuitePrompt(BaseModel):
    id: str = Field(min_length=1, max_length=200, description="Unique within the suite.")
    prompt: str = Field(min_length=1)
    category: str = ""
    requirements: list[Requirement] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    source: str = Field(default="", description="Where the facts can be checked.")
    meta: dict[str, Any] = Field(default_factory=dict, description="The original record.")

    @field_validator("requirements")
    @classmethod
    def _unique_ids(cls, reqs: list[Requirement]) -> list[Requirement]:
        ids = [r.id for r in reqs]
        if len(ids) != len(set(ids)):
            raise ValueError(f"requirement ids repeat: {ids}")
        return reqs

    def for_arm(self) -> SuitePrompt:
        """The prompt as an arm may see it: without the judge-only fields (ground truth)."""
        meta = {k: v for k, v in self.meta.items() if k not in JUDGE_ONLY_META}
        return self.model_copy(update={"meta": meta})


class Protocol(BaseModel):
    """How the benchmark's authors score it, and where that definition comes from."""

    name: str
    source: str = Field(description="Where the protocol is defined (paper, repository, file).")
    metric: str | None = Field(default=None, description="The metric that implements it.")
    category_weights: dict[str, float] | None = Field(
        default=None,
        description="The overall score = sum of weight x category mean (None: no overall is "
        "defined beyond the plain mean).",
    )
    note: str = ""


class Suite(BaseModel):
    name: str
    version: str = ""
    path: str = ""
    sha256: str = Field(default="", description="Of the file(s) read: a rerun checks it.")
    format: str = "groundwork"
    prompts: list[SuitePrompt]
    protocol: Protocol | None = None

    def key(self, prompt: SuitePrompt) -> str:
        return f"{self.name}/{prompt.id}"


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.jsonl"))


def _sha256(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _split_version(stem: str) -> tuple[str, str]:
    head, sep, tail = stem.rpartition("-v")
    return (stem, tail) if sep and head and tail.isdigit() else (stem, "")


def load_suite(
    ref: str | Path,
    *,
    fmt: SuiteFormat = "auto",
    name: str | None = None,
    limit: int = 0,
    split: str | None = None,
) -> Suite:
    """A built-in suite by name (`knowledge-v1`), or a file/folder in any supported format.
    `split` (T2I-CompBench: train, val or all) picks the files of a folder; default val."""
    path = Path(ref)
    if not path.exists() and isinstance(ref, str) and (SUITES_DIR / f"{ref}.jsonl").is_file():
        path = SUITES_DIR / f"{ref}.jsonl"
    if not path.exists():
        raise SuiteError(
            f"suite {ref!s} not found: neither a file/folder nor a built-in suite "
            f"(built-in: {', '.join(builtin_suites())})"
        )
    kind = _detect(path) if fmt == "auto" else fmt
    if kind == "t2i-compbench":
        prompts, files = _load_t2i_compbench(path, split)
    else:
        loader = {
            "groundwork": _load_groundwork,
            "geneval": _load_geneval,
            "wise": _load_wise,
            "knowgen": _load_knowgen,
            "dpg": _load_dpg,
        }[kind]
        prompts, files = loader(path)
    if not prompts:
        raise SuiteError(f"suite {path} ({kind} format) holds no prompts")
    ids = [p.id for p in prompts]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SuiteError(f"suite {path}: prompt ids repeat: {', '.join(dup[:5])}")
    stem = path.stem if path.is_file() else path.name
    _, version = _split_version(stem)
    if limit > 0:
        prompts = prompts[:limit]
    return Suite(
        name=name or stem,
        version=version,
        path=str(path),
        sha256=_sha256(files),
        format=kind,
        prompts=prompts,
        protocol=protocol_for(kind, prompts),
    )


WISE_CATEGORIES = (
    ("CULTURE", 1, 400),
    ("TIME", 401, 520),
    ("SPACE", 521, 640),
    ("BIOLOGY", 641, 760),
    ("PHYSICS", 761, 880),
    ("CHEMISTRY", 881, 1000),
)
"""WISE_Verified's categories by prompt_id (PKU-YuanGroup/WISE, data_verified)."""
WISE_WEIGHTS = {"CULTURE": 0.40, **{c: 0.12 for c, _, _ in WISE_CATEGORIES[1:]}}
LEGACY = "wise-legacy"
"""Tag of prompts from WISE's legacy files (other id ranges, no Verified weights)."""

KNOWGEN_GROUPS: dict[str, frozenset[str]] = {
    "science_and_knowledge": frozenset(
        [
            "astronomy",
            "biology",
            "chemistry",
            "physics",
            "engineering",
            "medicine",
            "industry",
            "architecture",
            "history",
            "geography",
            "religion",
            "politics",
            "culture",
            "art",
            "sports",
        ]
    ),
    "pop_culture_and_news": frozenset(
        [
            "anime",
            "game",
            "film",
            "celebrities",
            "posters",
            "multi-subject-anime",
            "multi-subject-celebrities",
            "multi-subject-game",
            "news",
        ]
    ),
}
"""KnowGen's category groups (tulerfeng/Gen-Searcher, KnowGen_Eval's group mapping)."""


def protocol_for(kind: str, prompts: list[SuitePrompt]) -> Protocol | None:
    """The benchmark's own scoring definition, labelled with its source."""
    if kind == "wise" and any(LEGACY in p.tags for p in prompts):
        return Protocol(
            name="WISE (legacy files)",
            source="PKU-YuanGroup/WISE (WISE_legacy); the 0.40/0.12 weights are WISE_Verified's",
            metric="wise",
            note="per-category scores only: no weighted overall outside WISE_Verified",
        )
    if kind == "wise":
        return Protocol(
            name="WISE_Verified",
            source="PKU-YuanGroup/WISE (data_verified; VLM judge, binary score)",
            metric="wise",
            category_weights=dict(WISE_WEIGHTS),
            note="overall = 0.40 x CULTURE + 0.12 x each of TIME, SPACE, BIOLOGY, PHYSICS, "
            "CHEMISTRY",
        )
    if kind == "knowgen":
        return Protocol(
            name="KnowGen",
            source="tulerfeng/Gen-Searcher (KnowGen-Bench; KnowGen_Eval scorer)",
            metric="knowgen",
            category_weights={g: 0.5 for g in KNOWGEN_GROUPS},
            note="per item 0.1 F + 0.4 V + 0.4 T + 0.1 A; headline = mean of the two group means",
        )
    if kind == "geneval":
        tags = sorted({p.category for p in prompts if p.category})
        return Protocol(
            name="GenEval-VLM",
            source="djghosh13/geneval task file; scored here by VLM questions, not GenEval's "
            "detector + CLIP: not comparable to the GenEval leaderboard",
            metric="geneval_vlm",
            category_weights={t: 1 / len(tags) for t in tags} if tags else None,
            note="an image is correct when every question passes; overall = mean of per-tag "
            "accuracies",
        )
    if kind == "t2i-compbench":
        return Protocol(
            name="T2I-CompBench (VLM judge)",
            source="Karine-Huang/T2I-CompBench dataset folder; its detector/BLIP-VQA metrics are "
            "not run here",
            metric="requirements",
        )
    if kind == "dpg":
        return Protocol(
            name="DPG-Bench", source="TencentQQGYLab/ELLA dpg_bench", metric="requirements"
        )
    return None


def _detect(path: Path) -> SuiteFormat:
    if path.is_dir():
        if (path / "evaluation_metadata.jsonl").is_file():
            return "geneval"
        for candidate in sorted(path.glob("*.json*"))[:3]:
            if candidate.suffix == ".jsonl" and "gt_image" in _first_json_line(candidate):
                return "knowgen"
        if any(path.glob("*_val.txt")) or any(path.glob("*.txt")):
            return "t2i-compbench"
        if any(path.glob("*.json")):
            return "wise"
        raise SuiteError(f"cannot tell the format of folder {path}; pass format=...")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "t2i-compbench"
    if suffix == ".csv":
        return "dpg"
    if suffix == ".json":
        return "knowgen" if '"gt_image"' in path.read_text(encoding="utf-8")[:4096] else "wise"
    if suffix == ".jsonl":
        first = _first_json_line(path)
        if "include" in first and "tag" in first:
            return "geneval"
        if "questions" in first or "question_natural_language" in first:
            return "dpg"
        if "gt_image" in first:
            return "knowgen"
        return "groundwork"
    raise SuiteError(f"cannot tell the format of {path} from its name; pass format=...")


def _first_json_line(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SuiteError(f"{path}: first record is not JSON: {exc}") from exc
                return record if isinstance(record, dict) else {}
    return {}


def _jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("//"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SuiteError(f"{path}:{no}: not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise SuiteError(f"{path}:{no}: expected a JSON object")
            yield no, record


# -- our own format --------------------------------------------------------------------------


def _load_groundwork(path: Path) -> tuple[list[SuitePrompt], list[Path]]:
    prompts = []
    for no, record in _jsonl(path):
        try:
            prompts.append(SuitePrompt.model_validate(record))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SuiteError(f"{path}:{no}: {where}: {first['msg']}") from exc
    return prompts, [path]


# -- GenEval ---------------------------------------------------------------------------------

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


_IRREGULAR = {
    "person": "people",
    "mouse": "mice",
    "knife": "knives",
    "sheep": "sheep",
    "skis": "skis",
    "scissors": "scissors",
    "skateboard": "skateboards",
}


def plural(noun: str) -> str:
    """English plural of a (COCO class) noun phrase: its last word is inflected."""
    head, _, last = noun.rpartition(" ")
    word = last.lower()
    if word in _IRREGULAR:
        out = _IRREGULAR[word]
    elif word.endswith(("s", "x", "z", "ch", "sh")):
        out = last + "es"
    elif word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        out = last[:-1] + "ies"
    elif word.endswith("fe"):
        out = last[:-2] + "ves"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


def _count_phrase(n: int, noun: str) -> str:
    word = _NUMBERS[n] if 0 <= n < len(_NUMBERS) else str(n)
    return _article(noun) if n == 1 else f"{word} {plural(noun)}"


def _exclude_question(count: int, cls: str) -> str:
    if count <= 1:
        return f"Does the image show no {plural(cls)}?"
    word = _NUMBERS[count] if count < len(_NUMBERS) else str(count)
    return f"Does the image show fewer than {word} {plural(cls)}?"


def _load_geneval(path: Path) -> tuple[list[SuitePrompt], list[Path]]:
    """GenEval: one JSON object a line, `{"tag", "include": [{"class", "count", "color"?,
    "position"?: [relation, index]}], "exclude"?: [...], "prompt"}`. Each include becomes a
    presence/count question, its colour and position further questions."""
    file = path / "evaluation_metadata.jsonl" if path.is_dir() else path
    prompts = []
    for no, record in _jsonl(file):
        if "prompt" not in record or "include" not in record:
            raise SuiteError(f"{file}:{no}: a GenEval record needs 'prompt' and 'include'")
        includes = record.get("include") or []
        reqs: list[Requirement] = []
        for i, inc in enumerate(includes):
            cls, count = str(inc.get("class", "object")), int(inc.get("count", 1))
            reqs.append(
                Requirement(
                    id=f"count{i}",
                    question=f"Does the image show exactly {_count_phrase(count, cls)}?"
                    if count > 1
                    else f"Does the image show {_article(cls)}?",
                    fact=_count_phrase(count, cls),
                    aliases=[_count_phrase(count, cls), f"{count} {cls}"],
                    kind="count" if count > 1 else "object",
                )
            )
            if inc.get("color"):
                color = str(inc["color"])
                reqs.append(
                    Requirement(
                        id=f"color{i}",
                        question=f"Is the {cls} in the image {color}?",
                        fact=f"{color} {cls}",
                        aliases=[f"{color} {cls}"],
                        kind="color",
                    )
                )
            pos = inc.get("position")
            if pos and isinstance(pos, list) and len(pos) == 2:
                relation, idx = str(pos[0]), int(pos[1])
                other = str(includes[idx].get("class", "object")) if idx < len(includes) else "?"
                reqs.append(
                    Requirement(
                        id=f"position{i}",
                        question=f"Is the {cls} {relation} the {other}?",
                        fact=f"{cls} {relation} {other}",
                        aliases=[f"{relation} {_article(other)}", f"{relation} the {other}"],
                        kind="relation",
                    )
                )
        for j, exc_ in enumerate(record.get("exclude") or []):
            cls = str(exc_.get("class", "object"))
            reqs.append(
                Requirement(
                    id=f"exclude{j}",
                    question=_exclude_question(int(exc_.get("count", 1)), cls),
                    kind="count",
                )
            )
        prompts.append(
            SuitePrompt(
                id=f"{no - 1:05d}",
                prompt=str(record["prompt"]),
                category=str(record.get("tag", "")),
                requirements=reqs,
                meta=record,
            )
        )
    return prompts, [file]


# -- T2I-CompBench ---------------------------------------------------------------------------


_SPLITS = ("train", "val", "test")


def _split_of(stem: str) -> tuple[str, str]:
    for split in _SPLITS:
        if stem.endswith(f"_{split}"):
            return stem.removesuffix(f"_{split}"), split
    return stem, ""


def _load_t2i_compbench(
    path: Path, split: str | None = None
) -> tuple[list[SuitePrompt], list[Path]]:
    """T2I-CompBench's published folder: `<category>_train.txt` and `<category>_val.txt`, one
    prompt a line. Evaluations use val: a folder loads its val files unless `split` says
    train or all; the split stays a field of each prompt (meta and tags). No requirements of
    its own (its metrics are detectors and BLIP-VQA): the judge asks one whole-prompt question."""
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if path.is_dir():
        want = split or ("val" if any(_split_of(f.stem)[1] == "val" for f in files) else "all")
        if want != "all":
            files = [f for f in files if _split_of(f.stem)[1] == want]
            if not files:
                raise SuiteError(f"{path}: no *_{want}.txt files")
    prompts = []
    for file in files:
        category, file_split = _split_of(file.stem)
        with file.open(encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        for i, text in enumerate(lines):
            prompts.append(
                SuitePrompt(
                    id=f"{category}-{file_split}-{i:04d}" if file_split else f"{category}-{i:04d}",
                    prompt=text,
                    category=category,
                    requirements=[_whole_prompt_requirement(text)],
                    tags=[file_split] if file_split else [],
                    meta={"split": file_split, "line": i + 1, "file": file.name},
                )
            )
    return prompts, files


def _whole_prompt_requirement(text: str) -> Requirement:
    body = text.rstrip(" .")
    return Requirement(id="prompt", question=f'Does the image show "{body}"?', kind="other")


# -- WISE ------------------------------------------------------------------------------------


def _ci(record: dict[str, Any], key: str) -> Any:
    for k, v in record.items():
        if k.lower() == key.lower():
            return v
    return None


def _load_wise(path: Path) -> tuple[list[SuitePrompt], list[Path]]:
    """WISE: JSON lists of `{"prompt_id", "Prompt", "Explanation", "Category"?,
    "Subcategory"?}` (cultural_common_sense.json, spatio-temporal_reasoning.json,
    natural_science.json). The explanation states what the image must show: it becomes the
    requirement and the fact."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    prompts = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{file}: not JSON: {exc}") from exc
        if not isinstance(data, list):
            raise SuiteError(f"{file}: a WISE file is a JSON list of prompts")
        # WISE_Verified's one file (data_verified/merge.json) numbers its categories by
        # prompt_id; the legacy files use other ranges, so they keep their own Category.
        verified = file.name == "merge.json" or "verified" in file.parent.name.lower()
        for i, rec in enumerate(data):
            text = _ci(rec, "prompt")
            if not text:
                raise SuiteError(f"{file}[{i}]: a WISE record needs 'Prompt'")
            explanation = str(_ci(rec, "explanation") or "").strip()
            pid = _ci(rec, "prompt_id")
            answer = str(_ci(rec, "answer") or "").strip()
            reqs = [_whole_prompt_requirement(str(text))]
            if explanation:
                # The Explanation restates the riddle and names the answer: the `wise` judge
                # metric reads it with the image. It is no fact to match words against (that
                # rewards restating the riddle); an answer entity counts only where the file
                # provides one (`Answer`).
                reqs = [
                    Requirement(
                        id="explanation",
                        question="Does the image show what this explanation says the prompt "
                        f"means: {explanation.rstrip(' .?')}?",
                        fact=answer,
                        aliases=[answer] if answer else [],
                        kind="knowledge",
                    )
                ]
            prompts.append(
                SuitePrompt(
                    id=str(pid if pid is not None else f"{file.stem}-{i}"),
                    prompt=str(text),
                    category=wise_category(pid, rec, file.stem, verified=verified),
                    requirements=reqs,
                    tags=[
                        t
                        for t in (str(_ci(rec, "subcategory") or ""), "" if verified else LEGACY)
                        if t
                    ],
                    meta=rec,
                )
            )
    return prompts, files


def wise_category(pid: Any, rec: dict[str, Any], fallback: str, *, verified: bool = True) -> str:
    """CULTURE, TIME, SPACE, BIOLOGY, PHYSICS or CHEMISTRY by prompt_id, as WISE_Verified
    defines them; the record's own Category for legacy files or ids outside those ranges."""
    try:
        n = int(pid) if verified else -1
    except (TypeError, ValueError):
        n = -1
    for name, lo, hi in WISE_CATEGORIES:
        if lo <= n <= hi:
            return name
    return str(_ci(rec, "category") or fallback).upper()


# -- KnowGen ---------------------------------------------------------------------------------


def knowgen_group(category: str) -> str:
    c = category.strip().lower()
    for group, members in KNOWGEN_GROUPS.items():
        if c == group or c in members:
            return group
    return "other"


def _load_knowgen(path: Path) -> tuple[list[SuitePrompt], list[Path]]:
    """KnowGen-Bench: `{id, prompt, meta: {category, difficulty}, gt_image}` records (a JSON
    list or JSONL). The category folds into its group (science_and_knowledge or
    pop_culture_and_news); `gt_image` (relative to the file) is an input of the judge only."""
    files = sorted(p for p in path.glob("*.json*")) if path.is_dir() else [path]
    prompts: list[SuitePrompt] = []
    for file in files:
        if file.suffix == ".jsonl":
            records = [(f"{file.name}:{no}", r) for no, r in _jsonl(file)]
        else:
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise SuiteError(f"{file}: not JSON: {exc}") from exc
            if not isinstance(data, list):
                raise SuiteError(f"{file}: a KnowGen file is a JSON list of items")
            records = [(f"{file.name}[{i}]", r) for i, r in enumerate(data)]
        for where, rec in records:
            if not isinstance(rec, dict) or not rec.get("prompt") or rec.get("id") is None:
                raise SuiteError(f"{where}: a KnowGen item needs id and prompt")
            raw_meta = rec.get("meta")
            meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
            category = str(meta.get("category") or "")
            gt = rec.get("gt_image")
            gt_path = ""
            if gt:
                p = Path(str(gt))
                gt_path = str(p if p.is_absolute() else file.parent / p)
            prompts.append(
                SuitePrompt(
                    id=str(rec["id"]),
                    prompt=str(rec["prompt"]),
                    category=knowgen_group(category),
                    tags=[t for t in (category, str(meta.get("difficulty") or "")) if t],
                    meta={**rec, "gt_image": gt_path},
                )
            )
    return prompts, files


# -- DPG-Bench -------------------------------------------------------------------------------


def _load_dpg(path: Path) -> tuple[list[SuitePrompt], list[Path]]:
    """DPG-Bench (and DSG-1k): CSV with one row per question: `item_id, text, keywords,
    proposition_id, dependency, category_broad, category_detailed, tuple,
    question_natural_language`; or JSONL, one prompt a line with a `questions` list."""
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        for _, rec in _jsonl(path):
            if "questions" in rec:
                for q in rec["questions"]:
                    rows.append(
                        {
                            "item_id": rec.get("item_id", rec.get("id")),
                            "text": rec.get("text", rec.get("prompt")),
                            "proposition_id": q.get("proposition_id", ""),
                            "category_broad": q.get("category_broad", ""),
                            "tuple": q.get("tuple", ""),
                            "question_natural_language": q.get("question", ""),
                            "dependency": q.get("dependency", "0"),
                        }
                    )
            else:
                rows.append(rec)
    by_item: dict[str, SuitePrompt] = {}
    for i, row in enumerate(rows):
        item, text = row.get("item_id"), row.get("text")
        question = str(row.get("question_natural_language") or "").strip()
        if not item or not text or not question:
            raise SuiteError(
                f"{path} row {i + 1}: DPG rows need item_id, text and question_natural_language"
            )
        prompt = by_item.setdefault(
            str(item), SuitePrompt(id=str(item), prompt=str(text), category="", meta={})
        )
        if not question.endswith("?"):
            question += "?"
        pid = str(row.get("proposition_id") or len(prompt.requirements) + 1)
        kind_map: dict[str, RequirementKind] = {
            "entity": "object",
            "attribute": "attribute",
            "relation": "relation",
            "global": "style",
            "other": "other",
        }
        broad = str(row.get("category_broad") or "").strip().lower()
        prompt.requirements.append(
            Requirement(
                id=f"p{pid}",
                question=question,
                fact=str(row.get("tuple") or ""),
                kind=kind_map.get(broad, "other"),
            )
        )
        prompt.meta.setdefault("dependency", {})[f"p{pid}"] = str(row.get("dependency") or "0")
        if broad and broad not in prompt.category.split(","):
            prompt.category = ",".join(c for c in (prompt.category, broad) if c)
    return list(by_item.values()), [path]
