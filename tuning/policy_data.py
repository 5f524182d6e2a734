"""Training data of the policy: run folders or trace exports in, tokenized conversations out.

Run folders go through `agent.sft.export_runs` (the same code as `groundwork traces export`),
so a conversation is exactly what the policy saw and wrote in the run. Each example is checked
twice: as an export (`agent.sft.check_openai` / `check_sharegpt`: calls answered, the answer a
GroundedPrompt) and against the base model's chat template (every assistant turn and tool call
survives rendering, and rendering is prefix-preserving, which the assistant-only loss mask
relies on).

The held-out split is by prompt, never by row: every run of one prompt (several seeds, several
attempts) lands on the same side, so the eval loss measures prompts the model has not seen.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from jinja2 import TemplateError

from agent.sft import check_openai, check_sharegpt, export_runs, read_examples
from core.errors import GroundworkError, InputError

Protocol_ = Literal["gen-searcher", "openai"]
"""How tool calls look in training: Gen-Searcher's text (`<tool_call>` in the assistant turn,
results as `<tool_response>` user turns) or OpenAI tool calls through the template's `tools`."""

EXPORT_FORMAT: dict[str, Literal["openai", "sharegpt"]] = {
    "gen-searcher": "sharegpt",
    "openai": "openai",
}
_IMAGE = re.compile(r"<image>")
_SPACE = re.compile(r"\s+")


class DataError(GroundworkError):
    """The training data cannot be used as given (the message says what to change)."""


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer used here."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


@dataclass
class Example:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    prompt: str
    """The user's prompt as the conversation states it: the key of the held-out split."""
    source: str


@dataclass
class Loaded:
    examples: list[Example]
    sources: list[dict[str, Any]] = field(default_factory=list)
    """One entry per input: its path, kind, sha256 of what was read, counts."""
    rejected: list[dict[str, str]] = field(default_factory=list)
    """Examples (or runs) left out, with why."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """The first user turn, normalized: runs of the same prompt share it."""
    for m in messages:
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            text = _IMAGE.sub("", str(content or ""))
            return _SPACE.sub(" ", text).strip().lower()
    return ""


def _detect(example: dict[str, Any]) -> Literal["openai", "sharegpt"]:
    if "tools" in example:
        return "openai"
    for m in example.get("messages") or []:
        if m.get("role") == "tool" or m.get("tool_calls"):
            return "openai"
    return "sharegpt"


def load_examples(
    sources: Iterable[Path],
    *,
    protocol: Protocol_,
    only_matched: bool,
    work_dir: Path,
) -> Loaded:
    """Every usable conversation from `sources` (run folders, folders of run folders, or
    `groundwork traces export` JSONL files in the protocol's format)."""
    fmt = EXPORT_FORMAT[protocol]
    loaded = Loaded([])
    for i, source in enumerate(sources):
        source = Path(source).expanduser()
        if source.is_dir():
            out = work_dir / f"export-{i:02d}" / "data.jsonl"
            report = export_runs(source, out, fmt=fmt, only_matched=only_matched)
            loaded.rejected += [{"source": f"{source}/{n}", "why": w} for n, w in report.skipped]
            kind = "runs"
            path = out
        elif source.is_file():
            kind, path = "export", source
        else:
            raise InputError(
                f"training data {source} does not exist: give run folders (--out of "
                "groundwork run / an eval's runs folder) or a file from groundwork traces export"
            )
        entry: dict[str, Any] = {
            "path": str(source),
            "kind": kind,
            "sha256": sha256_file(path),
            "read": 0,
            "kept": 0,
        }
        if kind == "export" and only_matched:
            entry["note"] = (
                "only_matched applies to run folders; an export file is taken as exported "
                "(export it with --only-matched)"
            )
        try:
            rows = list(read_examples(path))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path} is not a JSONL export ({exc})") from exc
        for n, row in enumerate(rows):
            entry["read"] += 1
            where = f"{source}:{n + 1}"
            if _detect(row) != fmt:
                raise DataError(
                    f"{where} is in the {_detect(row)} format but protocol {protocol!r} trains "
                    f"on {fmt}: export with groundwork traces export --format {fmt}, or set "
                    f"protocol to match the data"
                )
            check = check_openai if fmt == "openai" else check_sharegpt
            problems = check(row, path.parent)
            if problems:
                loaded.rejected.append({"source": where, "why": "; ".join(problems[:3])})
                continue
            messages = row["messages"]
            loaded.examples.append(
                Example(messages, list(row.get("tools") or []), prompt_key(messages), where)
            )
            entry["kept"] += 1
        loaded.sources.append(entry)
    if not loaded.examples:
        why = "; ".join(f"{r['source']}: {r['why']}" for r in loaded.rejected[:5])
        raise DataError(
            "no usable training conversations in "
            + ", ".join(str(s) for s in sources)
            + (f" ({why})" if why else "")
            + ": record runs with groundwork run / groundwork eval first (only_matched keeps "
            "only runs whose critique matched every requirement)"
        )
    return loaded


def split_by_prompt(
    examples: list[Example],
    *,
    eval_fraction: float,
    seed: int,
    eval_prompts: Collection[str] = (),
) -> tuple[list[Example], list[Example]]:
    """(train, held out): whole prompts go to one side. `eval_prompts` (normalized prompt keys)
    are always held out; beyond them a seeded hash of the prompt picks about `eval_fraction`
    of the prompts, so the split is stable when more runs are added."""
    keys = sorted({e.prompt for e in examples})

    def score(key: str) -> float:
        digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    wanted = set(eval_prompts)
    # A profile may wrap the prompt ("Image prompt: ..."): a key ending in a wanted prompt counts.
    held = {k for k in keys if k in wanted or any(k.endswith(f" {w}") for w in wanted)}
    if eval_fraction > 0 and len(keys) > 1:
        want = max(1, round(eval_fraction * len(keys)))
        for key in sorted(keys, key=score):
            if len(held) >= want:
                break
            held.add(key)
        if len(held) == len(keys):  # never hold out everything
            held.discard(max(held, key=score))
    train = [e for e in examples if e.prompt not in held]
    evals = [e for e in examples if e.prompt in held]
    return train, evals


def chat_messages(example: Example, *, max_tool_chars: int) -> list[dict[str, Any]]:
    """The conversation as the template gets it: text only (a text-only student sees no
    images, so `<image>` placeholders go), tool results cut to `max_tool_chars`."""
    out: list[dict[str, Any]] = []
    for m in example.messages:
        m = dict(m)
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(
                str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
            )
        if isinstance(content, str):
            content = _IMAGE.sub("", content)
            if m["role"] == "tool":
                content = _cut(content, max_tool_chars)
            elif m["role"] == "user" and "<tool_response>" in content:
                content = re.sub(
                    r"<tool_response>\n?(.*?)\n?</tool_response>",
                    lambda g: (
                        f"<tool_response>\n{_cut(g.group(1), max_tool_chars)}\n</tool_response>"
                    ),
                    content,
                    flags=re.DOTALL,
                )
        m["content"] = "" if content is None else content
        out.append(m)
    return out


def _cut(text: str, budget: int) -> str:
    return text if len(text) <= budget else text[: max(0, budget - 14)].rstrip() + " …[truncated]"


def _render(
    tokenizer: ChatTokenizer,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    *,
    generation_prompt: bool = False,
) -> str:
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": generation_prompt}
    if tools:
        kwargs["tools"] = tools
    text = tokenizer.apply_chat_template(messages, **kwargs)
    return str(text)


def template_problems(
    tokenizer: ChatTokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[str]:
    """What the chat template loses or reorders in this conversation (empty when it is sound):
    every assistant text and tool call must appear in the rendering, and rendering a prefix of
    the conversation must give a prefix of the full rendering."""
    problems: list[str] = []
    try:
        full = _render(tokenizer, messages, tools)
    except (TemplateError, TypeError, ValueError) as exc:
        hint = " (with tool calls: train with protocol 'gen-searcher')" if tools else ""
        return [f"the chat template cannot render it: {type(exc).__name__}: {exc}{hint}"]
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], tools, generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], tools)
        if not (upto.startswith(before) and full.startswith(upto)):
            problems.append(
                f"message {i}: the template is not prefix-preserving here, so the assistant "
                "tokens cannot be masked (use a training template with the same layout)"
            )
            continue
        turn = upto[len(before) :]
        text = str(m.get("content") or "").strip()
        if text and text not in turn:
            problems.append(f"message {i}: the template drops or alters the assistant text")
        for call in m.get("tool_calls") or []:
            name = call["function"]["name"]
            if name not in turn:
                problems.append(
                    f"message {i}: the template drops the tool call {name!r} (it renders no "
                    "tool calls: train with protocol 'gen-searcher', the text protocol)"
                )
    return problems


def tokenize(
    tokenizer: ChatTokenizer,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    *,
    max_length: int,
) -> dict[str, list[int]] | str:
    """`input_ids` and `assistant_masks` (1 on the tokens of assistant turns, their end-of-turn
    token included), or why the conversation cannot be used. TRL's SFTTrainer turns
    `assistant_masks` into labels (-100 elsewhere): the assistant-only loss."""
    problems = template_problems(tokenizer, messages, tools)
    if problems:
        return problems[0]
    full = _render(tokenizer, messages, tools)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(_render(tokenizer, messages[:i], tools, generation_prompt=True))
            end = len(_render(tokenizer, messages[: i + 1], tools))
            spans.append((start, end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if len(ids) > max_length:
        return f"{len(ids)} tokens, over max_length {max_length} (cut tool results shorter)"
    mask = [
        1 if any(s <= a < e for s, e in spans) and b > a else 0 for a, b in enc["offset_mapping"]
    ]
    if not any(mask):
        return "no assistant tokens"
    return {"input_ids": ids, "assistant_masks": mask}


def write_jsonl(path: Path, examples: list[Example]) -> str:
    """Write the examples (as used, for the record) and return the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for e in examples:
            row = {"messages": e.messages, "prompt": e.prompt, "source": e.source}
            if e.tools:
                row["tools"] = e.tools
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return sha256_file(path)
