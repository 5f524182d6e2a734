"""`groundwork eval profile-check`: is what the trained policy received laid out as upstream?

A trained policy performs as trained only when every message it reads looks like its training
data (the upstream agent module's layout). This reads one recorded conversation (a run
folder's last policy call, e.g. from a replayed eval) and the Gen-Searcher agent module
(parsed with `ast`, never run), and
lists every difference between the two: the system prompt, the user turns that are not tool
results (final, truncation and format messages), the `<tool_response>` wrapper, the
`image_search` text layout, the images attached, the LLM-call budget, turns kept after a
repeated reply, text kept after a self-written `<tool_response>`. An empty list = faithful.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.profiles import UpstreamText, parse_text_protocol, parse_upstream
from core.errors import InputError

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_IMG_HEAD = re.compile(r"^--- image search result for \[.*\] ---$")
_IMG_END = "--- end of image search result ---"
_IMG_LINE = re.compile(r"^IMG_\d{3,}: title: .*$")
_SUB_LINES = ("  url: ", "  local_path: ", "  page_url: ")
_MAX_TRACE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Difference:
    index: int
    """Message index in the conversation (-1: the conversation as a whole)."""
    what: str

    def __str__(self) -> str:
        where = "conversation" if self.index < 0 else f"message {self.index}"
        return f"{where}: {self.what}"


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) if isinstance(p, dict) else str(p)
            for p in content
            if isinstance(p, str) or (isinstance(p, dict) and p.get("type") == "text")
        )
    return "" if content is None else str(content)


def _images(message: dict[str, Any]) -> int:
    content = message.get("content")
    parts = content if isinstance(content, list) else []
    listed = sum(1 for p in parts if isinstance(p, dict) and p.get("type") == "image_url")
    return listed + len(message.get("images") or [])


def _image_layout(body: str, limit_listed: int) -> list[str]:
    """Every line of an image_search result that upstream would not write."""
    problems: list[str] = []
    lines = body.split("\n")
    if lines and lines[0].startswith("[Tool Error]: ") and len(lines) == 1:
        return []
    if not lines or not _IMG_HEAD.match(lines[0]):
        return [f"image_search result does not start with upstream's header line: {lines[0]!r}"]
    if lines[-1] != _IMG_END:
        problems.append(f"image_search result does not end with {_IMG_END!r}")
    listed = 0
    expect_sub = 0
    for line in lines[1:-1] if lines[-1] == _IMG_END else lines[1:]:
        if _IMG_LINE.match(line):
            listed += 1
            expect_sub = 3
            continue
        if expect_sub and any(line.startswith(p) for p in _SUB_LINES):
            expect_sub -= 1
            continue
        problems.append(f"extra line in an image_search result: {line[:120]!r}")
    if listed > limit_listed:
        problems.append(
            f"{listed} images listed in one image_search result (upstream: ≤ {limit_listed})"
        )
    return problems


def check_conversation(
    messages: list[dict[str, Any]], upstream: UpstreamText, *, listed_limit: int = 10
) -> list[Difference]:
    """Every difference between `messages` (what the policy received, its replies included)
    and the layout upstream's agent loop produces."""
    diffs: list[Difference] = []
    if len(messages) < 2:
        return [Difference(-1, "fewer than two messages: no system prompt and user turn")]
    system = messages[0]
    sys_text = _text(system.get("content"))
    if system.get("role") != "system":
        diffs.append(Difference(0, f"first message has role {system.get('role')!r}, not system"))
    elif not sys_text.startswith(upstream.system):
        diffs.append(
            Difference(
                0, "system prompt differs from upstream's " + _first_diff(sys_text, upstream.system)
            )
        )
    elif not _DATE.match(sys_text[len(upstream.system) :]):
        tail = sys_text[len(upstream.system) :]
        diffs.append(
            Difference(0, f"system prompt should end with today's date only, ends with {tail!r}")
        )
    if messages[1].get("role") != "user":
        diffs.append(Difference(1, "second message is not the user's prompt"))
    allowed_user = {upstream.final_message}
    if upstream.truncated_message:
        allowed_user.add(upstream.truncated_message)
    if upstream.invalid_format:
        allowed_user.add(upstream.invalid_format)
    attached_limit = upstream.max_attached_images or 5
    budget = upstream.llm_call_budget
    replies = 0
    final_at: int | None = None
    last_reply: str | None = None
    pending_tool: str | None = None
    for i, m in enumerate(messages[2:], 2):
        role, text = m.get("role"), _text(m.get("content"))
        if role == "assistant":
            replies += 1
            if final_at is not None and i > final_at + 1:
                diffs.append(Difference(i, "the loop went on after the final-step reply"))
            if "<tool_response>" in text:
                diffs.append(Difference(i, "text after a self-written <tool_response> was kept"))
            if text != text.strip():
                diffs.append(Difference(i, "assistant turn not stripped as upstream keeps it"))
            if last_reply is not None and text.strip() == last_reply and i < len(messages) - 1:
                diffs.append(Difference(i, "the loop went on after a repeated identical reply"))
            last_reply = text.strip()
            parsed = parse_text_protocol(text, turn=i)
            pending_tool = parsed.calls[0].name if parsed.calls else None
            if m.get("tool_calls"):
                diffs.append(Difference(i, "native tool_calls: upstream writes <tool_call> text"))
            continue
        if role == "tool":
            diffs.append(Difference(i, "a tool result in a `tool` role: upstream uses a user turn"))
            continue
        if role != "user":
            diffs.append(Difference(i, f"unexpected role {role!r}"))
            continue
        if text.startswith("<tool_response>"):
            if not (text.startswith("<tool_response>\n") and text.endswith("\n</tool_response>")):
                diffs.append(
                    Difference(
                        i, "tool result not wrapped as '<tool_response>\\n…\\n</tool_response>'"
                    )
                )
            body = text.removeprefix("<tool_response>\n").removesuffix("\n</tool_response>")
            images = _images(m)
            if pending_tool == "image_search":
                diffs += [Difference(i, p) for p in _image_layout(body, listed_limit)]
                if images > attached_limit:
                    diffs.append(
                        Difference(i, f"{images} images attached (upstream: ≤ {attached_limit})")
                    )
            else:
                if images:
                    diffs.append(
                        Difference(i, f"{images} images attached to a {pending_tool} result")
                    )
                diffs += [
                    Difference(i, f"extra line in a {pending_tool} result: {line[:120]!r}")
                    for line in body.split("\n")
                    if line.startswith("Note: ")
                ]
            if pending_tool is None:
                diffs.append(Difference(i, "a tool result with no tool call before it"))
            pending_tool = None
            continue
        if text not in allowed_user:
            diffs.append(
                Difference(
                    i,
                    "a user message upstream never sends (not its final, truncation or format "
                    f"message): {text[:120]!r}",
                )
            )
        if text == upstream.final_message:
            final_at = i
            if budget is not None and replies != budget:
                diffs.append(
                    Difference(
                        i,
                        f"final message after {replies} policy replies (upstream: after its "
                        f"LLM-call budget of {budget})",
                    )
                )
    if budget is not None and replies > budget + 1:
        diffs.append(Difference(-1, f"{replies} policy replies; upstream allows {budget} + 1"))
    return diffs


def _first_diff(a: str, b: str) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"from character {n}: received {a[n : n + 60]!r}, upstream {b[n : n + 60]!r}"


def recorded_conversation(path: Path) -> list[dict[str, Any]]:
    """The messages of the last policy call and its reply: from a run folder, its trace.jsonl,
    or a JSON file holding the message list."""
    path = Path(path)
    if path.is_dir():
        path = path / "trace.jsonl"
    if not path.is_file():
        raise InputError(f"no conversation at {path}: give a run folder, trace.jsonl or JSON file")
    if path.stat().st_size > _MAX_TRACE_BYTES:
        raise InputError(f"{path} is larger than {_MAX_TRACE_BYTES} bytes")
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        data = _loads(raw, path)
        messages = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(messages, list):
            raise InputError(f"{path}: expected a list of messages")
        return [m for m in messages if isinstance(m, dict)]
    last: dict[str, Any] | None = None
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(rec, dict) and rec.get("kind") == "llm" and rec.get("role") == "policy":
            last = rec
    if last is None:
        raise InputError(f"{path}: no policy LLM call recorded (a react run's trace is needed)")
    messages = [m for m in last.get("messages") or [] if isinstance(m, dict)]
    answer = last.get("answer")
    if isinstance(answer, dict):
        messages.append({"role": "assistant", "content": answer.get("content")})
    return messages


def _loads(raw: str, path: Path) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: not JSON ({exc})") from exc


def profile_check(conversation: Path, checkout: Path) -> list[Difference]:
    return check_conversation(recorded_conversation(conversation), parse_upstream(checkout))
