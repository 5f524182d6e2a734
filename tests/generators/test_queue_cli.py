"""`groundwork worker` never passes text from a job, a setting or an argument to the terminal
as escape sequences or Rich markup (issue 9)."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import typer
from typer.testing import CliRunner

from cli.worker import worker
from tests.support.worker_process import WorkerProcess

EVIL = "\x1b[2J\x1b]0;pwned\x07[bold red]boom[/]\x9b31m\u202e"
RAW = re.compile("[\x1b\x07\x9b\u202e]")


def app() -> typer.Typer:
    a = typer.Typer(add_completion=False)
    a.command()(worker)
    return a


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--backend", EVIL], {}),
        (["--log-level", EVIL], {}),
        (["--backend", "noop"], {"GROUNDWORK_QUEUE__CONCURRENCY": EVIL}),
        (["--backend", "noop", "--redis-url", f"redis{EVIL}://x"], {}),
    ],
)
def test_bad_input_is_one_inert_line(args: list[str], env: dict[str, str]) -> None:
    res = CliRunner().invoke(app(), args, env=env)
    assert res.exit_code == 2, res.output
    assert not RAW.search(res.output), repr(res.output)
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.redis
def test_worker_logs_are_inert(redis_url: str, tmp_path: Path) -> None:
    """Names from arguments and a job message full of escape sequences and markup: the log
    shows them as text (markup literally), with no raw control character."""
    prefix = f"cli{uuid.uuid4().hex[:6]}"
    w = WorkerProcess(
        name=f"evil{EVIL}",
        redis_url=redis_url,
        prefix=prefix,
        artifacts=tmp_path / "artifacts",
        logdir=tmp_path,
        backend="noop",
        extra=["--log-level", "INFO"],
    )
    try:
        w.wait_ready(60)
        r: Any = redis.Redis.from_url(redis_url, decode_responses=True)
        r.xadd(f"{prefix}:jobs", {"job_id": f"job{EVIL}", "key": "k", "request": EVIL})
        bad_model = {"prompt": f"p{EVIL}\nFAKE LOG LINE", "model": f"m{EVIL}", "steps": 1}
        r.xadd(
            f"{prefix}:jobs",
            {"job_id": "j2", "key": "k2", "request": json.dumps(bad_model)},
        )
        deadline = time.monotonic() + 30
        while r.xlen(f"{prefix}:dead") < 1 or r.hget(f"{prefix}:job:j2", "state") != "done":
            assert time.monotonic() < deadline, w.log()
            time.sleep(0.05)
    finally:
        w.stop()
    log = w.log()
    assert "dead-lettered" in log and "[bold red]boom[/]" in log
    assert not RAW.search(log), repr(log[-2000:])
    assert not any(line.startswith("FAKE LOG LINE") for line in log.splitlines())
