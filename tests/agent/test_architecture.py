"""Issue 24's rooms: stages hand each other contracts (agent/contracts.py), never import each
other, and never name their successors; routing lives beside the edges in graphs/; one tool
registry (tools/registry.py) drives schemas, parsing, the toolkit and both policies; run folder
names never leave runs/."""

from __future__ import annotations

import ast
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.contracts import Gap, GapReport, fallback_requirements
from graphs.paths import NoPath, is_path, route_through
from graphs.run_folder import make_run_dir
from tests.conftest import REPO
from tests.support.stage_paths import policy_graph
from tools.observations import ImageRegistry, Observation
from tools.registry import TOOLS, ToolSpec, parse_arguments, register, tool_specs

STAGES = REPO / "agent" / "stages"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module:
            out.add(n.module)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
    return out


@pytest.mark.parametrize("path", sorted(STAGES.glob("*.py")), ids=lambda p: p.name)
def test_a_stage_imports_contracts_never_another_stage(path: Path) -> None:
    others = {m for m in _imports(path) if m.startswith("agent.stages")}
    assert others == set(), f"{path.name} imports {others}; move shared models to contracts"


def test_no_module_outside_graphs_names_a_successor() -> None:
    """No `goto=` and no Command(...) in agent/: stages write data, graphs/ routes on it."""
    for path in sorted((REPO / "agent").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for n in ast.walk(tree):
            if isinstance(n, ast.keyword):
                assert n.arg != "goto", f"{path}:{n.value.lineno} names a successor"
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                assert n.func.id != "Command", f"{path}:{n.lineno} returns a Command"
        assert "langgraph.types" not in _imports(path) or path.name in {"clarify.py"}, path


def test_fallback_requirements_list_the_gaps_not_the_whole_prompt() -> None:
    prompt = "the Zephyr X1 drone over Lake Bled at dawn"
    gaps = GapReport(
        gaps=[Gap(kind="entity", span="Zephyr X1"), Gap(kind="entity", span="zephyr x1 ")]
    )
    assert [r.text for r in fallback_requirements(prompt, gaps)] == ["Zephyr X1"]
    assert [r.text for r in fallback_requirements(prompt, GapReport())] == [prompt]


# -- stage paths come from the graph ------------------------------------------------------------
def test_paths_are_read_from_the_graphs() -> None:
    planned, react = policy_graph("planned"), policy_graph("react")
    nogaps = route_through(planned, "intake", "analyze", "finish")
    assert nogaps[:2] == ["intake", "analyze"] and nogaps[-1] == "finish"
    assert "research" not in nogaps and "generate" in nogaps and is_path(planned, nogaps)
    loop = route_through(react, "intake", "policy", "tools", "policy", "answer", "finish")
    assert loop[:5] == ["intake", "policy", "tools", "policy", "answer"]
    assert is_path(react, loop) and not is_path(react, ["intake", "tools"])
    with pytest.raises(NoPath):
        route_through(planned, "finish", "analyze")


# -- the tool registry ------------------------------------------------------------------------
class EchoArgs(BaseModel):
    """Echo the text back (a test tool)."""

    text: str


async def _echo(toolkit: Any, args: EchoArgs, registry: ImageRegistry) -> Observation:
    return Observation(tool="echo", query=args.text, ok=True)


@pytest.fixture
def echo_tool() -> Any:
    spec: ToolSpec[EchoArgs] = ToolSpec(
        name="echo",
        args=EchoArgs,
        run=_echo,
        dedupe_key=lambda a: [f"echo::{a.text}"],
        label=lambda a: a.text,
    )
    register(spec)
    yield spec
    del TOOLS["echo"]


async def test_one_registry_entry_is_a_schema_a_parser_and_a_toolkit_call(
    echo_tool: ToolSpec[EchoArgs], tmp_path: Path
) -> None:
    from core.artifacts import ArtifactStore
    from tools.settings import ToolSettings
    from tools.toolkit import Toolkit

    (schema,) = tool_specs(["echo"])
    assert schema["function"]["description"] == "Echo the text back (a test tool)."
    assert schema["function"]["parameters"]["required"] == ["text"]
    assert isinstance(parse_arguments("echo", '{"text": "hi"}'), EchoArgs)
    toolkit = Toolkit(ToolSettings(cache_enabled=False), ArtifactStore(tmp_path), cache=None)
    try:
        obs = await toolkit.call("echo", {"text": "hi"}, registry=ImageRegistry())
        bad = await toolkit.call("echo", {"txt": "hi"}, registry=ImageRegistry())
        unknown = await toolkit.call("no_such_tool", {}, registry=ImageRegistry())
    finally:
        await toolkit.aclose()
    assert isinstance(obs, Observation) and obs.ok and obs.query == "hi"
    assert isinstance(bad, Observation) and not bad.ok and "text" in str(bad.error)
    assert isinstance(unknown, Observation) and unknown.tool == "unknown"
    assert "echo" in str(unknown.error)


def test_every_tool_has_a_complete_spec() -> None:
    for name, spec in TOOLS.items():
        assert spec.name == name and spec.schema()["function"]["name"] == name
        assert spec.schema()["function"]["description"]


# -- run folders ------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    thread=st.text(
        alphabet=st.sampled_from(list("/\\.:~ -_\x00") + list(string.ascii_letters)),
        max_size=40,
    )
    | st.sampled_from(["/../../.", "..", "../..", "/", "C:\\x", "~root", ".\\..\\..\\"]),
    prompt=st.text(max_size=60),
)
def test_a_hostile_thread_id_never_makes_a_folder_outside_runs(
    tmp_path_factory: pytest.TempPathFactory, thread: str, prompt: str
) -> None:
    runs = tmp_path_factory.mktemp("runs")
    made = make_run_dir(runs, prompt, thread, 1)
    assert made.resolve().parent == runs.resolve()
    assert list(runs.iterdir()) == [made]


# -- the dossier ------------------------------------------------------------------------------
def test_the_dossier_is_one_function_per_section_in_order() -> None:
    from graphs.dossier import SECTIONS, render_dossier

    record: dict[str, Any] = {
        "thread_id": "t",
        "request": "a drone",
        "status": "done",
        "image": "image.png",
        "observations": None,
        "notices": ["offline"],
        "grounded": {"gen_prompt": "an orange drone", "requirements": [{"text": "drone"}]},
        "rounds": [{"round": 1, "action": "finish", "image": {}, "verdict": None}],
        "stages": [{"stage": "intake", "turn": 1, "elapsed_s": 0.1, "summary": "a | b"}],
    }
    text = render_dossier(record)
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == [
        "## Knowledge gaps",
        "## Research",
        "## Sources",
        "## Reference images",
        "## Grounded prompt",
        "## Critique rounds",
        "## Notices",
        "## Timings",
    ]
    assert len(SECTIONS) == len(heads) + 1  # the header has no "##"
    assert "- [entity] drone" in text and "a \\| b" in text
    for section in SECTIONS:
        source = ast.parse(Path(section.__code__.co_filename).read_text())
        fn = next(
            n
            for n in ast.walk(source)
            if isinstance(n, ast.FunctionDef) and n.name == section.__name__
        )
        assert (fn.end_lineno or 0) - fn.lineno < 40, f"{fn.name} is too long"
