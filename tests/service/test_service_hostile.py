"""Hostile input to the service (issue 22): every class of request that used to end in a 500 or
leak something, with generated variants rather than one example each.

- signatures that are not ASCII hex (compare_digest raised TypeError on `sig=%C3%A9`);
- numbers that pass `str.isdigit()` but not `int()` (superscripts, other scripts' digits),
  numbers past SQLite's 2^63, and numbers thousands of digits long, in `size`, `Last-Event-ID`
  and `after`;
- failed authentications at request speed (401s are rate limited per address);
- `/readyz` asked by anyone: no URL, path or key in the answer, and no outbound request per call;
- served artifacts: `nosniff`, and a media type outside the image allow-list is a download;
- every parameter and header fuzzed with hypothesis: no answer is a 5xx.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.settings import Settings
from core.artifacts import ArtifactStore
from service.auth import Auth
from service.settings import ServiceSettings
from tests.service.conftest import ALICE, BOB, auth, wait_status
from tests.service.fakes import LiveServer

StartServer = Callable[..., LiveServer]

# Digits that `str.isdigit()` accepts and `int()` refuses, and digits of other scripts.
UNICODE_DIGITS = ["²", "³", "¹", "⁴", "₅", "①", "١", "٣", "१", "０", "𝟗"]


def numbers_that_must_be_refused() -> st.SearchStrategy[str]:
    """Generated variants: Unicode digits mixed in, >= 2^63, and very long digit strings."""
    unicode_mixed = st.lists(
        st.sampled_from(UNICODE_DIGITS + list("0123456789")), min_size=1, max_size=8
    ).filter(lambda cs: any(c in UNICODE_DIGITS for c in cs))
    huge = st.integers(min_value=2**63, max_value=2**70).map(str)
    long = st.integers(min_value=4300, max_value=6000).map(lambda n: "9" * n)
    return st.one_of(unicode_mixed.map("".join), huge, long)


@pytest.fixture
def server(start_server: StartServer) -> LiveServer:
    return start_server(rate_limit_per_minute=100_000, auth_failures_per_minute=100_000)


@pytest.fixture
def alice(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=auth(ALICE), timeout=30) as c:
        yield c


def _done_run(alice: httpx.Client) -> dict[str, Any]:
    run_id = alice.post("/v1/runs", json={"prompt": "a red apple"}).json()["id"]
    return wait_status(alice, run_id, ("done",))


# -- signatures ------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(sig=st.text(min_size=1, max_size=80))
def test_any_signature_that_is_not_the_right_hex_is_403_never_500(
    server: LiveServer, sig: str
) -> None:
    sha = "a" * 64
    r = httpx.get(
        f"{server.url}/v1/artifacts/{sha}", params={"exp": 4_000_000_000, "sig": sig}, timeout=30
    )
    assert r.status_code == 403, (sig, r.status_code, r.text)
    assert r.json()["error"]["code"] == "bad_url"


def test_non_ascii_signature_is_403(server: LiveServer) -> None:
    url = f"{server.url}/v1/artifacts/{'a' * 64}?exp=4000000000&sig=%C3%A9"
    r = httpx.get(url)
    assert r.status_code == 403 and r.headers["x-content-type-options"] == "nosniff"


# -- numbers ---------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(number=numbers_that_must_be_refused())
def test_sizes_and_event_ids_that_int_cannot_take_are_4xx(alice: httpx.Client, number: str) -> None:
    r = alice.post("/v1/images/generations", json={"prompt": "x", "size": f"{number}x64"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "size", r.text
    r = alice.post("/v1/images/generations", json={"prompt": "x", "size": f"64x{number}"})
    assert r.status_code == 400, r.text
    run_id = "run_" + "c" * 32  # not this token's: the id check must come first anyway
    r = alice.get(f"/v1/runs/{run_id}/events", headers={b"Last-Event-ID": number.encode()})
    assert r.status_code in (400, 404), r.text
    r = alice.get(f"/v1/runs/{run_id}/events", params={"after": number})
    assert r.status_code == 422, r.text


def test_event_ids_past_sqlite_range_on_a_real_run_are_400(alice: httpx.Client) -> None:
    run_id = _done_run(alice)["id"]
    for bad in [str(2**63), str(2**64 + 5), "9" * 5000, "²", "1²", "١٢", "12x", "-1", "0x1f"]:
        r = alice.get(f"/v1/runs/{run_id}/events", headers={b"Last-Event-ID": bad.encode()})
        assert r.status_code == 400, (bad[:20], r.text)
        assert r.json()["error"]["param"] == "Last-Event-ID"
        r = alice.get(f"/v1/runs/{run_id}/events", params={"after": bad})
        assert r.status_code == 422, (bad[:20], r.text)
    # the largest accepted id reads nothing newer: 204, no overflow
    big = str(2**53 - 1)
    assert alice.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": big}).status_code == (
        204
    )


# -- authentication --------------------------------------------------------------------------
def test_failed_authentications_are_rate_limited_per_address(
    start_server: StartServer,
) -> None:
    server = start_server(auth_failures_per_minute=3)
    wrong = [{}, {"Authorization": "Bearer nope-nope-nope"}, {"Authorization": "Basic x"}]
    codes = [httpx.get(server.url + "/v1/runs", headers=h).status_code for h in wrong]
    assert codes == [401, 401, 401]
    r = httpx.get(server.url + "/v1/runs", headers={"Authorization": "Bearer guess-4"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"
    # while blocked, even a right token from that address is not checked (no oracle)
    assert httpx.get(server.url + "/v1/runs", headers=auth(BOB)).status_code == 429


# -- /readyz ---------------------------------------------------------------------------------
class CountingLLM:
    """A loopback `/models` endpoint that counts the probes it gets."""

    def __init__(self) -> None:
        self.hits: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits.append(self.headers.get("Authorization"))
                body = b'{"object": "list", "data": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> CountingLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_readyz_shows_no_url_path_or_key_and_probes_the_llm_once(
    start_server: StartServer, gw_settings: Settings, tmp_path: Any
) -> None:
    key = "sk-very-secret-llm-key-123"
    with CountingLLM() as llm:
        settings = gw_settings.merged(
            {"llm": {"base_url": llm.base_url, "model": "m", "api_key": key}}
        )
        server = start_server(settings=settings)
        answers = [httpx.get(server.url + "/readyz") for _ in range(15)]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        assert len(llm.hits) == 1  # cached: one outbound probe for 15 calls
    checks = answers[0].json()["checks"]
    assert set(checks) == {"llm", "redis", "worker", "store", "artifacts", "checkpoints"}
    assert all(c["ok"] for c in checks.values())
    text = answers[-1].text
    port = llm.base_url.split(":")[2].split("/")[0]
    for secret in (key, "127.0.0.1", port, str(tmp_path), "sqlite", "redis://", "http"):
        assert secret not in text, secret


# -- artifacts -------------------------------------------------------------------------------
def test_artifacts_are_nosniff_and_only_images_are_served_as_images(
    server: LiveServer, gw_settings: Settings, service_cfg: Callable[..., ServiceSettings]
) -> None:
    store = ArtifactStore(gw_settings.artifacts.root)
    signer = Auth(service_cfg())
    cases = {
        "text/html": b"<script>alert(1)</script>",
        "image/svg+xml": b"<svg onload=alert(1)></svg>",
        "application/javascript": b"alert(1)",
        "image/png": b"\x89PNG\r\n\x1a\n not really",
    }
    for media, data in cases.items():
        ref = store.put_bytes(data, media_type=media, meta={"source": "test"})
        r = httpx.get(f"{server.url}/v1/artifacts/{ref.sha256}?{signer.sign(ref.sha256)}")
        assert r.status_code == 200, r.text
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in r.headers["content-security-policy"]
        if media == "image/png":
            assert r.headers["content-type"] == "image/png"
        else:
            assert r.headers["content-type"] == "application/octet-stream", media
            assert r.headers["content-disposition"].startswith("attachment")


# -- fuzzing ---------------------------------------------------------------------------------
HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=60,
)
ROUTES = [
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{run}"),
    ("GET", "/v1/runs/{run}/events"),
    ("DELETE", "/v1/runs/{run}"),
    ("POST", "/v1/runs/{run}/messages"),
    ("POST", "/v1/runs/{run}/resume"),
    ("POST", "/v1/runs"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images/edits"),
    ("GET", "/v1/artifacts/{sha}"),
    ("GET", "/v1/models"),
    ("GET", "/readyz"),
    ("GET", "/"),
]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    route=st.sampled_from(ROUTES),
    authorization=st.one_of(
        st.none(), HEADER_TEXT, HEADER_TEXT.map(lambda t: "Bearer " + t), st.just(f"Bearer {ALICE}")
    ),
    last_event_id=st.one_of(st.none(), HEADER_TEXT, numbers_that_must_be_refused()),
    content_type=st.one_of(
        st.none(),
        HEADER_TEXT,
        st.just("multipart/form-data; boundary=x"),
        st.just("application/json"),
    ),
    params=st.dictionaries(
        st.sampled_from(["after", "limit", "exp", "sig", "token", "autorun", "size", "n"]),
        st.one_of(HEADER_TEXT, numbers_that_must_be_refused(), st.integers().map(str)),
        max_size=4,
    ),
    body=st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(["prompt", "size", "n", "width", "seed", "message", "model", "image"]),
            st.one_of(HEADER_TEXT, st.integers(), st.none(), numbers_that_must_be_refused()),
            max_size=5,
        ).map(lambda d: httpx.Request("POST", "/", json=d).content),
    ),
    run=st.one_of(st.just("run_" + "d" * 32), HEADER_TEXT.filter(lambda t: "/" not in t)),
)
def test_fuzzed_parameters_and_headers_never_get_a_server_error(
    server: LiveServer,
    route: tuple[str, str],
    authorization: str | None,
    last_event_id: str | None,
    content_type: str | None,
    params: dict[str, str],
    body: bytes,
    run: str,
) -> None:
    method, path = route
    headers: dict[bytes, bytes] = {}
    for name, value in (
        (b"Authorization", authorization),
        (b"Last-Event-ID", last_event_id),
        (b"Content-Type", content_type),
    ):
        if value is not None:
            headers[name] = value.strip().encode("utf-8")
    url = server.url + path.format(run=quote(run, safe=""), sha="e" * 64)
    r = httpx.request(
        method,
        url,
        params=params,
        headers=headers,
        content=body if method == "POST" else None,
        timeout=30,
    )
    assert r.status_code < 500, (method, url, params, headers, r.status_code, r.text[:300])
