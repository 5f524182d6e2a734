"""The service with the real Runner: the tiny random-init diffusers pipeline, the scripted
OpenAI-compatible LLM on loopback, SQLite checkpoints. The official `openai` client, SSE in
stage order across a reconnect, and a server killed with SIGKILL mid-run that resumes it."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from agent.settings import Settings
from tests.service.conftest import ALICE, TOKENS, auth, read_sse, wait_status
from tests.service.fakes import LiveServer, free_port
from tests.support.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red apple on a table"
STAGES = ["intake", "analyze", "synthesize", "generate", "critique", "finish"]
NO_GAPS: dict[str, list[object]] = {"gaps": []}

StartServer = Callable[..., LiveServer]


@pytest.fixture
def real_settings(
    gw_settings: Settings, tiny_pipeline: Path, scripted_llm: ScriptedLLM
) -> Settings:
    return gw_settings.merged(
        {
            "llm": {"base_url": scripted_llm.base_url, "model": "scripted-llm"},
            "generator": {"model": str(tiny_pipeline)},
        }
    )


def test_official_openai_client_generates_an_image(
    start_server: StartServer, real_settings: Settings, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.add("GapReport", NO_GAPS, NO_GAPS)
    server = start_server(settings=real_settings, real=True)
    client = OpenAI(base_url=server.url + "/v1", api_key=ALICE, max_retries=0, timeout=120)

    result = client.images.generate(
        model="dall-e-2", prompt=PROMPT, n=1, size="64x64", response_format="b64_json"
    )
    data = result.data or []
    assert len(data) == 1
    image = Image.open(io.BytesIO(base64.b64decode(data[0].b64_json or "")))
    assert image.format == "PNG" and image.size == (64, 64)
    assert data[0].revised_prompt == PROMPT  # no gaps: the prompt is its own grounding
    extra = result.model_extra or {}
    assert "Dossier" in extra["dossier"] or PROMPT in extra["dossier"]
    run = extra["groundwork"]["runs"][0]
    assert [s["stage"] for s in run["stages"]] == STAGES and run["status"] == "done"

    by_url = client.images.generate(prompt=PROMPT, size="64x64")  # url is the default
    url = (by_url.data or [])[0].url or ""
    fetched = httpx.get(url)  # a signed URL works without the token, like OpenAI's
    assert fetched.status_code == 200
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)


def test_sse_stages_arrive_in_order_and_a_reconnect_misses_none(
    start_server: StartServer, real_settings: Settings, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.add("GapReport", NO_GAPS)
    hold = scripted_llm.block("GapReport")  # keep the run going while we connect
    server = start_server(settings=real_settings, real=True)
    with httpx.Client(base_url=server.url, headers=auth(), timeout=60) as c:
        run_id = c.post("/v1/runs", json={"prompt": PROMPT}).json()["id"]
        with c.stream("GET", f"/v1/runs/{run_id}/events") as r:
            first = read_sse(r, stop=3)  # queued, running, stage intake: then drop
        hold.set()
        with c.stream(
            "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(first[-1]["id"])}
        ) as r:
            rest = read_sse(r)
    events = first + rest
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["stage"] for e in events if e["event"] == "stage"] == STAGES
    assert any(e["event"] == "progress" for e in events)  # diffusers steps
    assert events[-1]["data"]["status"] == "done"


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.serve", "--port", str(port)],
        env=env,
        cwd=log.parent,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not healthy:\n{log.read_text()[-3000:]}")


def test_sigkill_mid_run_then_restart_resumes_the_run(
    tmp_path: Path, tiny_pipeline: Path, scripted_llm: ScriptedLLM, redis_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDWORK_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
            "GROUNDWORK_LLM__MODEL": "scripted-llm",
            "GROUNDWORK_GENERATOR__MODEL": str(tiny_pipeline),
            "GROUNDWORK_GENERATOR__WIDTH": "64",
            "GROUNDWORK_GENERATOR__HEIGHT": "64",
            "GROUNDWORK_GENERATOR__STEPS": "2",
            "GROUNDWORK_TOOLS__TEXT_PROVIDER": "none",
            "GROUNDWORK_TOOLS__IMAGE_PROVIDER": "none",
            "GROUNDWORK_ARTIFACTS__ROOT": str(tmp_path / "artifacts"),
            "GROUNDWORK_RUNS_DIR": str(tmp_path / "runs"),
            "GROUNDWORK_CHECKPOINT_DB": str(tmp_path / "checkpoints.sqlite"),
            "GROUNDWORK_TRACES_DIR": str(tmp_path / "traces"),
            "GROUNDWORK_RETRIEVAL__KB_DIR": str(tmp_path / "kb"),
            "GROUNDWORK_SERVICE__TOKENS": json.dumps(TOKENS),
            "GROUNDWORK_SERVICE__DB": str(tmp_path / "service.sqlite"),
            "GROUNDWORK_SERVICE__REDIS_URL": redis_url,
            "GROUNDWORK_SERVICE__KEY_PREFIX": f"gw-kill-{os.getpid()}",
        }
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    scripted_llm.add("GapReport", NO_GAPS, NO_GAPS)  # one for the killed call, one after
    hold = scripted_llm.block("GapReport")
    proc = _serve(env, port, log)
    try:
        _wait_healthy(url, proc, log)
        r = httpx.post(url + "/v1/runs", json={"prompt": PROMPT}, headers=auth())
        assert r.status_code == 202
        run_id = r.json()["id"]
        assert scripted_llm.arrived["GapReport"].wait(60), log.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: the analyze stage is waiting on its LLM
        proc.wait(10)

        proc = _serve(env, port, log)
        _wait_healthy(url, proc, log)
        hold.set()
        with httpx.Client(base_url=url, headers=auth(), timeout=30) as c:
            run = wait_status(c, run_id, ("done", "failed"), timeout=120)
            assert run["status"] == "done", run["error"]
            with c.stream("GET", f"/v1/runs/{run_id}/events") as stream:
                events = read_sse(stream)
        # resumed from the checkpoint: intake ran once, before the kill
        assert [s["stage"] for s in run["stages"]] == STAGES
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert any(e["event"] == "notice" and "resumed" in e["data"]["text"] for e in events)
        statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
        assert statuses == ["queued", "running", "running", "done"]
        assert len(scripted_llm.calls("GapReport")) == 2
        assert f'"run_id": "{run_id}"' in log.read_text()  # JSON logs name the run
        assert ALICE not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_cancelled_run_continues_with_a_message_or_resumes(
    start_server: StartServer, real_settings: Settings, scripted_llm: ScriptedLLM
) -> None:
    """Issue 21.9: a cancelled turn leaves unfinished work on the thread; a message starts the
    next turn (it used to be refused with "run it without a prompt"), and /resume finishes the
    cancelled turn from its checkpoint instead."""
    scripted_llm.add("GapReport", NO_GAPS, NO_GAPS, NO_GAPS, NO_GAPS)
    hold = scripted_llm.block("GapReport")
    server = start_server(settings=real_settings, real=True)
    with httpx.Client(base_url=server.url, headers=auth(), timeout=60) as c:
        continued = c.post("/v1/runs", json={"prompt": PROMPT}).json()["id"]
        assert scripted_llm.arrived["GapReport"].wait(60)
        assert c.delete(f"/v1/runs/{continued}").json()["status"] == "cancelled"
        scripted_llm.arrived["GapReport"].clear()
        resumed = c.post("/v1/runs", json={"prompt": "a blue pear"}).json()["id"]
        assert scripted_llm.arrived["GapReport"].wait(60)
        assert c.delete(f"/v1/runs/{resumed}").json()["status"] == "cancelled"
        hold.set()

        r = c.post(f"/v1/runs/{continued}/messages", json={"message": "a green pear"})
        assert r.status_code == 202, r.text
        run = wait_status(c, continued, ("done", "failed"), timeout=120)
        assert run["status"] == "done", run["error"]
        assert run["turn"] == 2 and run["request"] == "a green pear" and run["image"]

        r = c.post(f"/v1/runs/{resumed}/resume")
        assert r.status_code == 202, r.text
        run = wait_status(c, resumed, ("done", "failed"), timeout=120)
        assert run["status"] == "done", run["error"]
        assert run["turn"] == 1 and run["request"] == "a blue pear" and run["image"]
        stages = [s["stage"] for s in run["stages"]]
        assert stages.count("intake") == 1  # finished stages were not run again
        assert c.post(f"/v1/runs/{resumed}/resume").status_code == 409  # done: nothing to resume
        with c.stream("GET", f"/v1/runs/{resumed}/events") as stream:
            events = read_sse(stream)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "cancelled", "queued", "running", "done"]


def test_official_openai_client_edits_an_image(
    start_server: StartServer,
    real_settings: Settings,
    scripted_llm: ScriptedLLM,
    tmp_path: Path,
) -> None:
    """`client.images.edit(image=..., prompt=...)`: the upload is edited (img2img of that
    image, as a chat refine), answered in the Images shape with the run behind it."""
    server = start_server(settings=real_settings, real=True)
    client = OpenAI(base_url=server.url + "/v1", api_key=ALICE, max_retries=0, timeout=120)
    source = tmp_path / "source.png"
    Image.new("RGB", (96, 64), (200, 30, 30)).save(source)
    with source.open("rb") as f:
        result = client.images.edit(
            image=f, prompt="make it night", response_format="b64_json", model="dall-e-2"
        )
    data = result.data or []
    assert len(data) == 1
    edited = Image.open(io.BytesIO(base64.b64decode(data[0].b64_json or "")))
    assert edited.format == "PNG" and edited.size == (96, 64)  # the upload's size
    run = (result.model_extra or {})["groundwork"]["runs"][0]
    assert run["status"] == "done" and run["kind"] == "image"
    stages = [s["stage"] for s in run["stages"]]
    assert stages[0] == "refine" and "generate" in stages  # a refine of the upload
    assert "analyze" not in stages and "intake" not in stages

    # the OpenAI error shape for what it refuses, raised as the client's own exception types
    import openai

    with source.open("rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=f, prompt="x", n=50)
    assert caught.value.body and caught.value.param == "n"
    with pytest.raises(openai.BadRequestError):
        client.images.edit(image=("x.png", b"not an image", "image/png"), prompt="make it night")
