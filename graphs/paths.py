"""Stage paths read from a compiled graph, so nothing outside the graph files keeps a copy of
the order of stages.

`route_through(graph, "intake", "analyze", "synthesize", "critique", "finish")` is the shortest
path of stages that visits those waypoints in order: a test (or a client) names the stages it
cares about and the graph fills in the rest, so a stage added on a path (a safety check before
generate) changes the expected list without an edit. Subgraph nodes (the react loop) appear by
their own names (`policy`, `tools`, `answer`), as their stage events do.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from core.errors import GroundworkError


class NoPath(GroundworkError):
    """The graph has no path through the given stages (a waypoint is unknown or unreachable)."""


def _local(name: str) -> str:
    return name.rsplit(":", 1)[-1]


def stage_edges(graph: Any) -> dict[str, set[str]]:
    """Stage -> the stages that can follow it (subgraphs expanded, start/end markers removed)."""
    drawn = graph.get_graph(xray=True)
    raw: dict[str, set[str]] = {}
    for edge in drawn.edges:
        raw.setdefault(edge.source, set()).add(edge.target)

    def resolve(target: str, seen: frozenset[str] = frozenset()) -> set[str]:
        """A subgraph's __start__ stands for the stages it leads to."""
        if _local(target) != "__start__" or target == "__start__":
            return {target}
        out: set[str] = set()
        for nxt in raw.get(target, ()):
            if nxt not in seen:
                out |= resolve(nxt, seen | {target})
        return out

    edges: dict[str, set[str]] = {}
    for source, targets in raw.items():
        if _local(source) == "__start__" and source != "__start__":
            continue
        for target in targets:
            for t in resolve(target):
                if t != "__end__":
                    edges.setdefault(_local(source), set()).add(_local(t))
    return edges


def _shortest(edges: dict[str, set[str]], a: str, b: str) -> list[str]:
    """The stages after `a` up to and including `b` (at least one step: a loop back to `a`
    counts)."""
    queue: deque[tuple[str, list[str]]] = deque((n, [n]) for n in sorted(edges.get(a, ())))
    seen: set[str] = set()
    while queue:
        here, path = queue.popleft()
        if here == b:
            return path
        if here in seen:
            continue
        seen.add(here)
        queue.extend((n, [*path, n]) for n in sorted(edges.get(here, ())))
    raise NoPath(f"no path from {a!r} to {b!r}; stages that follow {a!r}: {edges.get(a)}")


def route_through(graph: Any, *waypoints: str) -> list[str]:
    """The shortest run of stages through `waypoints`, in order, starting at the first."""
    if not waypoints:
        return []
    edges = stage_edges(graph)
    path = [waypoints[0]]
    for a, b in zip(waypoints, waypoints[1:], strict=False):
        path += _shortest(edges, a, b)
    return path


def is_path(graph: Any, stages: list[str]) -> bool:
    """True when each stage can follow the one before it in this graph."""
    edges = stage_edges(graph)
    return all(b in edges.get(a, ()) for a, b in zip(stages, stages[1:], strict=False))
