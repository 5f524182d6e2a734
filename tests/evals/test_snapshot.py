"""Research snapshots: record every tool result (and the images they point to) once, replay
them offline into a fresh artifact store, and never reach the network for what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import Settings
from evals.services import SharedServices
from evals.snapshot import SnapshotCache, SnapshotError
from tests.support.web import FakeDDGS, WebServer, install_fake_ddgs, png_bytes
from tools.observations import ImageHit, ImageRegistry

PAGE = (
    b"<html><body><article><p>The Zephyr X1 drone has a safety-orange shell.</p></article>"
    b"</body></html>"
)


def _settings(tmp: Path, artifacts: str) -> Settings:
    tools = {"allow_hosts": ["127.0.0.1"], "timeout_s": 10, "cache_enabled": True}
    return Settings().merged(
        {
            "artifacts": {"root": str(tmp / artifacts)},
            "tools": tools,
            "retrieval": {"kb_dir": str(tmp / "no-kb")},
        }
    )


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, web: WebServer, tmp_path: Path) -> WebServer:
    monkeypatch.setenv("GROUNDWORK_TEST_DDGS_LOG", str(tmp_path / "ddgs.log"))
    web.add("/z", "text/html; charset=utf-8", PAGE)
    img = web.add("/z.png", "image/png", png_bytes((200, 100, 0), seed=3))
    monkeypatch.setattr(
        FakeDDGS,
        "script",
        {
            "text": {"zephyr specs": [{"title": "Z", "href": web.url + "/z", "body": "orange"}]},
            "images": {"zephyr photo": [{"title": "Z photo", "image": img, "url": web.url}]},
        },
    )
    install_fake_ddgs()
    return web


async def test_record_then_replay_offline_gives_identical_evidence(
    tmp_path: Path, world: WebServer
) -> None:
    snap = tmp_path / "research.snap"
    rec_settings = _settings(tmp_path, "artifacts-a")
    shared = SharedServices(
        rec_settings, SnapshotCache(snap, "record", SharedServices(rec_settings).store)
    )
    tk = shared.toolkit()
    [search] = await tk.search(["zephyr specs"])
    image = await tk.image_search("zephyr photo", registry=ImageRegistry())
    page = await tk.browse(world.url + "/z", "zephyr")
    assert search.ok and image.ok and page.ok and not search.cached
    [again] = await tk.search(["Zephyr   SPECS"])  # another arm, same normalized question
    assert again.cached and again.items == search.items
    assert shared.snapshot is not None and shared.snapshot.count() == 3
    await shared.aclose()
    hits_after_record = list(world.hits)
    searches_recorded = (tmp_path / "ddgs.log").read_text().splitlines()
    assert len(searches_recorded) == 2  # one text, one image search: the repeat was cached

    play_settings = _settings(tmp_path, "artifacts-b")
    store_b = SharedServices(play_settings).store
    cache = SnapshotCache(snap, "replay", store_b)
    referenced = {
        h
        for i in image.items
        if isinstance(i, ImageHit)
        for h in (i.sha256, i.thumbnail_sha256)
        if h
    }
    assert cache.restore_blobs() == len(referenced) >= 1  # into an empty store
    replay = SharedServices(play_settings, cache)
    tk = replay.toolkit()
    [search2] = await tk.search(["zephyr specs"])
    image2 = await tk.image_search("zephyr photo", registry=ImageRegistry())
    page2 = await tk.browse(world.url + "/z", "zephyr")
    assert search2.cached and search2.items == search.items
    hits_a = [i for i in image.items if isinstance(i, ImageHit)]
    hits_b = [i for i in image2.items if isinstance(i, ImageHit)]
    assert image2.ok and hits_b and [i.sha256 for i in hits_b] == [i.sha256 for i in hits_a]
    assert all(store_b.exists(i.sha256) for i in hits_b)
    assert page2.ok and page2.items == page.items

    # a question the recording never saw fails loudly (ReplayMiss), never going online
    from tools.toolkit import ReplayMiss

    with pytest.raises(ReplayMiss, match="was not recorded"):
        await tk.search(["something never recorded"])
    with pytest.raises(ReplayMiss, match="was not recorded"):
        await tk.browse(world.url + "/not-recorded", "zephyr")
    assert world.hits == hits_after_record  # replay never touched the network
    assert (tmp_path / "ddgs.log").read_text().splitlines() == searches_recorded
    await replay.aclose()


def test_replaying_a_missing_snapshot_says_how_to_make_one(tmp_path: Path) -> None:
    store = SharedServices(_settings(tmp_path, "a")).store
    with pytest.raises(SnapshotError, match="record one first with --record"):
        SnapshotCache(tmp_path / "nope.snap", "replay", store)
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(SnapshotError, match="not a snapshot file"):
        SnapshotCache(bad, "replay", store)


def test_the_report_claims_determinism_only_when_the_replay_reproduced(tmp_path: Path) -> None:
    from evals import parse_config
    from evals.report import fairness_lines
    from evals.snapshot import compare_replay, fingerprint

    out = {
        "observations": [
            {"tool": "image_search", "query": "q", "ok": True, "images": ["IMG_001", "IMG_002"]}
        ],
        "rounds": [{"action": "finish", "score": 0.9, "passed": [True]}],
    }
    swapped = {
        **out,
        "observations": [{**out["observations"][0], "images": ["IMG_002", "IMG_001"]}],
    }
    flipped = {**out, "rounds": [{"action": "finish", "score": 0.9, "passed": [False]}]}
    recorded = {"a|p|0": fingerprint(out), "a|p|1": fingerprint(out)}
    same = compare_replay(recorded, {"a|p|0": fingerprint(out), "a|p|1": fingerprint(out)})
    assert same["compared"] == same["reproduced"] == 2
    worse = compare_replay(recorded, {"a|p|0": fingerprint(swapped), "a|p|1": fingerprint(flipped)})
    assert worse["reproduced"] == 0 and worse["differences"] == ["a|p|0", "a|p|1"]

    from evals.store import ResultStore

    config = parse_config(
        {
            "out_dir": str(tmp_path / "out"),
            "suites": ["knowledge-v1"],
            "arms": [{"name": "a", "kind": "plain"}],
            "replay": str(tmp_path / "snap"),
        }
    )
    store = ResultStore(tmp_path / "out" / "results.sqlite")
    store.set_meta("replay_check", worse)
    store.close()
    lines = " ".join(fairness_lines(config, []))
    assert "NOT deterministic: 2 of 2 items differ" in lines and "(deterministic)" not in lines
    store = ResultStore(tmp_path / "out" / "results.sqlite")
    store.set_meta("replay_check", same)
    store.close()
    assert "(deterministic)" in " ".join(fairness_lines(config, []))
