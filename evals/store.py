"""The results file: one SQLite database per eval, keyed by arm x prompt x seed.

Every finished item, score and pairwise verdict is committed the moment it exists, so a crash
or Ctrl-C loses nothing that was done, and a rerun reads what is there and does the rest.
Writes happen on the event loop's thread only (they are small), which keeps SQLite simple.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.errors import GroundworkError

ItemStatus = Literal["started", "done", "failed", "missing"]
RESULTS_DB = "results.sqlite"
"""The results file's name inside an eval's out_dir."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    arm TEXT NOT NULL, prompt_id TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL, prompt TEXT NOT NULL DEFAULT '', gen_prompt TEXT,
    image_sha256 TEXT, output TEXT NOT NULL DEFAULT '{}', error TEXT,
    wall_s REAL, thread_id TEXT, attempts INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
    PRIMARY KEY (arm, prompt_id, seed)
);
CREATE TABLE IF NOT EXISTS scores (
    metric TEXT NOT NULL, arm TEXT NOT NULL, prompt_id TEXT NOT NULL, seed INTEGER NOT NULL,
    value REAL, detail TEXT NOT NULL DEFAULT '{}', updated REAL NOT NULL,
    PRIMARY KEY (metric, arm, prompt_id, seed)
);
CREATE TABLE IF NOT EXISTS pairs (
    metric TEXT NOT NULL, arm_a TEXT NOT NULL, arm_b TEXT NOT NULL,
    prompt_id TEXT NOT NULL, seed INTEGER NOT NULL,
    outcome INTEGER, detail TEXT NOT NULL DEFAULT '{}', updated REAL NOT NULL,
    PRIMARY KEY (metric, arm_a, arm_b, prompt_id, seed)
);
CREATE TABLE IF NOT EXISTS skips (metric TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""


class StoreError(GroundworkError):
    """The results database cannot be opened or is not one of ours."""


class ItemRecord(BaseModel):
    arm: str
    prompt_id: str
    seed: int
    status: ItemStatus
    prompt: str = ""
    gen_prompt: str | None = Field(default=None, description="What the generator was sent.")
    image_sha256: str | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    wall_s: float | None = None
    thread_id: str | None = None
    attempts: int = 0


class ScoreRow(BaseModel):
    metric: str
    arm: str
    prompt_id: str
    seed: int
    value: float | None
    detail: dict[str, Any] = Field(default_factory=dict)


class PairRow(BaseModel):
    metric: str
    arm_a: str
    arm_b: str
    prompt_id: str
    seed: int
    outcome: int | None = Field(description="+1 arm_a better, -1 arm_b better, 0 tie.")
    detail: dict[str, Any] = Field(default_factory=dict)


class ResultStore:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise StoreError(f"no results database at {self.path}")
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            uri = f"file:{self.path}?mode=ro" if readonly else str(self.path)
            self.db = sqlite3.connect(uri, uri=readonly, isolation_level=None, timeout=30)
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
            else:
                self.db.execute("SELECT 1 FROM items LIMIT 1")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not an eval results database: {exc}") from exc
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    # -- meta --------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (key, json.dumps(value, sort_keys=True, default=str)),
        )

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    # -- items -------------------------------------------------------------------------------
    def item(self, arm: str, prompt_id: str, seed: int) -> ItemRecord | None:
        row = self.db.execute(
            "SELECT * FROM items WHERE arm = ? AND prompt_id = ? AND seed = ?",
            (arm, prompt_id, seed),
        ).fetchone()
        return _item(row) if row else None

    def put_item(self, rec: ItemRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO items (arm, prompt_id, seed, status, prompt, gen_prompt, "
            "image_sha256, output, error, wall_s, thread_id, attempts, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.arm,
                rec.prompt_id,
                rec.seed,
                rec.status,
                rec.prompt,
                rec.gen_prompt,
                rec.image_sha256,
                json.dumps(rec.output, default=str),
                rec.error,
                rec.wall_s,
                rec.thread_id,
                rec.attempts,
                time.time(),
            ),
        )

    def items(self, arm: str | None = None) -> list[ItemRecord]:
        if arm is None:
            rows = self.db.execute("SELECT * FROM items ORDER BY prompt_id, seed, arm")
        else:
            rows = self.db.execute(
                "SELECT * FROM items WHERE arm = ? ORDER BY prompt_id, seed", (arm,)
            )
        return [_item(r) for r in rows]

    # -- scores ------------------------------------------------------------------------------
    def has_score(self, metric: str, arm: str, prompt_id: str, seed: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM scores WHERE metric = ? AND arm = ? AND prompt_id = ? AND seed = ?",
            (metric, arm, prompt_id, seed),
        ).fetchone()
        return row is not None

    def put_score(self, row: ScoreRow) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO scores (metric, arm, prompt_id, seed, value, detail, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.metric,
                row.arm,
                row.prompt_id,
                row.seed,
                row.value,
                json.dumps(row.detail, default=str),
                time.time(),
            ),
        )

    def scores(self, metric: str | None = None) -> Iterator[ScoreRow]:
        sql = "SELECT * FROM scores"
        args: tuple[Any, ...] = ()
        if metric is not None:
            sql += " WHERE metric = ?"
            args = (metric,)
        for r in self.db.execute(sql + " ORDER BY metric, prompt_id, seed, arm", args):
            yield ScoreRow(
                metric=r["metric"],
                arm=r["arm"],
                prompt_id=r["prompt_id"],
                seed=r["seed"],
                value=r["value"],
                detail=json.loads(r["detail"]),
            )

    def forget_scores(self, arm: str, prompt_id: str, seed: int) -> None:
        """A re-made item's old scores and pairwise verdicts no longer describe it."""
        self.db.execute(
            "DELETE FROM scores WHERE arm = ? AND prompt_id = ? AND seed = ?",
            (arm, prompt_id, seed),
        )
        self.db.execute(
            "DELETE FROM pairs WHERE (arm_a = ? OR arm_b = ?) AND prompt_id = ? AND seed = ?",
            (arm, arm, prompt_id, seed),
        )

    def metrics(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT metric FROM scores ORDER BY 1")]

    # -- pairwise ----------------------------------------------------------------------------
    def has_pair(self, metric: str, a: str, b: str, prompt_id: str, seed: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM pairs WHERE metric = ? AND arm_a = ? AND arm_b = ? AND prompt_id = ? "
            "AND seed = ?",
            (metric, a, b, prompt_id, seed),
        ).fetchone()
        return row is not None

    def put_pair(self, row: PairRow) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO pairs (metric, arm_a, arm_b, prompt_id, seed, outcome, "
            "detail, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.metric,
                row.arm_a,
                row.arm_b,
                row.prompt_id,
                row.seed,
                row.outcome,
                json.dumps(row.detail, default=str),
                time.time(),
            ),
        )

    def pairs(self, metric: str | None = None) -> list[PairRow]:
        sql = "SELECT * FROM pairs"
        args: tuple[Any, ...] = ()
        if metric is not None:
            sql += " WHERE metric = ?"
            args = (metric,)
        return [
            PairRow(
                metric=r["metric"],
                arm_a=r["arm_a"],
                arm_b=r["arm_b"],
                prompt_id=r["prompt_id"],
                seed=r["seed"],
                outcome=r["outcome"],
                detail=json.loads(r["detail"]),
            )
            for r in self.db.execute(sql + " ORDER BY prompt_id, seed, arm_a, arm_b", args)
        ]

    # -- metric-level skips --------------------------------------------------------------------
    def set_skip(self, metric: str, reason: str | None) -> None:
        if reason is None:
            self.db.execute("DELETE FROM skips WHERE metric = ?", (metric,))
        else:
            self.db.execute(
                "INSERT OR REPLACE INTO skips (metric, reason) VALUES (?, ?)", (metric, reason)
            )

    def skips(self) -> dict[str, str]:
        return {r["metric"]: r["reason"] for r in self.db.execute("SELECT * FROM skips")}


def _item(row: sqlite3.Row) -> ItemRecord:
    return ItemRecord(
        arm=row["arm"],
        prompt_id=row["prompt_id"],
        seed=row["seed"],
        status=row["status"],
        prompt=row["prompt"],
        gen_prompt=row["gen_prompt"],
        image_sha256=row["image_sha256"],
        output=json.loads(row["output"] or "{}"),
        error=row["error"],
        wall_s=row["wall_s"],
        thread_id=row["thread_id"],
        attempts=row["attempts"],
    )
