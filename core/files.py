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


def writable_dir_problem(path: Path) -> str | None:
    """None when files can be created under `path` (made later if missing), else why not.

    `os.access` is not enough: root passes it for /proc and read-only mounts, where creating a
    file then fails after the work is done. So this really creates (and removes) a temporary
    folder in the deepest existing ancestor; nothing is left behind.
    """
    target = path.expanduser()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            return f"{target} has no existing parent folder"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        made = tempfile.mkdtemp(dir=probe, prefix=".groundwork-probe-")
    except OSError as exc:
        return f"{probe} is not writable ({exc.strerror or exc})"
    try:
        os.rmdir(made)
    except OSError as exc:
        return f"{probe} allows creating but not removing ({exc.strerror or exc})"
    return None
