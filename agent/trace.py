"""Per-thread trace files: every LLM call and tool call of a run, one JSON object per line.

They are the raw material of `groundwork traces export` (SFT data) and of debugging a run. The
file is appended as calls happen, so a run killed mid-way keeps what it did and its resume adds
to the same file; the runner copies a turn's lines into the run folder.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()


class Tracer:
    def __init__(self, path: Path, *, thread_id: str, turn: int = 0, stage: str = "") -> None:
        self.path = path
        self.thread_id = thread_id
        self.turn = turn
        self.stage = stage

    def bind(self, *, turn: int, stage: str) -> Tracer:
        return Tracer(self.path, thread_id=self.thread_id, turn=turn, stage=stage)

    def write(self, record: dict[str, Any]) -> None:
        line = {
            "ts": round(time.time(), 3),
            "thread_id": self.thread_id,
            "turn": self.turn,
            "stage": self.stage,
            **record,
        }
        data = json.dumps(line, default=str, ensure_ascii=False) + "\n"
        with _LOCK:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write() of a whole line in append mode: a killed process leaves whole lines.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data.encode())
            finally:
                os.close(fd)


def read_trace(path: Path, *, turn: int | None = None) -> list[dict[str, Any]]:
    """The records of a trace file (one turn's when `turn` is set); a torn last line is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (turn is None or record.get("turn") == turn):
            out.append(record)
    return out
