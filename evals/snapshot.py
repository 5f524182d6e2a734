"""Research snapshots: every tool result of an eval in one portable SQLite file.

`--record SNAP` installs a snapshot as the tool cache of every arm: the first arm to ask a
question pays for the live call and every later ask (any arm) gets the recorded answer, so
the arms see identical evidence. The images an observation points to are copied into the
file too. `--replay SNAP` installs the same file read-only, puts its images back in the
artifact store and turns the live tools off through the toolkit's public hooks
(`provider_factory`, `fetcher`, `replay=True`), so a suite reruns offline with the same
evidence: a question that was never recorded raises `ReplayMiss` (the item fails loudly), it
never reaches the network. The recording also keeps each item's `fingerprint` (observations
with their image ids, critique verdicts); the replay compares its own, and the report claims
determinism only when they match.

The snapshot plugs in through the `Toolkit(cache=...)` hook the toolkit already has (a
`tools.cache.ToolCache`), keyed exactly as the live cache is: (tool, normalized args).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Literal

from core.artifacts import ArtifactStore
from core.errors import InputError

SnapshotMode = Literal["record", "replay"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    key TEXT PRIMARY KEY, tool TEXT NOT NULL, query TEXT NOT NULL, value TEXT NOT NULL,
    recorded REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY, media_type TEXT NOT NULL, meta TEXT NOT NULL, data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SnapshotError(InputError):
    """A snapshot file is missing, unreadable or not a snapshot."""


class SnapshotCache:
    """A `tools.cache.ToolCache` backed by a snapshot file (see the module docstring)."""

    def __init__(self, path: Path, mode: SnapshotMode, store: ArtifactStore) -> None:
        self.path = Path(path)
        self.mode = mode
        self.store = store
        if mode == "replay" and not self.path.is_file():
            raise SnapshotError(
                f"no snapshot at {self.path}: record one first with --record {self.path}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SnapshotError(f"{self.path} is not a snapshot file: {exc}") from exc
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.recorded = 0

    # -- the ToolCache protocol ----------------------------------------------------------------
    async def get(self, key: str) -> dict[str, Any] | None:
        value = await asyncio.to_thread(self._get, key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    async def set(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        if self.mode == "record":
            await asyncio.to_thread(self._set, key, value)

    async def aclose(self) -> None:
        """The harness closes the snapshot itself, after every arm is done."""
        return None

    # -- storage -------------------------------------------------------------------------------
    def _get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM observations WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def _set(self, key: str, value: dict[str, Any]) -> None:
        blobs = []
        for item in value.get("items") or []:
            for sha in (item.get("sha256"), item.get("thumbnail_sha256")):
                if sha and self.store.exists(sha):
                    meta = self.store.meta(sha)
                    blobs.append(
                        (
                            sha,
                            meta.get("media_type", "application/octet-stream"),
                            json.dumps(meta),
                            self.store.get_bytes(sha),
                        )
                    )
        with self._lock, self._db:
            # First answer wins: a concurrent duplicate ask must not replace the evidence
            # another arm has already seen.
            cur = self._db.execute(
                "INSERT OR IGNORE INTO observations (key, tool, query, value, recorded) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    key,
                    str(value.get("tool", "")),
                    str(value.get("query", "")),
                    json.dumps(value),
                    time.time(),
                ),
            )
            self.recorded += cur.rowcount
            self._db.executemany(
                "INSERT OR IGNORE INTO blobs (sha256, media_type, meta, data) VALUES (?, ?, ?, ?)",
                blobs,
            )

    def restore_blobs(self) -> int:
        """Put the snapshot's images into the artifact store (replay); returns how many."""
        with self._lock:
            rows = self._db.execute("SELECT sha256, media_type, meta, data FROM blobs").fetchall()
        restored = 0
        for sha, media_type, meta, data in rows:
            if not self.store.exists(sha):
                ref = self.store.put_bytes(bytes(data), media_type, json.loads(meta) or None)
                if ref.sha256 != sha:
                    raise SnapshotError(f"{self.path}: image {sha} is corrupt (hash mismatch)")
                restored += 1
        return restored

    def set_info(self, key: str, value: Any) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    def info(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM observations").fetchone()[0])

    def entries(self) -> list[tuple[str, str, str]]:
        """(tool, query, key) of every recorded observation."""
        with self._lock:
            rows = self._db.execute(
                "SELECT tool, query, key FROM observations ORDER BY tool, query"
            ).fetchall()
        return [(str(t), str(q), str(k)) for t, q, k in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


KEY_SETTINGS = ("text_provider", "image_provider", "top_k", "max_images_per_query")
"""Tool settings that are part of the cache keys: a replay must use the recorded values."""


def key_settings(tools: Any, clip_model: str | None) -> dict[str, Any]:
    return {**{k: getattr(tools, k) for k in KEY_SETTINGS}, "clip_model": clip_model}


class OfflineProvider:
    """Stands in for a search provider on replay: a question that was not recorded fails the
    way it fails on an offline machine (`ProviderError(offline=True)`), never going online."""

    def __init__(self, name: str, snapshot: Path) -> None:
        self.name = name
        self.snapshot = snapshot

    def _refuse(self, query: str) -> Exception:
        from tools.providers.base import ProviderError

        return ProviderError(
            f"replaying snapshot {self.snapshot}: {query!r} was not recorded in it",
            offline=True,
        )

    async def text(self, query: str, max_results: int) -> list[Any]:
        raise self._refuse(query)

    async def images(self, query: str, max_results: int) -> list[Any]:
        raise self._refuse(query)

    async def aclose(self) -> None:
        return None


class OfflineFetcher:
    """Stands in for `tools.fetch.SafeFetcher` on replay: every download is refused the way an
    offline machine refuses it, so a question missing from the snapshot cannot go online."""

    def __init__(self, snapshot: Path) -> None:
        self.snapshot = snapshot

    async def fetch(self, url: str, **_: Any) -> Any:
        from tools.fetch import FetchError

        raise FetchError(
            "offline",
            f"replaying snapshot {self.snapshot}: {url} was not recorded in it (record the "
            "suite again to include it)",
        )

    async def aclose(self) -> None:
        return None


# -- did the replay replay? ------------------------------------------------------------------
def fingerprint(output: dict[str, Any]) -> dict[str, Any]:
    """What a replay must reproduce of one item: each observation (tool, query, ok, the image
    ids in order) and each critique round's verdict."""
    return {
        "observations": [
            [o.get("tool"), o.get("query"), o.get("ok"), list(o.get("images") or [])]
            for o in output.get("observations") or []
            if isinstance(o, dict)
        ],
        "verdicts": [
            [r.get("action"), r.get("score"), list(r.get("passed") or [])]
            for r in output.get("rounds") or []
            if isinstance(r, dict)
        ],
    }


def compare_replay(
    recorded: dict[str, dict[str, Any]], replayed: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """{compared, reproduced, differences: [item key...]} over the items both runs made."""
    common = sorted(set(recorded) & set(replayed))
    differ = [k for k in common if recorded[k] != replayed[k]]
    return {
        "compared": len(common),
        "reproduced": len(common) - len(differ),
        "differences": differ[:50],
        "missing": sorted(set(recorded) - set(replayed))[:50],
    }
