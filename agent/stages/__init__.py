"""One module per stage: its node function, its prompt and its output model side by side.

Policies (graphs/) wire these with `agent.stage.node(name, fn, services)`.
"""
