"""Two API replicas as separate processes on one PostgreSQL database and one Redis (issue 23).

50 runs are spread over both; one replica is killed with SIGKILL while its runs are going. The
other takes them over when their leases lapse: every run ends (done), none is lost, none is
driven to its end twice, and an SSE stream begun on the killed replica resumes on the other
with `Last-Event-ID`, with no gap and no duplicate. A cancel sent to one replica stops a run the
other drives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import TOKENS, auth, read_sse, wait_status
from tests.service.fakes import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUNS = 50


class Replica:
    def __init__(self, env: dict[str, str], work: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"{name}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.service.replica",
                "--port",
                str(self.port),
                "--drive-log",
                str(work / "drives.log"),
                "--delay",
                "0.3",
            ],
            env=env,
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"replica exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"replica not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_two_replicas_one_killed_mid_run_lose_nothing(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDWORK_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "GROUNDWORK_STORE__URL": pg_url,
            "GROUNDWORK_GENERATOR__WIDTH": "64",
            "GROUNDWORK_GENERATOR__HEIGHT": "64",
            "GROUNDWORK_TOOLS__TEXT_PROVIDER": "none",
            "GROUNDWORK_TOOLS__IMAGE_PROVIDER": "none",
            "GROUNDWORK_ARTIFACTS__ROOT": str(tmp_path / "artifacts"),
            "GROUNDWORK_RUNS_DIR": str(tmp_path / "runs"),
            "GROUNDWORK_CHECKPOINT_DB": str(tmp_path / "checkpoints.sqlite"),
            "GROUNDWORK_TRACES_DIR": str(tmp_path / "traces"),
            "GROUNDWORK_SERVICE__TOKENS": json.dumps(TOKENS),
            "GROUNDWORK_SERVICE__REDIS_URL": redis_url,
            "GROUNDWORK_SERVICE__KEY_PREFIX": f"gw-replicas-{os.getpid()}",
            "GROUNDWORK_SERVICE__MAX_CONCURRENT_RUNS": "200",
            "GROUNDWORK_SERVICE__MAX_RUNNING": "100",
            "GROUNDWORK_SERVICE__RATE_LIMIT_PER_MINUTE": "100000",
            "GROUNDWORK_SERVICE__LEASE_TTL_S": "2",
            "GROUNDWORK_SERVICE__SSE_POLL_S": "0.1",
            "GROUNDWORK_SERVICE__SHUTDOWN_GRACE_S": "0",
        }
    )
    a, b = Replica(env, tmp_path, "a"), Replica(env, tmp_path, "b")
    try:
        a.wait_healthy()
        b.wait_healthy()
        # a cancel sent to A stops a run B drives (a request B acts on at its heartbeat)
        held = httpx.post(b.url + "/v1/runs", json={"prompt": "hold here"}, headers=auth())
        held_id = held.json()["id"]
        with httpx.Client(base_url=a.url, headers=auth(), timeout=30) as c:
            wait_status(c, held_id, ("running",), 30)
            r = c.delete(f"/v1/runs/{held_id}")
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text

        runs: list[tuple[str, Replica]] = []
        for i in range(RUNS):
            replica = (a, b)[i % 2]
            r = httpx.post(replica.url + "/v1/runs", json={"prompt": f"run {i}"}, headers=auth())
            assert r.status_code == 202, r.text
            runs.append((r.json()["id"], replica))
        # a stream begun on A: the first events, then A dies mid-run
        followed = [run_id for run_id, replica in runs if replica is a][-1]  # the newest
        with (
            httpx.Client(base_url=a.url, headers=auth(), timeout=30) as c,
            c.stream("GET", f"/v1/runs/{followed}/events") as stream,
        ):
            first = read_sse(stream, stop=3)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(10)

        with httpx.Client(base_url=b.url, headers=auth(), timeout=30) as c:
            headers = {"Last-Event-ID": str(first[-1]["id"])}
            with c.stream("GET", f"/v1/runs/{followed}/events", headers=headers) as stream:
                rest = read_sse(stream)
            ended = {
                run_id: wait_status(c, run_id, ("done", "failed", "cancelled"), 90)
                for run_id, _ in runs
            }
            listed = {r["id"] for r in c.get("/v1/runs", params={"limit": 100}).json()["data"]}
    finally:
        a.stop()
        b.stop()

    assert listed >= {run_id for run_id, _ in runs}  # 0 lost
    statuses = Counter(run["status"] for run in ended.values())
    assert statuses == {"done": RUNS}, {k: v for k, v in ended.items() if v["status"] != "done"}
    drives: dict[str, Counter[str]] = defaultdict(Counter)
    for line in (tmp_path / "drives.log").read_text().splitlines():
        what, run_id, _pid = line.split()
        drives[run_id][what] += 1
    twice = {r: dict(drives[r]) for r, _ in runs if drives[r]["end"] != 1}
    assert not twice, (twice, [ended[r] for r in twice])  # 0 driven twice
    taken_over = [run_id for run_id, _ in runs if drives[run_id]["start"] > 1]
    assert taken_over, "no run was mid-run on the killed replica"

    assert drives[followed]["start"] == 2  # begun on A, finished on B
    events = first + rest
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))  # no gap, no duplicate
    assert events[-1]["data"]["status"] == "done"
    statuses_seen = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses_seen == ["queued", "running", "running", "done"]  # driven by A, then B
