"""The graph `langgraph.json` exports (LangGraph Server / `langgraph dev` add persistence). It
writes each turn's run folder itself, as the Runner does for the CLI and the service."""

from graphs.build import build_graph

graph = build_graph(run_folders=True)
