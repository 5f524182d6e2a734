"""Atomic file writes, for every writer of the project (artifacts, run folders, caches)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """temp + rename: a reader, or a killed process, never sees half a file. `durable` adds an
    fsync before the rename, so a power cut cannot leave a name pointing at data still in the
    page cache; callers that write many small files can skip it where that is acceptable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
