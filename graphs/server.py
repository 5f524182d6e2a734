"""The graph `langgraph.json` exports (LangGraph Server / `langgraph dev` add persistence)."""

from graphs.build import build_graph

graph = build_graph()
