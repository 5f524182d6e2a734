"""LangGraph wiring: `build_graph(settings, checkpointer=None)` is the programmatic entry."""

from graphs.build import build_graph, open_checkpointer

__all__ = ["build_graph", "open_checkpointer"]
