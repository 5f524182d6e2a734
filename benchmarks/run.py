"""Benchmark runner: `python -m benchmarks.run [NAME ...] [--quick]`.

Each benchmark is a module `benchmarks/bench_<name>.py` with `main(argv)` that prints its
figures and ratios. Speed and memory targets live here, not in timed tests.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {available()}")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    args, rest = parser.parse_known_args(argv)
    names = [n.replace("-", "_") for n in args.names] or available()  # tune-policy
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available()}")
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        module.main((["--quick"] if args.quick else []) + rest)
        print(f"=== {name}: {time.perf_counter() - started:.1f}s ===", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
