"""The HTTP API on a real loopback server with the fake runner: runs, SSE replay, auth,
isolation between tokens, limits, signed artifact URLs, OpenAI-shaped errors, and logs."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from service.logs import JsonFormatter
from tests.service.conftest import ALICE, BOB, auth, read_sse, wait_status
from tests.service.fakes import STAGES, FakeFactory, LiveServer

StartServer = Callable[..., LiveServer]


@pytest.fixture
def factory() -> FakeFactory:
    return FakeFactory()


@pytest.fixture
def server(start_server: StartServer, factory: FakeFactory) -> LiveServer:
    return start_server(factory)


@pytest.fixture
def alice(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=auth(ALICE), timeout=30) as c:
        yield c


@pytest.fixture
def bob(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=auth(BOB), timeout=30) as c:
        yield c


def start_run(client: httpx.Client, prompt: str = "a red apple on a table") -> str:
    r = client.post("/v1/runs", json={"prompt": prompt})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["events_url"].endswith(
        f"/v1/runs/{body['id']}/events"
    )
    return str(body["id"])


# -- runs and events -------------------------------------------------------------------------
def test_run_result_has_image_references_and_dossier(alice: httpx.Client) -> None:
    run_id = start_run(alice, "a Zephyr X1 drone")
    run = wait_status(alice, run_id, ("done",))
    assert [s["stage"] for s in run["stages"]] == list(STAGES)
    assert run["revised_prompt"] == "grounded: a Zephyr X1 drone"
    assert run["references"][0]["img_id"] == "IMG_001" and run["references"][0]["used"]
    assert "# Dossier" in run["dossier"]
    image = httpx.get(alice.base_url.join(run["image"]["url"]))  # signed: no token needed
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (8, 8)


def test_sse_replays_in_order_and_resumes_after_last_event_id(alice: httpx.Client) -> None:
    run_id = start_run(alice)
    with alice.stream("GET", f"/v1/runs/{run_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        first = read_sse(r, stop=4)  # the client drops the connection after 4 events
    ids = [e["id"] for e in first]
    assert ids == [1, 2, 3, 4]
    headers = {"Last-Event-ID": str(ids[-1])}
    with alice.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as r:
        rest = read_sse(r)
    events = first + rest
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))  # none missed or twice
    assert events[0]["data"]["status"] == "queued" and events[1]["data"]["status"] == "running"
    stages = [e["data"]["stage"] for e in events if e["event"] == "stage"]
    assert stages == list(STAGES)
    assert [e["event"] for e in events].count("progress") == 2
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "done"
    # a full replay is identical; after the last event a finished run answers 204
    with alice.stream("GET", f"/v1/runs/{run_id}/events") as r:
        assert read_sse(r) == events
    assert (
        alice.get(f"/v1/runs/{run_id}/events", params={"after": events[-1]["id"]}).status_code
        == 204
    )
    assert alice.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "x"}).status_code == 400


def test_message_continues_the_thread_with_higher_event_ids(
    alice: httpx.Client, factory: FakeFactory
) -> None:
    run_id = start_run(alice)
    wait_status(alice, run_id, ("done",))
    last = alice.get(f"/v1/runs/{run_id}").json()
    with alice.stream("GET", f"/v1/runs/{run_id}/events") as r:
        turn1 = read_sse(r)
    r = alice.post(f"/v1/runs/{run_id}/messages", json={"message": "make it night"})
    assert r.status_code == 202 and r.json()["turn"] == 2
    run = wait_status(alice, run_id, ("done",))
    assert run["turn"] == 2 and run["request"] == "make it night"
    assert run["image"]["sha256"] != last["image"]["sha256"]
    with alice.stream("GET", f"/v1/runs/{run_id}/events", params={"after": turn1[-1]["id"]}) as r:
        turn2 = read_sse(r)
    assert turn2[0]["id"] == turn1[-1]["id"] + 1 and turn2[0]["data"] == {
        "status": "queued",
        "turn": 2,
    }
    assert factory.runner is not None
    assert [c["request"] for c in factory.runner.calls] == [
        "a red apple on a table",
        "make it night",
    ]
    assert {c["thread_id"] for c in factory.runner.calls} == {run_id}


def test_cancel_stops_a_running_run_and_a_message_to_a_busy_run_conflicts(
    alice: httpx.Client, factory: FakeFactory
) -> None:
    run_id = start_run(alice, "hold this one")
    wait_status(alice, run_id, ("running",))
    busy = alice.post(f"/v1/runs/{run_id}/messages", json={"message": "more"})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "run_active"
    r = alice.delete(f"/v1/runs/{run_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert alice.delete(f"/v1/runs/{run_id}").status_code == 409
    with alice.stream("GET", f"/v1/runs/{run_id}/events") as stream:
        events = read_sse(stream)
    assert events[-1]["data"] == {
        "status": "cancelled",
        "turn": 1,
        "error": "cancelled by the client",
    }


def test_failed_interrupted_and_crashing_runs_end_with_their_reason(alice: httpx.Client) -> None:
    failed = wait_status(alice, start_run(alice, "please fail"), ("failed",))
    assert failed["error"] == "it failed"
    asked = wait_status(alice, start_run(alice, "ask me"), ("interrupted",))
    assert asked["question"] == "which colour?"
    crashed = wait_status(alice, start_run(alice, "boom now"), ("failed",))
    assert crashed["error"] == "internal error: RuntimeError: fake runner exploded"


# -- OpenAI images ---------------------------------------------------------------------------
def test_images_b64_and_signed_urls(alice: httpx.Client) -> None:
    r = alice.post(
        "/v1/images/generations",
        json={"prompt": "a red apple", "n": 2, "size": "128x64", "response_format": "b64_json"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["data"]) == 2 and body["dossier"].startswith("# Dossier")
    sizes = {Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size for d in body["data"]}
    assert sizes == {(16, 8)}  # the fake draws at 1/8 of the requested size
    runs = body["groundwork"]["runs"]
    assert [run["kind"] for run in runs] == ["image", "image"]
    assert r.headers["X-Groundwork-Run-Ids"] == ",".join(run["id"] for run in runs)

    url = alice.post("/v1/images/generations", json={"prompt": "a pear"}).json()["data"][0]["url"]
    assert httpx.get(url).status_code == 200
    assert httpx.get(url.replace("sig=", "sig=0")).status_code == 403
    assert httpx.get(url.split("?")[0]).status_code == 401  # neither signature nor token


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "size": "10x10"}, "size"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 11}, "n"),
        ({"prompt": "   "}, "prompt"),
    ],
)
def test_images_bad_input_is_400_in_openai_shape(
    alice: httpx.Client, payload: dict[str, object], param: str
) -> None:
    r = alice.post("/v1/images/generations", json=payload)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "payload",
    [{"prompt": 5}, {"n": 1}, {"prompt": "x", "response_format": "gif"}, {"prompt": ["x"]}],
)
def test_images_validation_errors_are_400_in_openai_shape(
    alice: httpx.Client, payload: dict[str, object]
) -> None:
    """OpenAI answers a malformed request with 400 and {"error": {...}}, never FastAPI's 422
    with a `detail` list: the official client raises BadRequestError on it."""
    r = alice.post("/v1/images/generations", json=payload)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_images_failed_run_is_502_with_its_run_id(alice: httpx.Client) -> None:
    r = alice.post("/v1/images/generations", json={"prompt": "this will fail"})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "run_failed"
    run_id = r.headers["X-Groundwork-Run-Ids"]
    assert alice.get(f"/v1/runs/{run_id}").json()["status"] == "failed"


# -- auth and isolation ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-123456"}, {"Authorization": f"Basic {ALICE}"}],
)
def test_missing_or_wrong_token_is_401(server: LiveServer, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/runs"), ("POST", "/v1/runs"), ("GET", "/v1/models")]:
        r = httpx.request(method, server.url + path, headers=headers, json={"prompt": "x"})
        assert r.status_code == 401, (method, path)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_another_token_cannot_see_a_run_or_its_artifacts(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    run_id = start_run(alice)
    run = wait_status(alice, run_id, ("done",))
    sha = run["image"]["sha256"]
    assert alice.get(f"/v1/artifacts/{sha}").status_code == 200
    for method, path in [
        ("GET", f"/v1/runs/{run_id}"),
        ("GET", f"/v1/runs/{run_id}/events"),
        ("DELETE", f"/v1/runs/{run_id}"),
        ("GET", f"/v1/artifacts/{sha}"),
    ]:
        assert bob.request(method, path).status_code == 404, path
    assert bob.post(f"/v1/runs/{run_id}/messages", json={"message": "x"}).status_code == 404
    assert bob.get("/v1/runs").json()["data"] == []
    assert [r["id"] for r in alice.get("/v1/runs").json()["data"]] == [run_id]


# -- limits ----------------------------------------------------------------------------------
def test_oversized_body_is_413_with_or_without_content_length(start_server: StartServer) -> None:
    server = start_server(max_body_bytes=1024)
    big = json.dumps({"prompt": "x" * 5000}).encode()
    r = httpx.post(server.url + "/v1/runs", content=big, headers=auth())
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    r = httpx.post(server.url + "/v1/runs", content=chunks(), headers=auth())
    assert r.status_code == 413
    # both in the OpenAI error shape (JSON), not Starlette's text/plain
    for path in ("/v1/runs", "/v1/images/generations"):
        r = httpx.post(server.url + path, content=big, headers=auth())
        assert r.status_code == 413 and r.headers["content-type"] == "application/json"
        error = r.json()["error"]
        assert error["code"] == "request_too_large" and "1024 bytes" in error["message"]
        assert set(error) == {"message", "type", "param", "code"}


def test_request_rate_limit_is_429_with_retry_after(start_server: StartServer) -> None:
    server = start_server(rate_limit_per_minute=3)
    with httpx.Client(base_url=server.url, headers=auth()) as c:
        codes = [c.get("/v1/runs").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/v1/runs")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.json()["error"]["type"] == "rate_limit_error"
    # the budget is per token
    assert httpx.get(server.url + "/v1/runs", headers=auth(BOB)).status_code == 200


def test_concurrent_run_limit_is_429_until_a_run_finishes(
    start_server: StartServer, factory: FakeFactory
) -> None:
    server = start_server(factory, max_concurrent_runs=1)
    with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as c:
        held = start_run(c, "hold it")
        r = c.post("/v1/runs", json={"prompt": "another"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert (
            httpx.post(server.url + "/v1/runs", headers=auth(BOB), json={"prompt": "b"}).status_code
            == 202
        )
        assert factory.runner is not None
        factory.runner.release.set()
        wait_status(c, held, ("done",))
        assert c.post("/v1/runs", json={"prompt": "another"}).status_code == 202


# -- health, logs, spec ----------------------------------------------------------------------
def test_health_and_readiness(start_server: StartServer) -> None:
    server = start_server()
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {
        "llm",
        "redis",
        "worker",
        "store",
        "artifacts",
        "checkpoints",
    }
    down = start_server(redis_url="redis://127.0.0.1:1/0", probe_timeout_s=1)
    r = httpx.get(down.url + "/readyz")
    assert r.status_code == 503 and not r.json()["checks"]["redis"]["ok"]
    # with Redis down, limited routes answer 503 (fail closed), not 500
    r = httpx.get(down.url + "/v1/runs", headers=auth())
    assert r.status_code == 503 and "Retry-After" in r.headers


def test_logs_are_json_with_run_ids_and_never_the_token(
    alice: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run_id = start_run(alice)
    wait_status(alice, run_id, ("done",))
    alice.get("/v1/runs", headers={"Authorization": f"Bearer {BOB}-wrong"})
    time.sleep(0.1)
    lines = [JsonFormatter().format(r) for r in caplog.records]
    assert all(ALICE not in line and BOB not in line for line in lines)
    access = [json.loads(line) for line in lines if '"logger": "service.access"' in line]
    assert any(a["run_id"] == run_id and a["tenant"] == "alice" for a in access)
    assert any(a["status"] == 401 and a["tenant"] is None for a in access)
    runs = [json.loads(line) for line in lines if '"msg": "run finished"' in line]
    assert runs and runs[0]["run_id"] == run_id and runs[0]["status"] == "done"


def test_openapi_spec_and_page_are_served(server: LiveServer) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    for path in ("/v1/images/generations", "/v1/runs", "/v1/runs/{run_id}/events"):
        assert path in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "EventSource cannot send headers" in page.text


# -- OpenAI images.edit (the official client's test is in test_service_real.py) -------------
def _png(size: tuple[int, int] = (40, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_images_edit_edits_the_upload(alice: httpx.Client, factory: FakeFactory) -> None:
    r = alice.post(
        "/v1/images/edits",
        files={"image": ("in.png", _png(), "image/png")},
        data={"prompt": "make it night", "size": "128x64", "response_format": "b64_json"},
    )
    assert r.status_code == 200, r.text
    run_id = r.headers["X-Groundwork-Run-Ids"]
    assert factory.runner is not None
    upload = factory.runner.edits[run_id]["image"]
    assert (upload["width"], upload["height"]) == (40, 24)
    assert factory.runner.calls[0]["request"] is None  # resumed its seeded thread
    # the upload belongs to this token only
    assert alice.get(f"/v1/artifacts/{upload['sha256']}").status_code == 200
    bob = httpx.get(
        str(alice.base_url.join(f"/v1/artifacts/{upload['sha256']}")), headers=auth(BOB)
    )
    assert bob.status_code == 404


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        ({}, {"prompt": "x"}, "image"),
        ({"image": ("a.png", b"GIF89a not really", "image/png")}, {"prompt": "x"}, "image"),
        ({"image": ("a.png", _png(), "image/png")}, {"prompt": " "}, "prompt"),
        ({"image": ("a.png", _png(), "image/png")}, {"prompt": "x", "n": "²"}, "n"),
        ({"image": ("a.png", _png(), "image/png")}, {"prompt": "x", "n": "99"}, "n"),
        ({"image": ("a.png", _png(), "image/png")}, {"prompt": "x", "size": "9x9"}, "size"),
        (
            {"image": ("a.png", _png(), "image/png"), "mask": ("m.png", _png(), "image/png")},
            {"prompt": "x"},
            "mask",
        ),
    ],
)
def test_images_edit_refuses_bad_uploads_with_400(
    alice: httpx.Client, files: dict[str, Any], data: dict[str, str], param: str
) -> None:
    r = alice.post("/v1/images/edits", files=files or {"other": ("o", b"o")}, data=data)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_images_edit_refuses_a_decompression_bomb_and_json(alice: httpx.Client) -> None:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")  # tiny file, 400 M pixels
    r = alice.post(
        "/v1/images/edits",
        files={"image": ("bomb.png", buf.getvalue(), "image/png")},
        data={"prompt": "make it night"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    r = alice.post("/v1/images/edits", json={"prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Content-Type"


def test_images_edit_upload_limit_is_its_own(start_server: StartServer) -> None:
    server = start_server(max_upload_bytes=4096)
    with httpx.Client(base_url=server.url, headers=auth()) as c:
        r = c.post(
            "/v1/images/edits",
            files={"image": ("big.png", b"\x00" * 8000, "image/png")},
            data={"prompt": "x"},
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        # the upload limit (4 KiB here) is above the 64 KiB JSON limit by default; a small
        # upload passes the route's limit
        assert c.post(
            "/v1/images/edits",
            files={"image": ("s.png", _png(), "image/png")},
            data={"prompt": "x"},
        ).status_code in (200, 502)


def test_failed_turn_resumes_or_gives_way_to_a_new_message(
    alice: httpx.Client, factory: FakeFactory
) -> None:
    """A failed turn with saved progress: /resume continues it (request None: from the
    checkpoint); a message instead drops the unfinished stages and starts the next turn."""
    run_id = start_run(alice, "please fail")
    failed = wait_status(alice, run_id, ("failed",))
    assert "groundwork run --thread" not in (failed["error"] or "")
    runner = factory.runner
    assert runner is not None
    assert alice.post(f"/v1/runs/{run_id}/resume").status_code == 409  # nothing pending
    runner.pending_map[run_id] = ("generate",)
    runner.values_map[run_id] = {"request": "now it works"}
    r = alice.post(f"/v1/runs/{run_id}/resume")
    assert r.status_code == 202 and r.json()["turn"] == 1, r.text
    assert wait_status(alice, run_id, ("done",))["turn"] == 1
    assert runner.calls[-1]["request"] is None
    assert alice.post(f"/v1/runs/{run_id}/resume").status_code == 409  # done: not resumable

    second = start_run(alice, "please fail again")
    wait_status(alice, second, ("failed",))
    runner.pending_map[second] = ("critique",)
    r = alice.post(f"/v1/runs/{second}/messages", json={"message": "a calm lake"})
    assert r.status_code == 202, r.text
    assert wait_status(alice, second, ("done",))["request"] == "a calm lake"
    assert runner.discarded == [second]
