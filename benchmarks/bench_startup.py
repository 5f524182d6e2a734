"""CLI start-up: median wall time of `groundwork --help` and `groundwork worker --help`.

Each run is a fresh interpreter (`python -m cli.main ...`), as a user's shell starts it; the
target is under 0.5 s for both, which needs the lazy command registry of cli/main.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["worker", "--help"])
TARGET_S = 0.5


def time_once(args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one start; CPU (user + sys of the child) is what the start costs
    on an idle machine, wall what the user waits on this one."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="interpreter starts per command")
    parser.add_argument("--quick", action="store_true", help="3 runs per command")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    for command in COMMANDS:
        time_once(command)  # warm the file cache and .pyc files, as a second start would
        samples = [time_once(command) for _ in range(runs)]
        walls = sorted(w for w, _ in samples)
        median = statistics.median(walls)
        cpu = statistics.median(c for _, c in samples)
        verdict = "ok" if median < TARGET_S else f"over the {TARGET_S} s target"
        print(
            f"startup groundwork {' '.join(command):<14} median {median * 1000:6.0f} ms wall "
            f"(min {walls[0] * 1000:.0f}, max {walls[-1] * 1000:.0f}), {cpu * 1000:.0f} ms CPU "
            f"({runs} runs, load average {os.getloadavg()[0]:.1f}; {verdict})",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
