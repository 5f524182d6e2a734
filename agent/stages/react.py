"""The react policy's tool loop: a policy model calls the research tools and answers in
Gen-Searcher's shape (`gen_prompt` + `reference_images` by `IMG_###`), which then goes through the
same generate and critique stages as the planned policy.

The loop runs as its own subgraph (graphs/react.py) over `ReactState`. `policy` asks the model
once and writes its decision (`react_next`: tools, answer, or policy again after an unusable
reply, which the model is told about); the graph routes on it. `tools` runs the calls through
the tool registry (tools/registry.py). How the conversation looks is the profile's business
(agent/profiles.py); the bounds are here, as counters in state: tool calls (the run's one tool
budget, `agent.max_tool_calls`, within react's own cap `react_max_tool_calls`, 8 as
Gen-Searcher), LLM calls (the profile's `llm_call_budget`, else the cap plus a few for malformed
replies) and prompt+completion tokens (react_token_budget). When one is spent the model gets
the profile's forced-final message and no tools; a model that still gives no usable answer, a
reply cut at the length limit twice in a row, or a repeated reply (profiles that say so) ends
the loop with the user's prompt, and a notice. A duplicate query is refused with an
observation, a malformed call is answered with an error observation: neither ends the run.
Every string from a tool (results, errors quoting server headers) reaches the model through
`untrusted()`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any, TypeVar, cast

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, ValidationError

from agent.contracts import (
    Fact,
    GapReport,
    GroundedPrompt,
    Ref,
    Requirement,
    check_references,
    fallback_requirements,
)
from agent.llm import call_record, image_data_url, invoke
from agent.offline import web_unavailable_notice
from agent.profiles import (
    OrdinalRef,
    Parsed,
    Profile,
    RenderContext,
    ToolRequest,
    get_profile,
    resolve_ordinals,
)
from agent.stage import Result, StageRun
from agent.state import ReactState
from core.artifacts import ArtifactNotFound, ArtifactStore
from generators.base import GeneratorError
from generators.capabilities import capabilities
from tools.observations import ImageHit, ImageRegistry, Observation
from tools.registry import TOOLS, get_tool, parse_arguments, tool_specs
from tools.render import untrusted
from tools.schemas import ToolCallError

if TYPE_CHECKING:
    from tools.toolkit import Toolkit

MAX_EXTRA_LLM_CALLS = 4
"""LLM calls allowed beyond the tool cap (malformed replies, refusals, the final answer)."""

today: Callable[[], date] = date.today
"""The date in the system prompt (tests pin it)."""

Message = dict[str, Any]
M = TypeVar("M", bound=BaseModel)


# -- conversation helpers -------------------------------------------------------------------------
def offered_tools(run: StageRun, profile: Profile) -> list[dict[str, Any]]:
    """The profile's tools that exist in the registry; a tool that needs the knowledge base
    only when one exists."""
    has_kb = run.settings.retrieval.kb_dir.expanduser().exists()
    names = [n for n in profile.tool_names if n in TOOLS and (has_kb or not TOOLS[n].requires_kb)]
    return tool_specs(names)


def tool_cap(run: StageRun) -> int:
    """Tool calls this loop may make in all: the react cap, within the run's one tool budget
    (`agent.max_tool_calls`, which a run's RunContext may lower: the planned policy obeys the
    same number)."""
    a = run.settings.agent
    return min(a.react_max_tool_calls, a.max_tool_calls)


def _state(run: StageRun) -> ReactState:
    return cast(ReactState, run.state)


def _vision(run: StageRun, profile: Profile) -> bool:
    return run.settings.llm.policy_vision if profile.vision is None else profile.vision


def clean(message: Message) -> Message:
    """A state message as the model gets it: bookkeeping keys (`_tokens`) dropped."""
    return {k: v for k, v in message.items() if not k.startswith("_")}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(
            p if isinstance(p, str) else str(p.get("text", ""))
            for p in content
            if isinstance(p, str) or p.get("type") == "text"
        )
    return str(content or "")


def _image_part(url: str, store: ArtifactStore) -> dict[str, Any]:
    """`artifact:<sha256>` (how state keeps images) as the data URL a server accepts."""
    if not url.startswith("artifact:"):
        return {"type": "image_url", "image_url": {"url": url}}
    sha = url.removeprefix("artifact:")
    try:
        data = store.get_bytes(sha)
        media = store.ref(sha).media_type
    except ArtifactNotFound:
        return {"type": "text", "text": "(image no longer in the artifact store)"}
    media = media if media.startswith("image/") else "image/png"
    return {"type": "image_url", "image_url": {"url": image_data_url(data, media)}}


def to_langchain(messages: list[Message], store: ArtifactStore) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [
                _image_part(str(p["image_url"]["url"]), store)
                if p.get("type") == "image_url"
                else p
                for p in content
            ]
        role = m["role"]
        if role == "system":
            out.append(SystemMessage(content=content))
        elif role == "user":
            out.append(HumanMessage(content=content))
        elif role == "tool":
            out.append(ToolMessage(content=content, tool_call_id=m["tool_call_id"]))
        else:
            valid: list[Any] = []
            invalid: list[Any] = []
            for c in m.get("tool_calls") or []:
                name, raw = c["function"]["name"], c["function"]["arguments"]
                args = _json_object(raw)
                if args is None:
                    invalid.append(
                        {
                            "id": c["id"],
                            "name": name,
                            "args": raw,
                            "error": None,
                            "type": "invalid_tool_call",
                        }
                    )
                else:
                    valid.append({"id": c["id"], "name": name, "args": args, "type": "tool_call"})
            out.append(
                AIMessage(content=content or "", tool_calls=valid, invalid_tool_calls=invalid)
            )
    return out


def _json_object(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (json.JSONDecodeError, TypeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _openai_call(call: ToolRequest) -> dict[str, Any]:
    args = call.arguments
    return {
        "id": call.call_id,
        "type": "function",
        "function": {
            "name": call.name,
            "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
        },
    }


_TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|$)", re.DOTALL)


def _reply(
    reply: AIMessage, profile: Profile, *, turn: int, native: bool
) -> tuple[Message, Parsed]:
    """The assistant message to keep, and what it asked for."""
    text = _text(reply.content)
    if native and (reply.tool_calls or reply.invalid_tool_calls):
        calls = [
            ToolRequest(c["name"], dict(c["args"]), c.get("id") or f"call_{turn}_{i}")
            for i, c in enumerate(reply.tool_calls)
        ] + [
            ToolRequest(c.get("name") or "", c.get("args") or "", c.get("id") or f"bad_{turn}_{i}")
            for i, c in enumerate(reply.invalid_tool_calls)
        ]
        message = {
            "role": "assistant",
            "content": text,
            "tool_calls": [_openai_call(c) for c in calls],
        }
        return message, Parsed(calls=tuple(calls))
    if native:
        # A server without a tool parser hands back the model's `<tool_call>` text: kept as
        # OpenAI tool calls, so the tool answers that follow have ids to answer. (Not when
        # tools were withheld: those calls will not run, so they stay text.)
        parsed = profile.parse(text, turn=turn)
        if parsed.calls:
            message = {
                "role": "assistant",
                "content": _TOOL_CALL_BLOCK.sub("", text).strip(),
                "tool_calls": [_openai_call(c) for c in parsed.calls],
            }
            return message, parsed
        return {"role": "assistant", "content": text}, parsed
    # Text protocol: the turn is kept as the profile keeps it (Gen-Searcher: cut before any
    # tool result the model invented).
    text = profile.keep_reply(text)
    return {"role": "assistant", "content": text}, profile.parse(text, turn=turn)


def _assistant_turns(messages: list[Message]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")


def _tokens_used(messages: list[Message]) -> int:
    return sum(int(m.get("_tokens", 0)) for m in messages)


def _is_forced_final(message: Message, profile: Profile) -> bool:
    return message["role"] == "user" and _text(message.get("content")).endswith(
        profile.forced_final
    )


def _call_limit(run: StageRun, profile: Profile) -> int:
    """Policy LLM calls before the forced final answer: the profile's own budget (Gen-Searcher:
    9), else the tool cap plus a few for malformed replies."""
    if profile.llm_call_budget is not None:
        return profile.llm_call_budget
    return tool_cap(run) + MAX_EXTRA_LLM_CALLS - 1


def _spent(run: StageRun, profile: Profile, messages: list[Message]) -> str | None:
    """Why the model must answer now, or None while it may still call tools."""
    a = run.settings.agent
    cap = tool_cap(run)
    if run.state.get("tool_calls", 0) >= cap:
        return f"tool budget of {cap} calls spent"
    if _tokens_used(messages) >= a.react_token_budget:
        return f"token budget of {a.react_token_budget} spent"
    if _assistant_turns(messages) >= _call_limit(run, profile):
        return "LLM-call budget spent"
    return None


def _sig(message: Message) -> tuple[str, list[tuple[str, str]]]:
    """A reply's content and calls without their ids (which differ each turn)."""
    calls = [
        (str(c["function"]["name"]), str(c["function"]["arguments"]))
        for c in message.get("tool_calls") or []
    ]
    return _text(message.get("content")).strip(), calls


def _stop(update: dict[str, Any], why: str, summary: str) -> Result:
    """End the loop without an answer: the answer node falls back to the prompt as written."""
    return Result({**update, "react_next": "answer", "react_stop": why}, summary)


# -- policy ---------------------------------------------------------------------------------------
async def policy(run: StageRun) -> Result:
    """Ask the policy model once. Writes `react_next` (tools, answer, or policy again after an
    unusable reply); the loop's graph routes on it."""
    settings = run.settings
    state = _state(run)
    profile = get_profile(settings.agent.react_profile)
    tools = offered_tools(run, profile)
    messages = list(state.get("messages") or [])
    update: dict[str, Any] = {"react_stop": None}
    if not messages:
        messages = [
            {"role": "system", "content": profile.system(tools, today(), tool_cap(run))},
            {"role": "user", "content": profile.user(state["prompt"])},
        ]
        update["react_seen"] = []
    turn = _assistant_turns(messages)
    if turn > _call_limit(run, profile):
        return _stop(
            {**update, "messages": messages},
            "the policy gave no usable answer within its LLM-call budget",
            f"turn {turn + 1}: LLM-call budget spent",
        )
    spent = _spent(run, profile, messages)
    forced = spent is not None
    notices: list[str] = []
    if forced and not _is_forced_final(messages[-1], profile):
        messages.append({"role": "user", "content": profile.forced_final})
        if spent and not spent.startswith("tool budget"):
            notices.append(f"react: {spent}; the policy was asked for its final answer")
    native = profile.native_tools and not forced
    chat, _ = await run.services.chat_model("policy", settings)
    # Forced: no tools bound at all (servers differ on tool_choice="none").
    runnable: Any = chat.bind_tools(tools) if native else chat
    sent = [clean(m) for m in messages]
    lc = to_langchain(sent, run.services.store)
    started = time.perf_counter()
    reply = cast(AIMessage, await invoke(runnable, lc, chat))
    record = call_record(chat, lc, reply, started, response_format=None, tools=tools)
    assistant, parsed = _reply(reply, profile, turn=turn, native=native)
    record.update(
        {
            "messages": sent,  # images as artifact:<sha256>, not base64
            "answer": assistant,
            "profile": profile.name,
            "native_tools": native,
        }
    )
    run.record_llm("policy", record)
    assistant["_tokens"] = record["prompt_tokens"] + record["completion_tokens"]
    truncated = (reply.response_metadata or {}).get("finish_reason") == "length"
    if truncated:
        assistant["_truncated"] = True
    previous = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    messages.append(assistant)
    update.update({"messages": messages, "notices": notices})
    cut_twice = truncated and previous is not None and previous.get("_truncated")
    if profile.truncated_message is not None and cut_twice:
        return _stop(
            update,
            "the policy's reply was cut at the length limit twice in a row",
            f"turn {turn + 1}: truncated twice",
        )
    if profile.stop_on_repeat and previous is not None and _sig(previous) == _sig(assistant):
        return _stop(update, "the policy repeated its previous reply", f"turn {turn + 1}: repeat")
    if parsed.answer is not None and (forced or not parsed.calls):
        return Result({**update, "react_next": "answer"}, f"turn {turn + 1}: answered")
    if parsed.calls and not forced:
        names = ", ".join(c.name or "?" for c in parsed.calls)
        return Result(
            {**update, "react_next": "tools"},
            f"turn {turn + 1}: {len(parsed.calls)} tool call(s): {names}",
        )
    if truncated and profile.truncated_message is not None:
        messages.append({"role": "user", "content": profile.truncated_message})
        return Result({**update, "react_next": "policy"}, f"turn {turn + 1}: truncated reply")
    body = _text(assistant.get("content"))
    if forced:
        error = parsed.error if parsed.calls == () else "tools are no longer available"
        text = f"{profile.invalid_format(error or 'no answer')}\n\n{profile.forced_final}"
    elif "<tool_call>" in body:
        error = parsed.error or "malformed tool call"
        text = profile.render_tool_error(error)
    else:
        error = parsed.error or "no tool call and no answer"
        text = profile.invalid_format(error)
    messages.append({"role": "user", "content": text})
    return Result({**update, "react_next": "policy"}, f"turn {turn + 1}: unusable reply ({error})")


# -- tools ----------------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _calls_of(message: Message, profile: Profile, turn: int) -> tuple[list[ToolRequest], list[str]]:
    if message.get("tool_calls"):
        calls = [
            ToolRequest(
                c["function"]["name"],
                _json_object(c["function"]["arguments"]) or c["function"]["arguments"],
                c["id"],
            )
            for c in message["tool_calls"]
        ]
        return calls, []
    parsed = profile.parse(_text(message.get("content")), turn=turn)
    return list(parsed.calls), list(parsed.notes)


def _dedupe(
    call: ToolRequest, seen: set[str]
) -> tuple[dict[str, Any] | str | None, list[str], list[str]]:
    """(arguments to run or None when it only repeats earlier calls, keys they add, what was
    repeated), from the tool's `dedupe_key`: a tool that can be narrowed (search) drops the
    units already run; any other call that repeats is refused whole."""
    try:
        spec = get_tool(call.name)
        args = parse_arguments(call.name, call.arguments)
    except ToolCallError:
        return call.arguments, [], []  # the toolkit answers with what is wrong
    keys = spec.dedupe_key(args)
    fresh = [i for i, k in enumerate(keys) if k not in seen and k not in keys[:i]]
    repeated = [i for i in range(len(keys)) if i not in fresh]
    if not repeated:
        return call.arguments, keys, []

    def unit(i: int) -> str:
        return spec.label(spec.keep(args, [i])) if spec.keep is not None else spec.label(args)

    repeats = [unit(i) for i in repeated]
    if not fresh or spec.keep is None:
        return None, [], repeats
    narrowed = spec.keep(args, fresh)
    return narrowed.model_dump(exclude_unset=True), [keys[i] for i in fresh], repeats


def _label(call: ToolRequest) -> str:
    """What a call is about, as the model may see it again (its own text is untrusted too)."""
    try:
        spec = get_tool(call.name)
        return untrusted(spec.label(parse_arguments(call.name, call.arguments)), 200)
    except ToolCallError:
        return untrusted(call.arguments, 200)


async def tools(run: StageRun) -> Result:
    """Run the calls of the policy's last reply (deduplicated, within the tool budget) and
    answer each through the profile's renderer; every string the model sees from a tool (web
    text, error messages that quote headers or URLs, its own repeated queries) goes through
    `untrusted()` there. The loop's graph goes back to policy."""
    state = _state(run)
    settings = run.settings
    profile = get_profile(settings.agent.react_profile)
    messages = list(state["messages"])
    calls, notes = _calls_of(messages[-1], profile, _assistant_turns(messages[:-1]))
    if profile.one_call_per_turn and len(calls) > 1:
        notes.append(
            f"you sent {len(calls)} tool calls in one turn; only the first ({calls[0].name}) "
            "was run. Call one tool per turn."
        )
        calls = calls[:1]
    toolkit = run.services.toolkit()
    store = run.services.store
    registry = ImageRegistry.from_ids(state.get("image_ids") or {})
    seen = {"::".join(k) for k in state.get("react_seen") or []}
    observations = list(state.get("observations") or [])
    used = state.get("tool_calls", 0)
    cap = tool_cap(run)
    allowed = [t["function"]["name"] for t in offered_tools(run, profile)]
    vision = _vision(run, profile)
    ctx = RenderContext(
        settings.agent.observation_chars,
        lambda hit: _local_path(hit, store),
        max_listed_images=profile.max_listed_images,
    )
    trailing: list[tuple[str, str]] = []  # (img_id, sha) shown after OpenAI tool answers
    for n, call in enumerate(calls):
        refused: str | None = None
        arguments: dict[str, Any] | str | None = call.arguments
        keys: list[str] = []
        repeats: list[str] = []
        if call.name not in allowed:
            refused = f"unknown tool {untrusted(call.name, 80)!r}; available: {', '.join(allowed)}"
        else:
            arguments, keys, repeats = _dedupe(call, seen)
            if arguments is None:
                refused = (
                    f"duplicate call refused: {call.name} already ran for "
                    f"{', '.join(repr(untrusted(r, 200)) for r in repeats)}; use that result or "
                    "try a different "
                    "query"
                )
            elif used >= cap:
                refused = f"the tool budget of {cap} calls is spent; answer now"
        if refused is not None or arguments is None:
            refused = refused or "refused"
            tool = call.name if call.name in TOOLS else "unknown"
            obs_list = [Observation.failure(tool, _label(call), refused)]
            _record(run, call, call.arguments, obs_list)
        else:
            used += 1
            seen.update(keys)
            obs_list = await _execute(run, toolkit, call, arguments, registry)
        observations += [o.model_dump(mode="json") for o in obs_list]
        ids = {i.sha256: i.img_id for o in obs_list for i in o.items if isinstance(i, ImageHit)}
        images: list[str] = []
        if refused is not None:
            text = profile.tool_error(untrusted(refused, 1000))
        elif all(not o.ok for o in obs_list):
            # Tool errors quote what servers sent (Content-Type, a redirect's Location...):
            # untrusted text like any page.
            errors = "; ".join(untrusted(o.error or "the tool failed", 500) for o in obs_list)
            text = profile.tool_error(errors)
        else:
            text, images = profile.render(call, obs_list, ctx)
        skipped = ", ".join(repr(untrusted(r, 200)) for r in repeats)
        extra = ([f"already run, skipped: {skipped}"] if repeats else []) + (
            notes if n == 0 else []
        )
        if extra:
            # Parser notes quote the model's own malformed text: rendered like tool data.
            text += "\n\n" + "\n".join(f"Note: {untrusted(x, 500)}" for x in extra)
        shown = images[: profile.max_attached_images] if vision else []
        if profile.result_role == "tool":
            messages.append(
                {"role": "tool", "tool_call_id": call.call_id, "content": profile.wrap(text)}
            )
            trailing += [(ids.get(sha, ""), sha) for sha in shown]
        else:
            messages.append({"role": "user", "content": _with_images(profile, text, shown)})
    if trailing:
        # OpenAI tool answers carry text only: the images follow as one user turn.
        parts: list[dict[str, Any]] = [
            {"type": "text", "text": "The images the tool calls above returned:"}
        ]
        for img_id, sha in trailing[: profile.max_attached_images]:
            parts.append({"type": "text", "text": f"{img_id}:"})
            parts.append({"type": "image_url", "image_url": {"url": f"artifact:{sha}"}})
        messages.append({"role": "user", "content": parts})
    before = [Observation.model_validate(o) for o in state.get("observations") or []]
    now = [Observation.model_validate(o) for o in observations[len(before) :]]
    return Result(
        {
            "messages": messages,
            "observations": observations,
            "image_ids": registry.ids(),
            "tool_calls": used,
            "react_seen": sorted(k.split("::", 1) for k in seen),
            # offline (or web search off) is said once per run, not once per tool call
            "notices": web_unavailable_notice(now, before),
        },
        f"{len(calls)} call(s), {used}/{cap} of the tool budget used",
    )


def _with_images(profile: Profile, text: str, shas: list[str]) -> str | list[dict[str, Any]]:
    content = profile.wrap(text)
    if not shas:
        return content
    images = [{"type": "image_url", "image_url": {"url": f"artifact:{sha}"}} for sha in shas]
    part = {"type": "text", "text": content}
    return [*images, part] if profile.images_first else [part, *images]


def _local_path(hit: ImageHit, store: ArtifactStore) -> str:
    """The run folder's copy of the image (graphs/run_folder.py writes refs/IMG_###.<ext>)."""
    try:
        suffix = store.path(hit.sha256).suffix
    except (ArtifactNotFound, ValueError):
        suffix = ".png"
    return f"refs/{hit.img_id}{suffix}"


async def _execute(
    run: StageRun,
    toolkit: Toolkit,
    call: ToolRequest,
    arguments: dict[str, Any] | str,
    registry: ImageRegistry,
) -> list[Observation]:
    """One call through `Toolkit.call` (which answers bad arguments with a failed observation)
    under the stage's own timeout; each observation is streamed and traced."""
    timeout = run.settings.tools.timeout_s + 5.0
    try:
        result = await asyncio.wait_for(
            toolkit.call(call.name, arguments, registry=registry), timeout=timeout
        )
    except TimeoutError:
        result = Observation.failure(call.name, _label(call), f"timed out after {timeout:.0f}s")
    obs_list = result if isinstance(result, list) else [result]
    _record(run, call, arguments, obs_list)
    return obs_list


def _record(
    run: StageRun, call: ToolRequest, arguments: dict[str, Any] | str, obs_list: list[Observation]
) -> None:
    for obs in obs_list:
        run.emit(
            {
                "tool": obs.tool,
                "query": obs.query,
                "ok": obs.ok,
                "items": len(obs.items),
                "error": obs.error,
                "cached": obs.cached,
            }
        )
        run.record_tool(
            {
                "tool": obs.tool,
                "query": obs.query,
                "call_id": call.call_id,
                "arguments": arguments,
                "observation": obs.model_dump(mode="json"),
            }
        )


# -- answer ---------------------------------------------------------------------------------------
def _fallback(update: dict[str, Any], why: str, *, prompt: str) -> Result:
    """No usable answer: the user's prompt as written, and a notice saying why."""
    grounded = GroundedPrompt(
        gen_prompt=prompt[:1500], requirements=fallback_requirements(prompt, GapReport())
    )
    return Result(
        {
            **update,
            "grounded": grounded.model_dump(mode="json"),
            "notices": [*update.get("notices", []), f"{why}; the prompt was used as written"],
        },
        "no usable answer: prompt used as is",
    )


def answer_fields(raw: dict[str, Any]) -> tuple[GroundedPrompt, list[Ref]]:
    """A policy's answer JSON as a GroundedPrompt (references not yet checked) and its
    references deduplicated and sorted by img_id, as the protocol orders them. Over-long text
    is cut and malformed facts or requirements are dropped, rather than losing the answer."""
    refs: dict[str, Ref] = {}
    for r in raw.get("reference_images") or []:
        img_id = r.get("img_id") if isinstance(r, dict) else r
        if not isinstance(img_id, str) or not img_id.strip():
            continue
        note = " ".join(str(r.get("note") or "").split()) if isinstance(r, dict) else ""
        refs.setdefault(img_id.strip(), Ref(img_id=img_id.strip(), note=note[:200]))
    ordered = [refs[k] for k in sorted(refs)]
    facts = _valid(Fact, raw.get("facts"))
    requirements = _valid(Requirement, raw.get("requirements"))
    grounded = GroundedPrompt(
        gen_prompt=" ".join(str(raw.get("gen_prompt") or "").split())[:1500],
        negative_prompt=str(raw.get("negative_prompt") or "")[:500],
        reference_images=ordered[:5],
        facts=facts[:8],
        requirements=requirements[:8],
    )
    return grounded, ordered


def _valid(model: type[M], items: Any) -> list[M]:
    out: list[M] = []
    for item in items if isinstance(items, list) else []:
        try:
            out.append(model.model_validate(item))
        except ValidationError:
            continue
    return out


async def keeps_ordinal_phrases(run: StageRun) -> tuple[int, str | None]:
    """How many references the generator receives in order and reads as "the first reference
    image", ... (an editing model; 0 for text-only and IP-Adapter models), from the generator's
    capabilities; and a notice when they could not be read."""
    try:
        caps = await capabilities(run.services.generator(), settings=run.settings.generator)
    except (GeneratorError, OSError, ValueError) as exc:
        return 0, (
            f"could not read the generator's capabilities ({exc}); ordinal reference phrases "
            "were rewritten into the references' notes"
        )
    return (caps.max_references or 5) if caps.keeps_ordinal_phrases else 0, None


def is_placeholder(text: str) -> bool:
    """A gen_prompt that is the template's `<...>` slot, not a description."""
    stripped = text.strip()
    return stripped.startswith("<") and stripped.endswith(">") and stripped.count("<") == 1


async def answer(run: StageRun) -> Result:
    """The policy's answer as a GroundedPrompt, its ordinal phrases resolved for the
    generator."""
    state = _state(run)
    profile = get_profile(run.settings.agent.react_profile)
    if state.get("react_stop"):
        return _fallback({}, str(state.get("react_stop")), prompt=state["prompt"])
    messages = state.get("messages") or []
    last = messages[-1] if messages else {}
    parsed = profile.parse(_text(last.get("content")), turn=0)
    prompt = state["prompt"]
    if parsed.answer is None:
        why = parsed.error or "no answer"
        return _fallback({}, f"the policy's answer was unusable ({why})", prompt=prompt)
    grounded, refs = answer_fields(parsed.answer)
    if not grounded.gen_prompt:
        return _fallback({}, "the policy's answer had an empty gen_prompt", prompt=prompt)
    if is_placeholder(grounded.gen_prompt):
        # Small models copy the answer template itself ("<the prompt for the image model>").
        return _fallback({}, "the policy's answer copied the template's placeholder", prompt=prompt)
    ids = state.get("image_ids") or {}
    grounded, notices = check_references(
        grounded.model_copy(update={"reference_images": refs}),
        ids,
        run.settings.agent.max_references,
    )
    kept = [r.img_id for r in grounded.reference_images]
    titles = {
        i["img_id"]: untrusted(i.get("title", ""), 120)
        for o in state.get("observations") or []
        for i in o.get("items", [])
        if i.get("kind") == "image"
    }
    readable = 0
    if refs:
        readable, why_not = await keeps_ordinal_phrases(run)
        notices += [why_not] if why_not else []
    keep = readable > 0
    # Phrases stay only for references the generator receives (the first `readable` kept).
    received = set(kept[:readable]) if keep else set(kept)
    text, mapping = resolve_ordinals(
        grounded.gen_prompt,
        [
            OrdinalRef(r.img_id, r.note, r.img_id in received, titles.get(r.img_id, ""))
            for r in refs
        ],
        keep_phrases=keep,
    )
    grounded = grounded.model_copy(update={"gen_prompt": text[:1500], "ordinals": mapping})
    if not grounded.requirements:
        grounded.requirements = fallback_requirements(prompt, GapReport())
    summary = (
        f"{len(grounded.reference_images)} references ({profile.name} profile"
        f"{', ordinals kept' if keep and mapping else ''}): {grounded.gen_prompt[:80]}"
    )
    return Result({"grounded": grounded.model_dump(mode="json"), "notices": notices}, summary)
