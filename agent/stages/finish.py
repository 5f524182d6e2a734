"""finish (shared by every policy): the turn's closing event; the runner writes the run folder."""

from __future__ import annotations

from agent.stage import Result, StageRun


async def finish(run: StageRun) -> Result:
    status = "failed" if run.state.get("error") else "done"
    return Result({}, status)
