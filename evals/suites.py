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
SuiteFormat = Literal["auto", "groundwork", "geneval", "t2i-compbench", "wise", "dpg"]
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


class Suite(BaseModel):
    name: str
    version: str = ""
    path: str = ""
    sha256: str = Field(default="", description="Of the file(s) read: a rerun checks it.")
    format: str = "groundwork"
    prompts: list[SuitePrompt]

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
    ref: str | Path, *, fmt: SuiteFormat = "auto", name: str | None = None, limit: int = 0
) -> Suite:
    """A built-in suite by name (`knowledge-v1`), or a file/folder in any supported format."""
    path = Path(ref)
    if not path.exists() and isinstance(ref, str) and (SUITES_DIR / f"{ref}.jsonl").is_file():
        path = SUITES_DIR / f"{ref}.jsonl"
    if not path.exists():
        raise SuiteError(
            f"suite {ref!s} not found: neither a file/folder nor a built-in suite "
            f"(built-in: {', '.join(builtin_suites())})"
        )
    kind = _detect(path) if fmt == "auto" else fmt
    loader = {
        "groundwork": _load_groundwork,
        "geneval": _load_geneval,
        "t2i-compbench": _load_t2i_compbench,
        "wise": _load_wise,
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
    )


def _detect(path: Path) -> SuiteFormat:
    if path.is_dir():
        if (path / "evaluation_metadata.jsonl").is_file():
            return "geneval"
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
        return "wise"
    if suffix == ".jsonl":
        first = _first_json_line(path)
        if "include" in first and "tag" in first:
            return "geneval"
        if "questions" in first or "question_natural_language" in first:
            return "dpg"
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


def _count_phrase(n: int, noun: str) -> str:
    word = _NUMBERS[n] if 0 <= n < len(_NUMBERS) else str(n)
    return _article(noun) if n == 1 else f"{word} {noun}{'' if noun.endswith('s') else 's'}"


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
                    question=f"Does the image show fewer than {exc_.get('count', 1)} {cls}?",
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


def _load_t2i_compbench(path: Path) -> tuple[list[SuitePrompt], list[Path]]:
    """T2I-CompBench: `<category>_val.txt` (or `_train`), one prompt a line, no requirements
    (its metrics are detectors and BLIP-VQA on the prompt's noun phrases); the judge metric
    then asks one whole-prompt question."""
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    prompts = []
    for file in files:
        category = file.stem.removesuffix("_val").removesuffix("_train").removesuffix("_test")
        with file.open(encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        for i, text in enumerate(lines):
            prompts.append(
                SuitePrompt(
                    id=f"{category}-{i:04d}",
                    prompt=text,
                    category=category,
                    requirements=[_whole_prompt_requirement(text)],
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
        for i, rec in enumerate(data):
            text = _ci(rec, "prompt")
            if not text:
                raise SuiteError(f"{file}[{i}]: a WISE record needs 'Prompt'")
            explanation = str(_ci(rec, "explanation") or "").strip()
            pid = _ci(rec, "prompt_id")
            reqs = [_whole_prompt_requirement(str(text))]
            if explanation:
                reqs = [
                    Requirement(
                        id="explanation",
                        question="Does the image match this description: "
                        f"{explanation.rstrip(' .?')}?",
                        fact=explanation,
                        kind="knowledge",
                    )
                ]
            prompts.append(
                SuitePrompt(
                    id=str(pid if pid is not None else f"{file.stem}-{i}"),
                    prompt=str(text),
                    category=str(_ci(rec, "subcategory") or _ci(rec, "category") or file.stem),
                    requirements=reqs,
                    meta=rec,
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
