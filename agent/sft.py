"""Run folders as supervised fine-tuning data: `groundwork traces export`.

Every run folder holds `trace.jsonl` (each LLM call and tool call, agent/trace.py) beside
`run.json`. One run becomes one training conversation:

- a react run: its last policy call's messages plus that call's answer, as the model saw them;
- a planned run: its fixed calls rendered as the equivalent tool-calling conversation (the
  openai profile's system prompt and user turn; one assistant turn per research wave whose tool
  calls are its searches, each answered with the rendered observation; the synthesized grounded
  prompt as the final `<answer>` JSON), so a plain-agent run teaches a policy too.

Two output formats: `openai` (chat messages with `tool_calls` and `tool` answers, plus the
`tools` offered) and `sharegpt` (LLaMA-Factory's multimodal layout that Gen-Searcher's SFT used:
`messages` with role/content, tool calls as `<tool_call>` text, tool answers as user turns
inside `<tool_response>`, one `<image>` per entry of `images`). Images (`artifact:<sha256>` and
data URLs) become files in `images/` beside the JSONL, referenced by relative path. Replies
that failed (malformed calls, chatter the model was corrected for) are left out with their
corrections (`drop_failed`); `check_openai` / `check_sharegpt` re-validate an example.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from agent.contracts import GroundedPrompt
from agent.profiles import OPENAI, RenderContext, ToolRequest, parse_text_protocol, tools_block
from agent.settings import AgentSettings, Policy
from core.artifacts import ArtifactNotFound, ArtifactStore
from core.errors import GroundworkError, InputError
from tools.observations import Observation, Passage
from tools.registry import ALL_TOOLS, GEN_SEARCHER_TOOLS, tool_specs

Format = Literal["openai", "sharegpt"]
ImageMode = Literal["data", "url", "files"]
FORMATS: tuple[Format, ...] = ("openai", "sharegpt")
IMAGES_DIR = "images"

_EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+)?(?:;[^,]*)?;base64,(?P<data>.*)$", re.S)
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|$)", re.DOTALL)


class SkipRun(GroundworkError):
    """This run folder cannot become a training example (the message says why)."""


# -- one conversation, format-neutral -------------------------------------------------------------
@dataclass
class Image:
    url: str
    """artifact:<sha256>, a data URL, or (after export) a path relative to the JSONL."""


Part = str | Image


@dataclass
class Call:
    id: str
    name: str
    arguments: dict[str, Any] | str


@dataclass
class Turn:
    role: Literal["system", "user", "assistant", "tool"]
    parts: list[Part] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    call_id: str = ""

    @property
    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list[Image]:
        return [p for p in self.parts if isinstance(p, Image)]


@dataclass
class Conversation:
    turns: list[Turn]
    tools: list[dict[str, Any]]
    source: str
    policy: Policy


def _parts(content: Any) -> list[Part]:
    if isinstance(content, list):
        out: list[Part] = []
        for p in content:
            if isinstance(p, str):
                out.append(p)
            elif p.get("type") == "image_url":
                out.append(Image(str(p["image_url"]["url"])))
            elif p.get("type") == "text":
                out.append(str(p.get("text", "")))
        return out
    return [str(content)] if content else []


def _unwrap(text: str) -> str:
    inner = text.strip().removeprefix("<tool_response>").removesuffix("</tool_response>")
    return inner.strip("\n")


def _loads(raw: Any) -> dict[str, Any] | str:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return str(raw)
    return value if isinstance(value, dict) else str(raw)


def from_messages(messages: list[dict[str, Any]]) -> list[Turn]:
    """OpenAI-format messages (as traced) as turns. Text-protocol tool calls (`<tool_call>` in
    an assistant turn, answered by a `<tool_response>` user turn) become calls and tool turns;
    only the first call of such a turn ran, so only it is kept."""
    turns: list[Turn] = []
    awaiting: str | None = None
    for k, m in enumerate(messages):
        role = m["role"]
        parts = _parts(m.get("content"))
        if role == "assistant":
            awaiting = None
            text = "\n".join(p for p in parts if isinstance(p, str))
            if m.get("tool_calls"):
                calls = [
                    Call(c["id"], c["function"]["name"], _loads(c["function"]["arguments"]))
                    for c in m["tool_calls"]
                ]
                turns.append(Turn("assistant", [text] if text else [], calls))
                continue
            parsed = parse_text_protocol(text, turn=k)
            if parsed.calls:
                first = parsed.calls[0]
                awaiting = f"call_{k}"
                kept = _TOOL_CALL_BLOCK.sub("", text.split("<tool_response>", 1)[0]).strip()
                call = Call(awaiting, first.name, first.arguments)
                turns.append(Turn("assistant", [kept] if kept else [], [call]))
            else:
                turns.append(Turn("assistant", [text]))
        elif role == "tool":
            turns.append(Turn("tool", parts, call_id=str(m.get("tool_call_id", ""))))
        elif (
            role == "user"
            and awaiting
            and "<tool_response>" in "".join(p for p in parts if isinstance(p, str))
        ):
            unwrapped: list[Part] = [_unwrap(p) if isinstance(p, str) else p for p in parts]
            turns.append(Turn("tool", unwrapped, call_id=awaiting))
            awaiting = None
        else:
            turns.append(Turn("system" if role == "system" else "user", parts))
            awaiting = None
    return drop_failed(turns)


def drop_failed(turns: list[Turn]) -> list[Turn]:
    """Training data keeps what worked: a reply that was neither a usable tool call nor an
    answer goes, with the correction that followed it; so do calls whose arguments were not
    JSON, with their error answers. The final turn always stays."""
    last = max((i for i, t in enumerate(turns) if t.role == "assistant"), default=-1)
    out: list[Turn] = []
    dropped_ids: set[str] = set()
    skip_user = False
    for i, t in enumerate(turns):
        if skip_user and t.role == "user":
            skip_user = False
            continue
        skip_user = False
        if t.role == "assistant" and i != last:
            bad = {c.id for c in t.calls if isinstance(c.arguments, str)}
            dropped_ids |= bad
            t.calls = [c for c in t.calls if c.id not in bad]
            if not t.calls and (bad or parse_text_protocol(t.text, turn=i).answer is None):
                skip_user = not bad
                continue
        if t.role == "tool" and t.call_id in dropped_ids:
            continue
        out.append(t)
    return out


# -- planned runs as a tool-calling conversation --------------------------------------------------
def _planned_call(obs: Observation) -> dict[str, Any]:
    if obs.tool == "search":
        return {"queries": [obs.query]}
    if obs.tool == "browse":
        url = next((i.source for i in obs.items if isinstance(i, Passage) and i.source), "")
        query = obs.query
        if not url and " :: " in obs.query:  # a failed browse is labelled "url :: query"
            url, query = obs.query.split(" :: ", 1)
        return {"url": url, "query": query}
    return {"query": obs.query}


def answer_json(grounded: dict[str, Any]) -> dict[str, Any]:
    """The grounded prompt in the policy's answer shape (Gen-Searcher's, plus what the planned
    flow adds: facts and requirements when it has them)."""
    g = GroundedPrompt.model_validate(grounded)
    out: dict[str, Any] = {
        "gen_prompt": g.gen_prompt,
        "reference_images": [r.model_dump() for r in g.reference_images],
    }
    if g.negative_prompt:
        out["negative_prompt"] = g.negative_prompt
    if g.facts:
        out["facts"] = [f.model_dump() for f in g.facts]
    if g.requirements:
        out["requirements"] = [r.model_dump() for r in g.requirements]
    return out


def planned_conversation(record: dict[str, Any], trace: list[dict[str, Any]]) -> list[Turn]:
    """system + user, one assistant turn per research wave (searches, image searches and
    knowledge-base lookups first, then the pages read from their results), each call answered
    with its rendered observation, then the `<answer>`."""
    grounded = record.get("grounded")
    if not grounded:
        raise SkipRun("the run wrote no grounded prompt")
    observations = [
        Observation.model_validate(r["observation"])
        for r in trace
        if r.get("kind") == "tool" and r.get("stage") == "research" and "observation" in r
    ]
    names = (
        ALL_TOOLS if any(o.tool == "knowledge_base" for o in observations) else GEN_SEARCHER_TOOLS
    )
    tools = tool_specs(names)
    day = _run_date(trace)
    a = AgentSettings()
    prompt = str(record.get("prompt") or record.get("request") or "")
    turns = [
        Turn("system", [OPENAI.system(tools, day, a.react_max_tool_calls)]),
        Turn("user", [OPENAI.user(prompt)]),
    ]
    ctx = RenderContext(a.observation_chars)
    waves = (
        [o for o in observations if o.tool != "browse"],
        [o for o in observations if o.tool == "browse"],
    )
    for w, wave in enumerate(waves):
        if not wave:
            continue
        calls: list[Call] = []
        answers: list[Turn] = []
        for j, obs in enumerate(wave):
            call = Call(f"call_{w}_{j}", obs.tool, _planned_call(obs))
            if obs.ok:
                text, _ = OPENAI.render(ToolRequest(call.name, call.arguments, call.id), [obs], ctx)
            else:
                text = OPENAI.tool_error(obs.error or "the tool failed")
            calls.append(call)
            answers.append(Turn("tool", [text], call_id=call.id))
        turns.append(Turn("assistant", [], calls))
        turns += answers
    answer = json.dumps(answer_json(grounded), ensure_ascii=False)
    turns.append(Turn("assistant", [f"<answer>{answer}</answer>"]))
    return turns


def _run_date(trace: list[dict[str, Any]]) -> date:
    stamps = [r["ts"] for r in trace if isinstance(r.get("ts"), int | float)]
    return datetime.fromtimestamp(min(stamps)).date() if stamps else date.today()


# -- a run folder ---------------------------------------------------------------------------------
def matched(record: dict[str, Any]) -> bool:
    """Every requirement passed in the final critique round (no verdict: not matched)."""
    rounds = record.get("rounds") or []
    verdict = (rounds[-1] or {}).get("verdict") if rounds else None
    checks = (verdict or {}).get("checks") or []
    return bool(checks) and all(c.get("passed") for c in checks)


def run_folders(runs_dir: Path) -> list[Path]:
    """`runs_dir` itself when it is a run folder, else its run folders (finished ones). A
    folder that is a symlink out of `runs_dir` is not one of them."""
    if (runs_dir / "run.json").is_file():
        return [runs_dir]
    root = runs_dir.resolve()
    return sorted(
        p
        for p in runs_dir.iterdir()
        if _inside(p, root) and (p / "run.json").is_file() and not (p / "INCOMPLETE").exists()
    )


# -- reading a run folder safely ------------------------------------------------------------------
MAX_RUN_JSON_BYTES = 16 * 1024 * 1024
MAX_TRACE_BYTES = 256 * 1024 * 1024
MAX_IMAGE_BYTES = 64 * 1024 * 1024


def _inside(path: Path, root: Path) -> bool:
    """`path` resolves (symlinks followed) to somewhere under `root`."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def read_capped(path: Path, root: Path, limit: int) -> bytes:
    """A regular file under `root` (never through a symlink out of it, never a device such
    as /dev/zero), at most `limit` bytes: anything else is a SkipRun saying why."""
    if not _inside(path, root.resolve()):
        raise SkipRun(f"{path.name} points outside the run folder (symlink): not read")
    try:
        st = path.stat()
    except OSError as exc:
        raise SkipRun(f"{path.name} unreadable: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise SkipRun(f"{path.name} is not a regular file: not read")
    if st.st_size > limit:
        raise SkipRun(f"{path.name} is {st.st_size} bytes, over the {limit}-byte cap")
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SkipRun(f"{path.name} grew past the {limit}-byte cap while read")
    return data


def loads_bounded(text: str | bytes) -> Any:
    """JSON with nesting bounded by the interpreter's recursion guard: too deep is a
    ValueError, never a RecursionError traceback."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def read_run_trace(run_dir: Path) -> list[dict[str, Any]]:
    """trace.jsonl's records, capped in size; lines that are not JSON objects (torn, too deep)
    are left out."""
    path = run_dir / "trace.jsonl"
    if not path.exists() and not path.is_symlink():
        return []
    raw = read_capped(path, run_dir, MAX_TRACE_BYTES).decode("utf-8", errors="replace")
    out = []
    for line in raw.splitlines():
        try:
            record = loads_bounded(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_run_json(run_dir: Path) -> dict[str, Any]:
    raw = read_capped(run_dir / "run.json", run_dir, MAX_RUN_JSON_BYTES)
    try:
        record = loads_bounded(raw)
    except ValueError as exc:
        raise SkipRun(f"run.json unreadable: {exc}") from exc
    if not isinstance(record, dict):
        raise SkipRun("run.json is not a JSON object")
    return record


def conversation(run_dir: Path) -> Conversation:
    """The training conversation of one run folder; SkipRun says why there is none."""
    record = read_run_json(run_dir)
    trace = read_run_trace(run_dir)
    if not trace:
        raise SkipRun("no trace.jsonl (a run from before traces were recorded)")
    turn = record.get("turn")
    stages = {s.get("stage") for s in record.get("stages") or [] if s.get("turn") == turn}
    if "refine" in stages:
        raise SkipRun("a chat refinement (no research)")
    policy_calls = [r for r in trace if r.get("kind") == "llm" and r.get("role") == "policy"]
    if not policy_calls:
        return Conversation(
            planned_conversation(record, trace), _planned_tools(trace), run_dir.name, "planned"
        )
    last = policy_calls[-1]
    answer = last.get("answer") or {}
    if parse_text_protocol(_text(answer.get("content")), turn=0).answer is None:
        raise SkipRun("the policy's last reply is not a usable answer")
    turns = from_messages([*last.get("messages", []), answer])
    tools = list(last.get("tools") or tool_specs(GEN_SEARCHER_TOOLS))
    return Conversation(turns, tools, run_dir.name, "react")


def _planned_tools(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    used = {
        r.get("tool") for r in trace if r.get("kind") == "tool" and r.get("stage") == "research"
    }
    return tool_specs(ALL_TOOLS if "knowledge_base" in used else GEN_SEARCHER_TOOLS)


def _text(content: Any) -> str:
    return "\n".join(p for p in _parts(content) if isinstance(p, str))


# -- images ---------------------------------------------------------------------------------------
class ImageFiles:
    """Writes each image once, as images/<sha256>.<ext> beside the JSONL."""

    def __init__(self, folder: Path, store: ArtifactStore | None) -> None:
        self.folder = folder
        self.store = store
        self.written = 0

    def url_for(
        self, url: str, run_dir: Path, ids: dict[str, str], mode: ImageMode, base_url: str
    ) -> str:
        """`data`: a data URI (OpenAI's fine-tuning format takes those or http URLs);
        `url`: the file written and addressed under `base_url`; `files`: its relative path."""
        if mode == "data":
            data, media = self._bytes(url, run_dir, ids)
            media = media if media in _EXT else "image/png"
            return f"data:{media};base64,{base64.b64encode(data).decode()}"
        path = self.path_for(url, run_dir, ids)
        return f"{base_url.rstrip('/')}/{path}" if mode == "url" else path

    def path_for(self, url: str, run_dir: Path, ids: dict[str, str]) -> str:
        data, media = self._bytes(url, run_dir, ids)
        sha = hashlib.sha256(data).hexdigest()
        name = f"{sha}{_EXT.get(media, '.png')}"
        target = self.folder / name
        if not target.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
            self.written += 1
        return f"{self.folder.name}/{name}"

    def _bytes(self, url: str, run_dir: Path, ids: dict[str, str]) -> tuple[bytes, str]:
        m = _DATA_URL.match(url)
        if m:
            try:
                return base64.b64decode(m.group("data"), validate=False), m.group("media") or ""
            except binascii.Error as exc:
                raise SkipRun(f"an image data URL does not decode: {exc}") from exc
        if not url.startswith("artifact:"):
            raise SkipRun(f"an image is neither an artifact nor a data URL: {url[:80]}")
        sha = url.removeprefix("artifact:")
        by_sha = {v: k for k, v in ids.items()}
        if sha in by_sha:  # the run folder's own copy (refs/IMG_###.<ext>)
            for copy in sorted((run_dir / "refs").glob(f"{by_sha[sha]}.*")):
                media = next((k for k, v in _EXT.items() if v == copy.suffix.lower()), "")
                return read_capped(copy, run_dir, MAX_IMAGE_BYTES), media
        if self.store is not None:
            try:
                return self.store.get_bytes(sha), self.store.ref(sha).media_type
            except (ArtifactNotFound, ValueError):
                pass
        raise SkipRun(f"image {sha[:12]} is neither in the run folder nor in the artifact store")


# -- rendering ------------------------------------------------------------------------------------
def _call_json(call: Call) -> dict[str, Any]:
    return {"name": call.name, "arguments": call.arguments}


def to_openai(convo: Conversation, *, dict_arguments: bool = False) -> dict[str, Any]:
    """OpenAI chat fine-tuning format; tool answers carry text only, so images a tool turn
    returned follow the tool answers as one user turn. Arguments are JSON strings (the spec);
    `dict_arguments` keeps them objects, as Qwen and Llama chat templates expect."""
    messages: list[dict[str, Any]] = []
    held: list[Image] = []

    def flush() -> None:
        if held:
            content: list[dict[str, Any]] = [
                {"type": "text", "text": "The images the tool calls above returned:"}
            ]
            content += [{"type": "image_url", "image_url": {"url": i.url}} for i in held]
            messages.append({"role": "user", "content": content})
            held.clear()

    for t in convo.turns:
        if t.role != "tool":
            flush()
        if t.role == "tool":
            messages.append({"role": "tool", "tool_call_id": t.call_id, "content": t.text})
            held.extend(t.images)
        elif t.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": t.text or None}
            if t.calls:
                msg["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": c.name,
                            "arguments": c.arguments
                            if isinstance(c.arguments, str) or dict_arguments
                            else json.dumps(c.arguments, ensure_ascii=False),
                        },
                    }
                    for c in t.calls
                ]
            messages.append(msg)
        elif t.images:
            messages.append({"role": t.role, "content": _openai_parts(t.parts)})
        else:
            messages.append({"role": t.role, "content": t.text})
    flush()
    return {"messages": messages, "tools": convo.tools}


def _openai_parts(parts: list[Part]) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": p}
        if isinstance(p, str)
        else {"type": "image_url", "image_url": {"url": p.url}}
        for p in parts
    ]


def _sharegpt_text(parts: list[Part]) -> tuple[str, list[str]]:
    """Text with one `<image>` per image, placed where it was (images before the text, as
    Qwen-VL's template puts a turn's images)."""
    out = ""
    images: list[str] = []
    for i, p in enumerate(parts):
        if isinstance(p, Image):
            out += "<image>"
            images.append(p.url)
        else:
            out += p + ("\n" if i + 1 < len(parts) and isinstance(parts[i + 1], str) else "")
    return out, images


def to_sharegpt(convo: Conversation) -> dict[str, Any]:
    """LLaMA-Factory sharegpt (role/content tags): user and assistant turns alternate; tool
    calls are `<tool_call>` text, tool answers `<tool_response>` user turns; the tools are
    listed in the system prompt the Qwen way when they are not there already."""
    messages: list[dict[str, str]] = []
    images: list[str] = []
    for t in convo.turns:
        text, found = _sharegpt_text(t.parts)
        images += found
        if t.role == "system":
            if "<tools>" not in text and convo.tools:
                text += "\n\n# Tools\n\n" + tools_block(convo.tools)
            messages.append({"role": "system", "content": text})
            continue
        if t.role == "assistant":
            blocks = [
                f"<tool_call>\n{json.dumps(_call_json(c), ensure_ascii=False)}\n</tool_call>"
                for c in t.calls
            ]
            content = "\n".join([text, *blocks] if text else blocks)
            messages.append({"role": "assistant", "content": content})
            continue
        if t.role == "tool":
            lead = text[: text.rfind("<image>") + 7] if "<image>" in text else ""
            text = f"{lead}<tool_response>\n{text[len(lead) :]}\n</tool_response>"
        if messages and messages[-1]["role"] == "user":
            messages[-1]["content"] += "\n" + text
        else:
            messages.append({"role": "user", "content": text})
    return {"messages": messages, "images": images}


# -- export ---------------------------------------------------------------------------------------
@dataclass
class ExportReport:
    out: Path
    written: int = 0
    images: int = 0
    by_policy: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dataset_info: Path | None = None


def _with_files(
    convo: Conversation,
    run_dir: Path,
    files: ImageFiles,
    ids: dict[str, str],
    mode: ImageMode = "files",
    base_url: str = "",
) -> Conversation:
    for t in convo.turns:
        for p in t.parts:
            if isinstance(p, Image):
                p.url = files.url_for(p.url, run_dir, ids, mode, base_url)
    return convo


def dataset_info_entry(out: Path) -> dict[str, Any]:
    """LLaMA-Factory's dataset_info.json entry for a sharegpt export (role/content tags,
    multimodal `images` column)."""
    return {
        "file_name": out.name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }


def write_dataset_info(out: Path) -> Path:
    """Add (or replace) this export's entry in dataset_info.json beside it, keeping others."""
    info = out.parent / "dataset_info.json"
    current: dict[str, Any] = {}
    if info.is_file():
        try:
            loaded = loads_bounded(read_capped(info, out.parent, MAX_RUN_JSON_BYTES))
        except (ValueError, SkipRun) as exc:
            raise InputError(f"{info} exists but is not a JSON object ({exc}); move it") from exc
        if not isinstance(loaded, dict):
            raise InputError(f"{info} exists but is not a JSON object; move it")
        current = loaded
    current[out.stem] = dataset_info_entry(out)
    tmp = info.with_name(f".{info.name}.tmp")
    tmp.write_text(json.dumps(current, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(info)
    return info


def export_runs(
    runs_dir: Path,
    out: Path,
    *,
    fmt: Format = "openai",
    only_matched: bool = False,
    store: ArtifactStore | None = None,
    images: ImageMode | None = None,
    image_base_url: str | None = None,
    dict_arguments: bool = False,
) -> ExportReport:
    """Write one JSONL line per usable run under `runs_dir`; say why each other run was
    skipped. The file is written whole (temp + rename), so a failed export leaves no half.

    Images: OpenAI examples carry data URIs (or http URLs under `image_base_url`, the files
    written beside the JSONL); sharegpt examples relative paths (LLaMA-Factory's layout), with
    the dataset_info.json entry written beside the data. Tool-call arguments are JSON strings
    as the OpenAI spec has them; `dict_arguments` keeps them objects (Qwen/Llama templates)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if not runs_dir.is_dir():
        raise InputError(f"{runs_dir} is not a folder of run folders (see --out of groundwork run)")
    report = ExportReport(out=out)
    files = ImageFiles(out.parent / IMAGES_DIR, store)
    mode: ImageMode = images or (
        "url" if image_base_url else ("data" if fmt == "openai" else "files")
    )
    if mode == "url" and not image_base_url:
        raise InputError("images as URLs need a base URL (--image-base-url)")
    lines: list[str] = []
    for run_dir in run_folders(runs_dir):
        try:
            record = read_run_json(run_dir)
            if only_matched and not matched(record):
                raise SkipRun("the critique did not match (or did not run)")
            convo = _with_files(
                conversation(run_dir),
                run_dir,
                files,
                record.get("image_ids") or {},
                mode,
                image_base_url or "",
            )
        except SkipRun as exc:
            report.skipped.append((run_dir.name, str(exc)))
            continue
        except (OSError, ValueError, ValidationError) as exc:
            report.skipped.append((run_dir.name, f"unreadable: {str(exc).splitlines()[0]}"))
            continue
        example = (
            to_openai(convo, dict_arguments=dict_arguments)
            if fmt == "openai"
            else to_sharegpt(convo)
        )
        lines.append(json.dumps(example, ensure_ascii=False))
        report.written += 1
        report.by_policy[convo.policy] = report.by_policy.get(convo.policy, 0) + 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(out)
    report.images = files.written
    if fmt == "sharegpt":
        report.dataset_info = write_dataset_info(out)
    return report


# -- checking an exported example ----------------------------------------------------------------
def check_answer(content: str) -> str | None:
    """None when `content` holds an answer that validates as a GroundedPrompt."""
    parsed = parse_text_protocol(content, turn=0)
    if parsed.answer is None:
        return f"the final turn has no answer ({parsed.error})"
    try:
        GroundedPrompt.model_validate(parsed.answer)
    except ValidationError as exc:
        return f"the answer is not a GroundedPrompt: {str(exc).splitlines()[0]}"
    return None


def check_openai(example: dict[str, Any], base: Path) -> list[str]:
    """What is wrong with an exported OpenAI example (empty when it is sound): each tool call
    answered under its id before the next turn, arguments JSON objects, images present, the
    conversation ending in an answer."""
    problems: list[str] = []
    pending: set[str] = set()
    for i, m in enumerate(example.get("messages") or []):
        role = m.get("role")
        if role in ("assistant", "user", "system") and pending:
            problems.append(f"message {i}: tool calls {sorted(pending)} were never answered")
            pending = set()
        if role == "assistant":
            for c in m.get("tool_calls") or []:
                if c["id"] in pending:
                    problems.append(f"message {i}: call id {c['id']} used twice")
                pending.add(c["id"])
                raw_args = c["function"]["arguments"]
                if not isinstance(raw_args, str | dict) or not isinstance(_loads(raw_args), dict):
                    problems.append(f"message {i}: arguments of {c['id']} are not a JSON object")
        elif role == "tool":
            if m.get("tool_call_id") not in pending:
                problems.append(f"message {i}: answers unknown call {m.get('tool_call_id')}")
            pending.discard(m.get("tool_call_id", ""))
        for part in m.get("content") if isinstance(m.get("content"), list) else []:
            url = str(part.get("image_url", {}).get("url", "")) if part.get("type") else ""
            if part.get("type") != "image_url" or url.startswith(("data:", "http://", "https://")):
                continue
            if not (base / url).is_file():
                problems.append(f"message {i}: image {url} missing")
    messages = example.get("messages") or [{}]
    last = messages[-1]
    if pending or last.get("role") != "assistant" or last.get("tool_calls"):
        problems.append("the conversation does not end with a final assistant answer")
    else:
        problems += [p for p in [check_answer(str(last.get("content") or ""))] if p]
    return problems


def check_sharegpt(example: dict[str, Any], base: Path) -> list[str]:
    """The sharegpt counterpart: roles alternate user/assistant after the system turn, every
    `<tool_call>` of an assistant turn parses, `<image>` placeholders match `images`, the last
    turn answers."""
    problems: list[str] = []
    messages = [m for m in example.get("messages") or [] if m.get("role") != "system"]
    for i, m in enumerate(messages):
        want = "user" if i % 2 == 0 else "assistant"
        if m.get("role") != want:
            problems.append(f"turn {i}: {m.get('role')} where {want} was expected")
        content = str(m.get("content", ""))
        # only the model's own turns are parsed: a user turn (the forced final message, a
        # tool result) may name the tag in its instructions
        if (
            want == "assistant"
            and "<tool_call>" in content
            and parse_text_protocol(content, turn=i).error
        ):
            problems.append(f"turn {i}: a <tool_call> does not parse")
    placeholders = sum(m.get("content", "").count("<image>") for m in example["messages"])
    images = example.get("images") or []
    if placeholders != len(images):
        problems.append(f"{placeholders} <image> placeholders for {len(images)} images")
    problems += [f"image {p} missing" for p in images if not (base / p).is_file()]
    if not messages or messages[-1].get("role") != "assistant":
        problems.append("the conversation does not end with an assistant turn")
    else:
        problems += [p for p in [check_answer(messages[-1]["content"])] if p]
    return problems


def read_examples(path: Path) -> Iterable[dict[str, Any]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield json.loads(line)
