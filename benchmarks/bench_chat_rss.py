"""Chat memory per turn: `python -m benchmarks.run chat-rss [--turns N]`.

The real chat loop (`cli.run._chat_loop`, one Runner for the whole conversation) in a child
process, its `console.input` fed N messages (a first prompt, then refinements), a scripted
OpenAI-compatible LLM on loopback in this process and the noop generator, offline. After each
turn the child writes its RSS (/proc/self/statm) and how many objects the garbage collector
tracks. Issue 21.10 measured +1.8 MB per turn with no plateau; the figure here is the slope
(least squares) over the last two thirds of the turns, and the objects each turn leaves behind.
Causes found so far: a cached exception raised again each turn (its traceback kept every
raising frame and the run state in it) and a pydantic class made per structured call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.scripted_llm import ScriptedLLM

SLOPE_TARGET_MB = 0.05
"""MB per turn after warm-up above which the figure is flagged (allocator noise is below)."""

_CHILD = r"""
import asyncio, gc, json, os, sys
import cli.run as cr
turns, out_path = int(sys.argv[1]), sys.argv[2]
page = os.sysconf("SC_PAGE_SIZE")
done = [0]
out = open(out_path, "w")
def feed(*args, **kwargs):
    i = done[0]
    if i:
        gc.collect()
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * page / 2**20
        out.write(json.dumps({"turn": i, "rss_mb": rss, "objects": len(gc.get_objects())}) + "\n")
        out.flush()
    done[0] += 1
    if i >= turns:
        raise EOFError
    return "a red kangaroo on a beach" if i == 0 else f"make it bluer, take {i}"
cr.console.input = feed
settings = cr._settings(cr.RunContext(), offline=True)
asyncio.run(cr._chat_loop(settings, "bench-chat-rss", "planned", resume=False))
"""


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def measure(turns: int) -> list[dict[str, float]]:
    """RSS and tracked objects after each of `turns` chat turns (see the module doc)."""
    llm = ScriptedLLM().start()
    try:
        for _ in range(turns + 2):
            llm.add("Intent", {"kind": "refine", "instruction": "make it bluer"})
            llm.add("GapReport", {"gaps": []})
            llm.add("GroundedPrompt", {"gen_prompt": "a red kangaroo on a sunny beach"})
        with tempfile.TemporaryDirectory(prefix="gw-chat-rss-") as tmp_name:
            tmp = Path(tmp_name)
            env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDWORK_")}
            env.update(
                {
                    "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1",
                    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                    "GROUNDWORK_GENERATOR__BACKEND": "noop",
                    "GROUNDWORK_ARTIFACTS__ROOT": str(tmp / "artifacts"),
                    "GROUNDWORK_CHECKPOINT_DB": str(tmp / "checkpoints.sqlite"),
                    "GROUNDWORK_RUNS_DIR": str(tmp / "runs"),
                    "GROUNDWORK_TRACES_DIR": str(tmp / "traces"),
                    "GROUNDWORK_RETRIEVAL__KB_DIR": str(tmp / "kb"),
                    "GROUNDWORK_TOOLS__CACHE_DIR": str(tmp / "tool-cache"),
                    "GROUNDWORK_LLM__BASE_URL": llm.base_url,
                    "GROUNDWORK_LLM__MODEL": "scripted-llm",
                }
            )
            out = tmp / "rss.jsonl"
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(turns), str(out)],
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=60 + 10 * turns,
            )
            if proc.returncode != 0:
                raise SystemExit(f"the chat child failed (exit {proc.returncode}): {proc.stderr}")
            return [json.loads(line) for line in out.read_text().splitlines()]
    finally:
        llm.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=60, help="chat turns to run")
    parser.add_argument("--quick", action="store_true", help="20 turns")
    args = parser.parse_args(argv)
    turns = 20 if args.quick else max(args.turns, 6)
    rows = measure(turns)
    tail = rows[len(rows) // 3 :]
    xs = [float(r["turn"]) for r in tail]
    slope = _slope(xs, [r["rss_mb"] for r in tail])
    objects = _slope(xs, [r["objects"] for r in tail])
    verdict = "ok" if slope < SLOPE_TARGET_MB else f"over the {SLOPE_TARGET_MB} MB/turn target"
    print(
        f"chat RSS over {turns} turns (scripted LLM, noop generator): {rows[0]['rss_mb']:.1f} MB "
        f"after turn 1, {rows[-1]['rss_mb']:.1f} MB after turn {turns}; slope over turns "
        f"{int(xs[0])}-{int(xs[-1])}: {slope:+.3f} MB/turn ({verdict}), "
        f"{objects:+.1f} tracked objects/turn (issue 21.10: +1.8 MB/turn, no plateau)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
