"""The one table of research tools. Each `ToolSpec` holds everything any part of Groundwork needs
to know about a tool: its name, its argument model (the schema a model is shown and the parser
of what it sends back), the runner that calls the `Toolkit`, how a call is deduplicated and
labelled, and which queries of a knowledge gap it runs in planned research.

Schema generation (`tool_specs`), argument parsing (`parse_arguments`), `Toolkit.call`, the
planned research stage and the react loop all iterate `TOOLS`; adding a tool is one entry here
(and its runner, here or as a Toolkit method).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from tools.observations import ImageRegistry, Observation
from tools.schemas import (
    BrowseArgs,
    ImageSearchArgs,
    KnowledgeBaseArgs,
    SearchArgs,
    ToolCallError,
    strip_titles,
)

Toolkit = Any
"""tools.toolkit.Toolkit: not imported, since the toolkit runs calls through this table."""
A = TypeVar("A", bound=BaseModel)
Result = Observation | list[Observation]


class GapQueries(Protocol):
    """What planned research knows about one knowledge gap (agent's `Gap` satisfies it)."""

    @property
    def span(self) -> str: ...
    @property
    def text_queries(self) -> list[str]: ...
    @property
    def image_queries(self) -> list[str]: ...


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class ToolSpec(Generic[A]):
    name: str
    args: type[A]
    """The argument model: the schema shown to a model and the parser of what it sends."""
    run: Callable[[Toolkit, A, ImageRegistry], Awaitable[Result]]
    """Runs one validated call; never raises for a tool failure (Observation(ok=False))."""
    dedupe_key: Callable[[A], list[str]]
    """One key per unit of work (a search has one per query): a unit already run is not run
    again in the same turn."""
    label: Callable[[A], str]
    """What the call is about, for logs, notices and refusals (raw: render it untrusted)."""
    description: str = ""
    """Shown to a model; empty: the argument model's docstring."""
    keep: Callable[[A, list[int]], A] | None = None
    """The call narrowed to the units at these indexes (search drops repeated queries); None:
    a call with any repeated unit is refused whole."""
    plan: Callable[[GapQueries], list[A]] | None = None
    """The calls planned research makes for one gap; None: not used by planned research."""
    requires_kb: bool = False
    """Offered only when a local knowledge base exists."""
    gen_searcher: bool = False
    """One of Gen-Searcher's tools (what a policy trained on it knows)."""
    answers_list: bool = False
    """`run` answers with a list of observations (search: one per query)."""

    def schema(self) -> dict[str, Any]:
        """This tool in OpenAI's `tools` format, generated from its argument model."""
        parameters = strip_titles(self.args.model_json_schema())
        parameters.pop("description", None)
        parameters.pop("additionalProperties", None)
        description = self.description or " ".join((self.args.__doc__ or "").split())
        return {
            "type": "function",
            "function": {"name": self.name, "description": description, "parameters": parameters},
        }


def given_top_k(args: BaseModel) -> int | None:
    """The model's top_k if it sent one; otherwise None, so the toolkit's settings decide."""
    value = getattr(args, "top_k", None) if "top_k" in args.model_fields_set else None
    return int(value) if isinstance(value, int) else None


async def _run_search(tk: Toolkit, a: SearchArgs, reg: ImageRegistry) -> Result:
    return await tk.search(a.queries, given_top_k(a))


async def _run_image_search(tk: Toolkit, a: ImageSearchArgs, reg: ImageRegistry) -> Result:
    return await tk.image_search(a.query, given_top_k(a), registry=reg)


async def _run_browse(tk: Toolkit, a: BrowseArgs, reg: ImageRegistry) -> Result:
    return await tk.browse(a.url, a.query)


async def _run_kb(tk: Toolkit, a: KnowledgeBaseArgs, reg: ImageRegistry) -> Result:
    return await tk.knowledge_base(a.query, given_top_k(a), registry=reg)


_SPECS: list[ToolSpec[Any]] = [
    ToolSpec(
        name="search",
        args=SearchArgs,
        run=_run_search,
        dedupe_key=lambda a: [f"search::{_norm(q)}" for q in a.queries],
        label=lambda a: " | ".join(a.queries),
        keep=lambda a, idx: a.model_copy(update={"queries": [a.queries[i] for i in idx]}),
        plan=lambda gap: [SearchArgs(queries=[q]) for q in gap.text_queries],
        gen_searcher=True,
        answers_list=True,
    ),
    ToolSpec(
        name="image_search",
        args=ImageSearchArgs,
        run=_run_image_search,
        dedupe_key=lambda a: [f"image_search::{_norm(a.query)}"],
        label=lambda a: a.query,
        plan=lambda gap: [ImageSearchArgs(query=q) for q in gap.image_queries],
        gen_searcher=True,
    ),
    ToolSpec(
        name="browse",
        args=BrowseArgs,
        run=_run_browse,
        dedupe_key=lambda a: [f"browse::{a.url.strip()}::{_norm(a.query)}"],
        label=lambda a: f"{a.url} ({a.query})",
        gen_searcher=True,
    ),
    ToolSpec(
        name="knowledge_base",
        args=KnowledgeBaseArgs,
        run=_run_kb,
        dedupe_key=lambda a: [f"knowledge_base::{_norm(a.query)}"],
        label=lambda a: a.query,
        plan=lambda gap: [KnowledgeBaseArgs(query=gap.span)] if gap.span.strip() else [],
        requires_kb=True,
    ),
]

TOOLS: dict[str, ToolSpec[Any]] = {spec.name: spec for spec in _SPECS}
"""Every tool, by name, in the order a model is shown them."""

ALL_TOOLS: tuple[str, ...] = tuple(TOOLS)
GEN_SEARCHER_TOOLS: tuple[str, ...] = tuple(n for n, s in TOOLS.items() if s.gen_searcher)
ARG_MODELS: dict[str, type[BaseModel]] = {n: s.args for n, s in TOOLS.items()}
"""A view of TOOLS: each tool's argument model."""


def register(spec: ToolSpec[Any]) -> ToolSpec[Any]:
    """Add a tool at run time (a plugin); the table above is the place for built-in ones."""
    TOOLS[spec.name] = spec
    return spec


def get_tool(name: object) -> ToolSpec[Any]:
    spec = TOOLS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ToolCallError(f"unknown tool {str(name)[:80]!r}; known: {', '.join(TOOLS)}")
    return spec


def tool_specs(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The named tools (in that order; all by default) in OpenAI's `tools` format.

    The default reads `TOOLS` now, not `ALL_TOOLS` (taken at import), so a tool added with
    `register` is offered too."""
    return [get_tool(n).schema() for n in (tuple(TOOLS) if names is None else names)]


def parse_arguments(name: str, arguments: str | dict[str, Any] | None) -> BaseModel:
    """Validate one tool call against its argument model; ToolCallError says what is wrong."""
    spec = get_tool(name)
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError) as exc:
            raise ToolCallError(f"arguments of {name} are not JSON: {exc}") from exc
    if not isinstance(arguments, dict):
        raise ToolCallError(
            f"arguments of {name} must be a JSON object, got {type(arguments).__name__}"
        )
    try:
        return spec.args.model_validate(arguments)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise ToolCallError(f"bad arguments for {name}: {problems}") from exc


# Kept for callers of the first API: the same schemas, generated.
TOOL_SCHEMAS: list[dict[str, Any]] = tool_specs(ALL_TOOLS)
GEN_SEARCHER_SCHEMAS: list[dict[str, Any]] = tool_specs(GEN_SEARCHER_TOOLS)
