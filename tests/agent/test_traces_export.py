"""Traces: both policies, run through the Runner, leave a complete trace.jsonl in their run
folders; `traces export` turns them into SFT data that re-validates (every tool call answered
under its id, the final answer a GroundedPrompt, images as files beside the JSONL)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from agent.contracts import GroundedPrompt
from agent.profiles import parse_text_protocol
from agent.services import Services
from agent.settings import Settings
from agent.sft import (
    ImageFiles,
    SkipRun,
    check_openai,
    check_sharegpt,
    export_runs,
    read_examples,
)
from agent.trace import read_trace
from cli.traces import traces_app
from graphs.runner import Runner, RunOutcome
from tests.agent.conftest import Recorder, make_settings, tool_call
from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import WebServer, png_bytes

PROMPT = "the Zephyr X1 drone over a lake"
GAP = {
    "kind": "entity",
    "span": "Zephyr X1 drone",
    "why": "new product",
    "text_queries": ["zephyr specs"],
    "image_queries": ["zephyr photo"],
    "needs_reference": True,
}


def _verdict(passed: bool) -> dict[str, Any]:
    check = {"requirement": "an orange drone", "passed": passed, "reason": "looks right"}
    return {"checks": [check], "score": 0.9 if passed else 0.2, "edit_instruction": ""}


async def _run(settings: Settings, policy: str, thread: str) -> RunOutcome:
    services = Services(settings)
    try:
        async with Runner(settings, services, checkpointer=InMemorySaver()) as runner:
            return await runner.run(PROMPT, thread_id=thread, policy=policy)  # type: ignore[arg-type]
    finally:
        await services.aclose()


@pytest.fixture
async def runs(
    tmp_path: Path, scripted_llm: ScriptedLLM, fake_web: WebServer, recording: Recorder
) -> dict[str, RunOutcome]:
    """A planned run that matches, an openai-profile react run (vision) that does not, and a
    gen-searcher react run, all in one runs folder."""
    base = make_settings(tmp_path, scripted_llm, None).merged(
        {"llm": {"critique_model": "scripted-vlm"}, "agent": {"max_rounds": 1}}
    )
    scripted_llm.add("GapReport", {"gaps": [GAP]})
    scripted_llm.add(
        "GroundedPrompt",
        {
            "gen_prompt": "an orange drone over a lake",
            "reference_images": [{"img_id": "IMG_001", "note": "the drone"}],
            "requirements": [{"text": "an orange drone", "kind": "entity"}],
        },
    )
    scripted_llm.add("Verdict", _verdict(True), _verdict(False), _verdict(True))
    planned = await _run(base, "planned", "planned-1")

    answer = {"gen_prompt": "an orange drone", "reference_images": [{"img_id": "IMG_002"}]}
    scripted_llm.add(
        "text",
        tool_call("search", queries=["zephyr specs"]),
        tool_call("image_search", query="zephyr photo"),
        f"<answer>{json.dumps(answer)}</answer>",
    )
    vision = base.merged({"llm": {"policy_vision": True}})
    react = await _run(vision, "react", "react-1")

    gs = base.merged({"agent": {"react_profile": "gen-searcher"}})
    scripted_llm.add(
        "text",
        '<think>x</think><tool_call>{"name": "image_search", "arguments": '
        '{"query": "zephyr photo"}}</tool_call>',
        "<think>y</think><tool_call>{'name': 'search', 'arguments': {'queries': }}</tool_call>",
        '<think>z</think><answer>{"gen_prompt": "the first reference image, orange", '
        '"reference_images": [{"img_id": "IMG_001", "note": "orange drone"}]}</answer>',
    )
    gen_searcher = await _run(gs, "react", "gs-1")
    return {"planned": planned, "react": react, "gen-searcher": gen_searcher}


def _trace(outcome: RunOutcome) -> list[dict[str, Any]]:
    assert outcome.status == "done", outcome.error
    assert outcome.run_dir is not None
    return read_trace(outcome.run_dir / "trace.jsonl")


@pytest.mark.slow
async def test_both_policies_leave_complete_traces(runs: dict[str, RunOutcome]) -> None:
    planned = _trace(runs["planned"])
    roles = [r["role"] for r in planned if r["kind"] == "llm"]
    assert roles == ["analyze", "synthesize", "critique"]
    tools = [r for r in planned if r["kind"] == "tool"]
    assert len(tools) == len(runs["planned"].output["observations"]) == 3
    assert {r["tool"] for r in tools} == {"search", "image_search", "browse"}

    react = _trace(runs["react"])
    llm = [r for r in react if r["kind"] == "llm"]
    assert [r["role"] for r in llm] == ["policy", "policy", "policy", "critique"]
    for record in llm:
        assert record["messages"] and record["answer"] and record["model"]
        assert record["prompt_tokens"] == 10 and record["latency_s"] >= 0
    # Images in policy records are artifact references, never base64 blobs.
    assert "base64" not in json.dumps([r["messages"] for r in llm[:3]])
    assert llm[0]["tools"] and llm[0]["native_tools"] is True
    tools = [r for r in react if r["kind"] == "tool"]
    assert [(r["tool"], r["call_id"]) for r in tools] == [
        ("search", llm[1]["messages"][2]["tool_calls"][0]["id"]),
        ("image_search", llm[2]["messages"][4]["tool_calls"][0]["id"]),
    ]
    assert all(r["thread_id"] == "react-1" and r["turn"] == 1 for r in react)

    # The dossier shows how the trained policy's ordinal phrase was resolved.
    gs = runs["gen-searcher"]
    assert _trace(gs)[0]["profile"] == "gen-searcher"
    assert gs.output["grounded"]["gen_prompt"] == "orange drone, orange"
    assert gs.run_dir is not None
    dossier = (gs.run_dir / "dossier.md").read_text()
    assert '- "the first reference image" -> `IMG_001`: orange drone' in dossier


def _own_check(example: dict[str, Any]) -> GroundedPrompt:
    """Independent of agent.sft's checker: ids match, answers follow, the answer parses."""
    messages = example["messages"]
    for i, m in enumerate(messages):
        for call in m.get("tool_calls") or []:
            answers = [
                x
                for x in messages[i + 1 :]
                if x["role"] == "tool" and x["tool_call_id"] == call["id"]
            ]
            assert len(answers) == 1, call
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
    assert messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls")
    parsed = parse_text_protocol(messages[-1]["content"], turn=0)
    assert parsed.answer is not None
    return GroundedPrompt.model_validate(parsed.answer)


@pytest.mark.slow
async def test_export_openai_and_sharegpt_revalidate(
    runs: dict[str, RunOutcome], tmp_path: Path
) -> None:
    runs_dir = tmp_path / "runs"
    out = tmp_path / "sft" / "openai.jsonl"
    report = export_runs(runs_dir, out, fmt="openai")
    assert report.written == 3 and report.by_policy == {"planned": 1, "react": 2}, report.skipped
    examples = list(read_examples(out))
    for example in examples:
        assert check_openai(example, out.parent) == []
        _own_check(example)
    planned, react, gs = _by_policy(examples)
    # planned: system, user, one wave (search + image_search), the browse wave, the answer
    roles = [m["role"] for m in planned["messages"]]
    assert roles == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    first_wave = {c["function"]["name"] for c in planned["messages"][2]["tool_calls"]}
    assert first_wave == {"search", "image_search"}
    browse = json.loads(planned["messages"][5]["tool_calls"][0]["function"]["arguments"])
    assert browse["url"].endswith("/z") and browse["query"] == "Zephyr X1 drone"
    assert _own_check(planned).gen_prompt == "an orange drone over a lake"
    # react (vision): the images the policy saw are data URIs (OpenAI's format) ...
    urls = _image_urls(react)
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
    # ... or http URLs of files written beside the JSONL, given a base URL
    hosted = tmp_path / "hosted" / "openai.jsonl"
    export_runs(runs_dir, hosted, fmt="openai", image_base_url="https://cdn.example/sft")
    hosted_react = _by_policy(list(read_examples(hosted)))[1]
    for u in _image_urls(hosted_react):
        assert u.startswith("https://cdn.example/sft/images/")
        assert (hosted.parent / u.removeprefix("https://cdn.example/sft/")).is_file()
    # arguments are JSON strings (the OpenAI spec), objects on request (Qwen/Llama templates)
    args = [
        c["function"]["arguments"] for m in planned["messages"] for c in m.get("tool_calls") or []
    ]
    assert args and all(isinstance(a, str) for a in args)
    as_dicts = tmp_path / "dicts" / "openai.jsonl"
    export_runs(runs_dir, as_dicts, fmt="openai", dict_arguments=True)
    dict_args = [
        c["function"]["arguments"]
        for e in read_examples(as_dicts)
        for m in e["messages"]
        for c in m.get("tool_calls") or []
    ]
    assert dict_args and all(isinstance(a, dict) for a in dict_args)
    # gen-searcher: text-protocol calls became OpenAI tool calls; the malformed turn is gone
    calls = [c["function"]["name"] for m in gs["messages"] for c in m.get("tool_calls") or []]
    assert calls == ["image_search"]
    assert not any("[Tool Error]" in str(m["content"]) for m in gs["messages"])

    share = tmp_path / "sft" / "sharegpt.jsonl"
    shared = export_runs(runs_dir, share, fmt="sharegpt")
    assert shared.written == 3
    # LLaMA-Factory's dataset_info.json entry beside the data
    info = json.loads((share.parent / "dataset_info.json").read_text())
    assert info["sharegpt"]["file_name"] == "sharegpt.jsonl"
    assert info["sharegpt"]["formatting"] == "sharegpt"
    assert info["sharegpt"]["columns"] == {"messages": "messages", "images": "images"}
    assert shared.dataset_info == share.parent / "dataset_info.json"
    for example in read_examples(share):
        assert check_sharegpt(example, share.parent) == []
    gs_share = next(e for e in read_examples(share) if e["messages"][1]["content"] == PROMPT)
    turn = gs_share["messages"][3]["content"]
    assert turn.startswith("<image>") and "<tool_response>\n--- image search result" in turn
    assert gs_share["messages"][2]["content"].endswith(
        '<tool_call>\n{"name": "image_search", "arguments": {"query": "zephyr photo"}}\n'
        "</tool_call>"
    )


def _image_urls(example: dict[str, Any]) -> list[str]:
    return [
        p["image_url"]["url"]
        for m in example["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image_url"
    ]


def _by_policy(examples: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    def kind(e: dict[str, Any]) -> str:
        system = e["messages"][0]["content"]
        if "<tools>" in system:
            return "gen-searcher"
        return "react" if any(isinstance(m["content"], list) for m in e["messages"]) else "planned"

    found = {kind(e): e for e in examples}
    return found["planned"], found["react"], found["gen-searcher"]


@pytest.mark.slow
async def test_only_matched_and_the_cli(
    runs: dict[str, RunOutcome], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROUNDWORK_ARTIFACTS__ROOT", str(tmp_path / "artifacts"))
    out = tmp_path / "matched.jsonl"
    result = CliRunner().invoke(
        traces_app,
        ["export", str(tmp_path / "runs"), "--out", str(out), "--only-matched", "-v"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 example(s) (1 planned, 1 react)" in result.output
    assert "the critique did not match" in result.output
    assert len(list(read_examples(out))) == 2

    bad = CliRunner().invoke(traces_app, ["export", str(tmp_path / "nope"), "--out", str(out)])
    assert bad.exit_code == 2 and "not a folder of run folders" in bad.output
    wrong = CliRunner().invoke(
        traces_app, ["export", str(tmp_path), "--out", str(out), "--format", "csv"]
    )
    assert wrong.exit_code == 2


def test_data_urls_become_files(tmp_path: Path) -> None:
    data = png_bytes((1, 2, 3))
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    files = ImageFiles(tmp_path / "images", None)
    path = files.path_for(url, tmp_path, {})
    assert path == f"images/{hashlib.sha256(data).hexdigest()}.png"
    assert (tmp_path / path).read_bytes() == data
    assert files.path_for(url, tmp_path, {}) == path and files.written == 1


# -- hostile run folders (issue 22.6): generated variants per class -----------------------------
def _run_folder(root: Path, name: str, trace: bytes | None = b"") -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"turn": 1, "stages": []}))
    if trace is not None:
        (run / "trace.jsonl").write_bytes(trace)
    return run


@pytest.mark.parametrize("depth", [2_000, 50_000, 400_000])
def test_deeply_nested_json_is_skipped_not_a_recursion_error(tmp_path: Path, depth: int) -> None:
    root = tmp_path / "runs"
    for i, opener in enumerate(("[", '{"a":')):
        line = (opener * depth).encode()
        _run_folder(root, f"deep{i}", line + b"\n")
        (root / f"deep{i}" / "run.json").write_bytes(b"[" * depth)
    report = export_runs(root, tmp_path / "out.jsonl")
    assert report.written == 0 and len(report.skipped) == 2
    assert all("nested too deeply" in why or "JSON" in why for _, why in report.skipped)


@pytest.mark.parametrize("target", ["/etc/passwd", "/dev/zero", "/proc/self/environ", "OUTSIDE"])
def test_symlinks_out_of_the_run_root_and_devices_are_never_read(
    tmp_path: Path, target: str
) -> None:
    root = tmp_path / "runs"
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    real = secret if target == "OUTSIDE" else Path(target)
    # the trace itself is a link, and a whole run folder is a link out of the root
    run = _run_folder(root, "linked-trace", trace=None)
    (run / "trace.jsonl").symlink_to(real)
    outside = _run_folder(tmp_path / "elsewhere", "run", b"")
    (root / "linked-run").symlink_to(outside)
    # a reference image linked out of the run folder
    refs = _run_folder(root, "linked-ref", trace=None)
    (refs / "refs").mkdir()
    (refs / "refs" / "IMG_001.png").symlink_to(real)
    files = ImageFiles(tmp_path / "images", None)
    with pytest.raises(SkipRun, match="outside the run folder|not a regular file"):
        files.path_for("artifact:" + "0" * 64, refs, {"IMG_001": "0" * 64})
    out = tmp_path / "out.jsonl"
    report = export_runs(root, out)
    assert report.written == 0
    names = {n for n, _ in report.skipped}
    assert "linked-run" not in names  # never even listed
    assert not (tmp_path / "images").exists() or not any((tmp_path / "images").iterdir())
    assert "TOP-SECRET" not in out.read_text()


def test_a_trace_over_the_cap_is_skipped_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.sft as sft

    monkeypatch.setattr(sft, "MAX_TRACE_BYTES", 1024)
    root = tmp_path / "runs"
    for size in (1025, 4096, 1 << 20):
        _run_folder(root, f"big{size}", b"x" * size)
    report = export_runs(root, tmp_path / "out.jsonl")
    assert report.written == 0
    assert all("cap" in why for _, why in report.skipped), report.skipped


def test_sharegpt_check_parses_only_the_models_own_tool_calls(tmp_path: Path) -> None:
    """The forced final message (a user turn) tells the model not to write `<tool_call>`: the
    check must not read our own instructions as a malformed call and reject the example,
    while a broken call in an assistant turn is still caught."""
    from agent.profiles import GEN_SEARCHER

    final = GEN_SEARCHER.forced_final
    assert "<tool_call>" in final
    example = {
        "messages": [
            {"role": "system", "content": "rules"},
            {"role": "user", "content": f"a lantern festival\n\n{final}"},
            {
                "role": "assistant",
                "content": '<think>a</think>\n<answer>{"gen_prompt": "lanterns", '
                '"reference_images": []}</answer>',
            },
        ]
    }
    assert check_sharegpt(example, tmp_path) == []
    broken = {
        "messages": [
            *example["messages"][:2],
            {"role": "assistant", "content": "<tool_call>{not json</tool_call>"},
            {"role": "user", "content": "<tool_response>x</tool_response>"},
            example["messages"][2],
        ]
    }
    assert any("does not parse" in p for p in check_sharegpt(broken, tmp_path))
