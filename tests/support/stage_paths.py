"""Expected stage lists derived from the policy graphs (graphs/paths.py), so a test names the
stages it is about and never keeps its own copy of the graph's order: a stage added on a path
(a safety check before generate) needs no test edit."""

from __future__ import annotations

import functools
import tempfile
from typing import Any

from agent.services import Services
from agent.settings import Settings
from graphs import build_graph
from graphs.paths import route_through


@functools.cache
def policy_graph(policy: str) -> Any:
    """The compiled graph of a policy (nothing is loaded or started to build it)."""
    root = tempfile.mkdtemp(prefix="gw-paths-")
    settings = Settings.model_validate(
        {"artifacts": {"root": root}, "runs_dir": root, "traces_dir": root}
    )
    return build_graph(settings, policy=policy, services=Services(settings))  # type: ignore[arg-type]


def expected_stages(policy: str, *waypoints: str) -> list[str]:
    """The shortest run of stages through `waypoints` in the policy's graph."""
    return route_through(policy_graph(policy), *waypoints)
