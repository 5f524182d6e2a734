"""OpenAI function-calling schemas for the research tools, in Gen-Searcher's shape.

A policy trained on Gen-Searcher's tools (`search{queries, top_k}`, `image_search{query, top_k}`,
`browse{url, query}`) can drive Groundwork unchanged; `knowledge_base{query, top_k}` is the one
addition (the user's local corpus). `dispatch` runs a model's tool call against a `Toolkit`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.observations import ImageRegistry, Observation
    from tools.toolkit import Toolkit

SEARCH: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Web text search. Runs several queries at once; returns title, url and "
        "snippet for each hit.",
        "parameters": {
            "type": "object",
            "properties": {
                "queries": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": 8,
                    "description": "Search queries, run in parallel.",
                },
                "top_k": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 20,
                    "default": 5,
                    "description": "Results per query.",
                },
            },
            "required": ["queries"],
        },
    },
}

IMAGE_SEARCH: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "image_search",
        "description": "Web image search. Returns downloaded, verified images with IMG_### ids "
        "(stable for this run) that can be cited as reference images.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What the images should show."},
                "top_k": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 10,
                    "default": 4,
                    "description": "Images to return.",
                },
            },
            "required": ["query"],
        },
    },
}

BROWSE: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "browse",
        "description": "Open a web page and return the passages of its main text that are "
        "relevant to the query.",
        "parameters": {
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "http(s) URL of the page."},
                "query": {"type": "string", "description": "What to look for on the page."},
            },
            "required": ["url", "query"],
        },
    },
}

KNOWLEDGE_BASE: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "knowledge_base",
        "description": "Search the user's own local knowledge base (text passages and images); "
        "works offline.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
            },
            "required": ["query"],
        },
    },
}

TOOL_SCHEMAS: list[dict[str, Any]] = [SEARCH, IMAGE_SEARCH, BROWSE, KNOWLEDGE_BASE]
GEN_SEARCHER_SCHEMAS: list[dict[str, Any]] = [SEARCH, IMAGE_SEARCH, BROWSE]


def tool_schemas(*, include_knowledge_base: bool = True) -> list[dict[str, Any]]:
    return list(TOOL_SCHEMAS if include_knowledge_base else GEN_SEARCHER_SCHEMAS)


class ToolCallError(ValueError):
    """A model's tool call names an unknown tool or has malformed arguments."""


def _int(args: dict[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    try:
        return max(1, min(50, int(value)))
    except (TypeError, ValueError) as exc:
        raise ToolCallError(f"{key} must be an integer, got {value!r}") from exc


async def dispatch(
    toolkit: Toolkit, name: str, arguments: str | dict[str, Any], *, registry: ImageRegistry
) -> list[Observation]:
    """Run one tool call from a model (arguments as the JSON string the API returns)."""
    if isinstance(arguments, str):
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ToolCallError(f"arguments of {name} are not JSON: {exc}") from exc
    else:
        args = arguments
    if not isinstance(args, dict):
        raise ToolCallError(f"arguments of {name} must be an object")
    if name == "search":
        queries = args.get("queries", args.get("query"))
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise ToolCallError("search needs queries: [str]")
        return await toolkit.search(queries[:8], _int(args, "top_k"))
    if name == "image_search":
        return [
            await toolkit.image_search(
                str(args.get("query", "")), _int(args, "top_k"), registry=registry
            )
        ]
    if name == "browse":
        return [await toolkit.browse(str(args.get("url", "")), str(args.get("query", "")))]
    if name == "knowledge_base":
        return [
            await toolkit.knowledge_base(
                str(args.get("query", "")), _int(args, "top_k"), registry=registry
            )
        ]
    raise ToolCallError(
        f"unknown tool {name!r}; known: search, image_search, browse, knowledge_base"
    )
