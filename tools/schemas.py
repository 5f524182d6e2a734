"""The research tools' arguments as typed models: one source for the schemas a model is shown
and for the parsing of what it sends back.

Names and shapes follow Gen-Searcher's tools (`search{queries, top_k}`,
`image_search{query, top_k}`, `browse{url, query}`), so a policy trained on them drives
Groundwork unchanged; `knowledge_base{query, top_k}` is the one addition (the user's local
corpus). tools/registry.py pairs each model with its tool (`TOOLS`) and generates the OpenAI
`tools` entries (`tool_specs`) and the parser of a model's call (`parse_arguments`) from them.

Parsing forgives what small models commonly get wrong without changing the meaning: a JSON
string instead of an object, a bare string for `queries`, `query` for `queries`, more than 8
queries (the first 8 run) and a `top_k` outside its range (clamped into it). Anything else
wrong, an empty string included, is a `ToolCallError` naming the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import GroundworkError


class ToolCallError(GroundworkError, ValueError):
    """A model's tool call names an unknown tool or has malformed arguments."""


class _Args(BaseModel):
    """Unknown keys are ignored (models add chatter such as "reason"); known ones validate."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @model_validator(mode="after")
    def _no_blank_strings(self) -> _Args:
        # Checked here, not with min_length: the schema stays Gen-Searcher's exactly, and
        # llama.cpp's grammar converter chokes on string-length keywords.
        for name, value in self:
            if isinstance(value, str) and not value:
                raise ValueError(f"{name} is empty")
        return self

    @model_validator(mode="before")
    @classmethod
    def _clamp_top_k(cls, data: Any) -> Any:
        """A count past the range means "many" or "few", not a broken call: clamp it."""
        field = cls.model_fields.get("top_k")
        if not isinstance(data, dict) or field is None or "top_k" not in data:
            return data
        value = data["top_k"]
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            lo, hi = _bounds(cls, "top_k")
            data = {**data, "top_k": max(lo, min(hi, value))}
        elif value is None:
            data = {k: v for k, v in data.items() if k != "top_k"}
        return data


def _bounds(model: type[BaseModel], name: str) -> tuple[int, int]:
    schema = model.model_json_schema()["properties"][name]
    return int(schema["minimum"]), int(schema["maximum"])


class SearchArgs(_Args):
    """Web text search. Runs several queries at once; returns title, url and snippet for each
    hit."""

    queries: list[str] = Field(
        min_length=1, max_length=8, description="Search queries, run in parallel."
    )
    top_k: int = Field(default=5, ge=1, le=20, description="Results per query.")

    @model_validator(mode="before")
    @classmethod
    def _lenient_queries(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "queries" not in data and "query" in data:
            data = {**data, "queries": data["query"]}
        queries = data.get("queries")
        if isinstance(queries, str):
            data = {**data, "queries": [queries]}
        elif isinstance(queries, list) and len(queries) > 8:
            data = {**data, "queries": queries[:8]}  # like top_k: "many" is clamped, not refused
        return data

    @model_validator(mode="after")
    def _no_blank_queries(self) -> SearchArgs:
        if not any(q.strip() for q in self.queries):
            raise ValueError("queries are all empty")
        return self


class ImageSearchArgs(_Args):
    """Web image search. Returns downloaded, verified images with IMG_### ids (stable for this
    run) that can be cited as reference images."""

    query: str = Field(description="What the images should show.")
    top_k: int = Field(default=4, ge=1, le=10, description="Images to return.")


class BrowseArgs(_Args):
    """Open a web page and return the passages of its main text that are relevant to the
    query."""

    url: str = Field(description="http(s) URL of the page.")
    query: str = Field(description="What to look for on the page.")


class KnowledgeBaseArgs(_Args):
    """Search the user's own local knowledge base (text passages and images); works
    offline."""

    query: str = Field(description="What to look for in the local corpus.")
    top_k: int = Field(default=5, ge=1, le=20, description="Results to return.")


def strip_titles(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic titles every model and field; OpenAI tool schemas carry descriptions only."""
    out = {k: v for k, v in schema.items() if k != "title"}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: strip_titles(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = strip_titles(out["items"])
    return out
