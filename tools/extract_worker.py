"""The page-reading worker process of `tools.extract_pool` (`python -m tools.extract_worker`).

Reads length-prefixed JSON requests on stdin, answers each with `tools.extract.read_page`'s
result on stdout. It holds no state between pages, so the pool may kill it at any moment (a
page over its time limit) and start another. It caps its own address space (a page cannot
balloon the host) and exits when its parent does (a watchdog thread polls the parent pid), so
a killed service leaves no extraction process behind.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import threading
import time
from dataclasses import asdict
from typing import Any, BinaryIO

HEADER = struct.Struct(">Q")
READY = b"R"


def read_frame(stream: BinaryIO) -> bytes | None:
    """One length-prefixed frame, or None at end of input."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    from tools.extract import PageLimits, read_page

    try:
        reading = read_page(
            str(request["text"]),
            bool(request["is_html"]),
            str(request["query"]),
            int(request["passage_chars"]),
            int(request["k"]),
            PageLimits(**request.get("limits", {})),
        )
    except MemoryError:
        return {"ok": False, "error": "the page needed more memory than the worker's cap"}
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        return {"ok": False, "error": f"page could not be read: {type(exc).__name__}: {exc}"}
    return {"ok": True, **asdict(reading)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parent", type=int, default=0)
    parser.add_argument("--memory-mb", type=int, default=0)
    args = parser.parse_args(argv)
    if args.memory_mb > 0:
        import resource

        limit = args.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.parent:
        threading.Thread(target=_watch_parent, args=(args.parent,), daemon=True).start()
    # The heavy imports, once, before saying ready.
    import trafilatura  # noqa: F401

    import tools.extract  # noqa: F401

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    write_frame(stdout, READY)
    while True:
        frame = read_frame(stdin)
        if frame is None:
            return 0
        try:
            request = json.loads(frame)
        except (ValueError, RecursionError) as exc:
            reply: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
        else:
            reply = _handle(request)
        write_frame(stdout, json.dumps(reply).encode())


if __name__ == "__main__":
    sys.exit(main())
