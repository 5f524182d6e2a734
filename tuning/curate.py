"""`groundwork tune curate`: train a student generator on VLM-curated teacher data (EvolveDirector).

Each round:
1. the teacher (any image source: a Groundwork generator or the whole agent, an
   OpenAI-compatible images endpoint such as another `groundwork serve`, or a folder of images)
   and the student (a local diffusers model + the LoRA trained so far) draw every active prompt;
2. the VLM judge compares the two images in both orders; a preference that flips with the
   order is a tie (position bias), and the judge's agreement with itself is reported;
3. the seed paper's rules: the teacher wins -> keep the sample and *expand* it (the VLM writes
   variants of the prompt the student fails); the student wins -> the sample is *mastered* and
   deleted; a tie is kept as it is; a few *mutations* (new prompts unlike the pool) keep it
   diverse;
4. the dataset is written as a new version (images, prompts, verdicts, lineage);
5. the student's LoRA is fine-tuned on the active samples with the standard denoising loss.

Generation goes through `agent.services.Services`, so with `generator.backend = "queue"` the
teacher and student images are made by the Redis worker fleet; training runs in this process.
Rerunning the command resumes after the last finished round.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
import re
import shutil
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.settings import Policy
from core.errors import InputError
from evals.config import JudgeConfig
from evals.judge import OpenAIJudge, both_orders
from tuning.lora_diffusers import (
    DEFAULT_TARGETS,
    StepMeter,
    TuningError,
    add_lora,
    denoising_loss,
    from_pil,
    load_pipeline,
    lora_state,
    precision,
    save_tuned_folder,
    set_lora_state,
)

if TYPE_CHECKING:
    from agent.services import Services

Verdict = Literal["teacher", "student", "tie", "unanswered"]
Status = Literal["active", "deleted", "dropped"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherConfig(_Strict):
    kind: Literal["generator", "agent", "openai", "folder"] = "generator"
    model: str | None = Field(
        default=None, description="generator/agent: the teacher's diffusers model (None = the "
        "settings' generator.model); openai: the images model name.",
    )  # fmt: skip
    policy: Policy = Field(default="planned", description="agent only.")
    base_url: str | None = Field(default=None, description="openai: e.g. http://host:8000/v1.")
    api_key_env: str | None = None
    path: str | None = Field(
        default=None,
        description="folder: images named after the prompt's slug, or a prompts.jsonl with "
        '{"prompt": ..., "image": ...} lines.',
    )
    steps: int | None = Field(default=None, ge=1, description="generator/agent denoising steps.")


class TrainConfig(_Strict):
    steps: int = Field(default=100, ge=1, description="LoRA steps per round.")
    batch_size: int = Field(default=1, ge=1, le=64)
    lr: float = Field(default=1e-4, gt=0)
    rank: int = Field(default=8, ge=1, le=256)
    alpha: float = Field(default=8.0, gt=0)
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    resolution: int = Field(default=512, ge=16, le=2048)
    device: str = "auto"
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"


class EvolveConfig(_Strict):
    expand_n: int = Field(
        default=2, ge=0, le=8, description="Variants per prompt the student fails."
    )
    mutate_n: int = Field(default=1, ge=0, le=32, description="New prompts per round.")
    max_samples: int = Field(default=500, ge=1, description="Cap on active samples.")


class CurateConfig(_Strict):
    name: str = "curate"
    out_dir: Path = Path("tune-out/curate")
    student: str = Field(default="stabilityai/sd-turbo", description="Student base model.")
    prompts: list[str] = Field(min_length=1, description="The seed prompts.")
    rounds: int = Field(default=3, ge=1)
    seed: int = Field(default=0, ge=0)
    width: int = Field(default=512, ge=16)
    height: int = Field(default=512, ge=16)
    steps: int = Field(default=2, ge=1, description="Student denoising steps.")
    guidance_scale: float = Field(default=0.0, ge=0)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Settings overrides (generator backend, queue...)."
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evolve: EvolveConfig = Field(default_factory=EvolveConfig)


class Sample(BaseModel):
    """One prompt in the dataset, with where it came from and what the judge said."""

    id: str
    prompt: str
    op: Literal["seed", "expand", "mutate"] = "seed"
    parent: str | None = None
    born: int = Field(default=0, description="Round it was added in (0 = the seed prompts).")
    status: Status = "active"
    reason: str = ""
    teacher_image: str | None = Field(default=None, description="Path relative to out_dir.")
    student_image: str | None = None
    verdict: Verdict | None = None
    orders: list[str | None] = Field(default_factory=list, description="[teacher-first, swapped]")
    history: list[str] = Field(default_factory=list, description="Verdicts, one per round.")


class Dataset(BaseModel):
    version: int
    student: str = Field(description="The student model these verdicts were made against.")
    samples: list[Sample]

    def active(self) -> list[Sample]:
        return [s for s in self.samples if s.status == "active"]


def load_curate_config(path: Path | str, **overrides: Any) -> CurateConfig:
    path = Path(path).absolute()  # paths in it (and in the manifests) stay valid
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"curate config {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"curate config {path} is not valid TOML: {exc}") from exc
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = CurateConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(f"invalid curate config {path}: {loc}: {first['msg']}") from exc
    base = path.parent
    if not config.out_dir.is_absolute():
        config.out_dir = base / config.out_dir
    if (base / config.student).exists() and not Path(config.student).is_absolute():
        config.student = str(base / config.student)
    if config.teacher.path and not Path(config.teacher.path).is_absolute():
        config.teacher.path = str(base / config.teacher.path)
    return config


def load_dataset(out_dir: Path, version: int | None = None) -> Dataset:
    """A written dataset version (None = the latest), samples with verdicts and lineage."""
    root = Path(out_dir) / "dataset"
    versions = sorted(root.glob("v[0-9][0-9][0-9]")) if root.is_dir() else []
    if version is not None:
        versions = [v for v in versions if v.name == f"v{version:03d}"]
    if not versions:
        raise InputError(f"no dataset version {version or ''} in {root}")
    folder = versions[-1]
    return Dataset.model_validate_json((folder / "dataset.json").read_text(encoding="utf-8"))


def slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:80] or "prompt"


def _sample_id(prompt: str, parent: str | None) -> str:
    return hashlib.sha256(f"{parent}|{prompt}".encode()).hexdigest()[:12]


# -- image sources -------------------------------------------------------------------------------


class Teacher:
    """Makes the teacher's image for a prompt, or says why it cannot (None + reason)."""

    def __init__(self, config: CurateConfig, services: Services) -> None:
        self.config = config
        self.tc = config.teacher
        self.services = services
        self._folder: dict[str, Path] | None = None
        self._runner: Any = None

    async def image(self, prompt: str, seed: int) -> tuple[bytes | None, str]:
        kind = self.tc.kind
        if kind == "folder":
            return self._from_folder(prompt)
        if kind == "openai":
            return await self._from_openai(prompt)
        if kind == "agent":
            return await self._from_agent(prompt, seed)
        return await _generate(
            self.services,
            prompt,
            seed,
            model=self.tc.model,
            steps=self.tc.steps,
            width=self.config.width,
            height=self.config.height,
            guidance=None,
        ), ""

    def _from_folder(self, prompt: str) -> tuple[bytes | None, str]:
        if self._folder is None:
            root = Path(self.tc.path or "")
            if not root.is_dir():
                raise InputError(f"teacher folder {root} not found; fix: [teacher] path")
            self._folder = {}
            manifest = root / "prompts.jsonl"
            if manifest.is_file():
                for line in manifest.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        entry = json.loads(line)
                        self._folder[str(entry["prompt"])] = root / str(entry["image"])
            for p in root.iterdir():
                if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
                    self._folder.setdefault(p.stem, p)
        path = self._folder.get(prompt) or self._folder.get(slug(prompt))
        if path is None or not path.is_file():
            return None, f"the teacher folder has no image for {prompt!r}"
        return _png(path.read_bytes()), ""

    async def _from_openai(self, prompt: str) -> tuple[bytes | None, str]:
        import os

        import openai

        key = os.environ.get(self.tc.api_key_env, "") if self.tc.api_key_env else ""
        client = openai.AsyncOpenAI(base_url=self.tc.base_url, api_key=key or "not-needed")
        try:
            reply = await client.images.generate(
                model=self.tc.model or "default",
                prompt=prompt,
                size=f"{self.config.width}x{self.config.height}",
                response_format="b64_json",
                n=1,
            )
        except openai.APIError as exc:
            return None, f"teacher endpoint {self.tc.base_url} failed: {exc}"
        finally:
            await client.close()
        data = reply.data[0] if reply.data else None
        if data is None or not data.b64_json:
            return None, "the teacher endpoint returned no b64_json image"
        return _png(base64.b64decode(data.b64_json)), ""

    async def _from_agent(self, prompt: str, seed: int) -> tuple[bytes | None, str]:
        from agent.settings import RunContext
        from graphs.runner import Runner

        if self._runner is None:
            self._runner = Runner(self.services.settings, self.services)
            await self._runner.__aenter__()
        outcome = await self._runner.run(
            prompt,
            thread_id=f"curate-{uuid.uuid4().hex}",
            policy=self.tc.policy,
            context=RunContext(seed=seed),
            write_folder=False,
        )
        if outcome.status != "done" or outcome.image_sha256 is None:
            return None, f"the teacher agent run failed: {outcome.error or outcome.status}"
        return self.services.store.get_bytes(outcome.image_sha256), ""

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.__aexit__(None, None, None)
            self._runner = None


def _png(data: bytes) -> bytes:
    """A teacher's image re-encoded as PNG, decoded through the one guarded decoder (an
    images endpoint or a folder is outside data: bombs and broken files are refused)."""
    from core.images import WEB_FORMATS, ImageRejected, decode_image

    try:
        decoded = decode_image(data, (*WEB_FORMATS, "BMP", "TIFF"), max_pixels=64_000_000)
    except ImageRejected as exc:
        raise TuningError(f"a teacher image is not readable: {exc}") from exc
    out = io.BytesIO()
    decoded.image.save(out, format="PNG")
    return out.getvalue()


async def _generate(
    services: Services,
    prompt: str,
    seed: int,
    *,
    model: str | None,
    steps: int | None,
    width: int,
    height: int,
    guidance: float | None,
) -> bytes:
    """Through the configured generator: in process, or the Redis worker fleet."""
    from generators.base import GenerationRequest

    request = GenerationRequest(
        prompt=prompt,
        model=model,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        seed=seed,
    )
    result = await services.generator().generate(request)
    return services.store.get_bytes(result.image.sha256)


# -- the VLM's prompt writing --------------------------------------------------------------------

EXPAND_SYSTEM = (
    "You write prompts for a text-to-image model. Given a prompt the student model renders "
    "badly, write {n} new prompts that exercise the same skill (same kind of objects, text, "
    "counts or relations) with different subjects. Reply with only a JSON list of strings."
)
MUTATE_SYSTEM = (
    "You write prompts for a text-to-image model. Given example prompts, write {n} new prompts "
    "that are clearly different from all of them in subject and style, to keep a training set "
    "diverse. Reply with only a JSON list of strings."
)


def parse_prompt_list(text: str) -> list[str] | None:
    start, end = text.find("["), text.rfind("]")
    if start == -1 or end < start:
        return None
    try:
        items = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list):
        return None
    out = [str(p).strip() for p in items if isinstance(p, str) and p.strip()]
    return out or None


# -- the loop ------------------------------------------------------------------------------------


@dataclass
class RoundReport:
    round: int
    judged: int
    teacher_wins: int
    student_wins: int
    ties: int
    unanswered: int
    order_agreement: float | None
    """Share of answered pairs whose two orders agree (mirror each other): the judge's
    agreement with itself."""
    expanded: int
    mutated: int
    deleted: int
    dropped: int
    active: int
    train_loss: float | None
    s_per_step: float
    peak_memory_gib: float
    memory_label: str
    student: str

    def line(self) -> str:
        agree = "—" if self.order_agreement is None else f"{self.order_agreement:.0%}"
        loss = "—" if self.train_loss is None else f"{self.train_loss:.4f}"
        return (
            f"round {self.round}: judged {self.judged} (teacher {self.teacher_wins}, student "
            f"{self.student_wins}, tie {self.ties}, unanswered {self.unanswered}; order "
            f"agreement {agree}); +{self.expanded} expanded +{self.mutated} mutated "
            f"-{self.deleted} mastered -{self.dropped} dropped -> {self.active} active; "
            f"train loss {loss}, {self.s_per_step:.3f} s/step, {self.memory_label} "
            f"{self.peak_memory_gib:.2f} GiB"
        )


@dataclass
class CurateResult:
    out_dir: Path
    rounds: list[RoundReport] = field(default_factory=list)
    resumed_from: int = 0
    student: str = ""


class Curator:
    def __init__(
        self,
        config: CurateConfig,
        *,
        on_round: Callable[[RoundReport], None] | None = None,
        judge: Any = None,
    ) -> None:
        from agent.services import Services
        from agent.settings import Settings
        from evals.config import check_overrides

        self.config = config
        self.on_round = on_round
        overrides = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.settings.items()}
        check_overrides(overrides, where="curate [settings]")
        # an agent teacher runs unattended: nobody answers its clarifying questions
        overrides.setdefault("agent", {}).setdefault("ask_questions", False)
        try:
            settings = Settings().merged(overrides)
        except ValueError as exc:
            raise InputError(f"invalid [settings] in the curate config: {exc}") from exc
        if judge is None and config.judge.configured():
            raise InputError(
                f"{config.judge.configured()}; curate needs a VLM judge endpoint ([judge])"
            )
        self.services = Services(settings)
        self.judge = judge or OpenAIJudge(config.judge)
        self.teacher = Teacher(config, self.services)
        self.rng = random.Random(config.seed)
        self.out = config.out_dir

    # -- files ---------------------------------------------------------------------------

    def _save_image(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        rel = f"images/{sha[:2]}/{sha}.png"
        path = self.out / rel
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return rel

    def _write_version(self, dataset: Dataset, report: RoundReport | None) -> Path:
        folder = self.out / "dataset" / f"v{dataset.version:03d}"
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "dataset.json").write_text(dataset.model_dump_json(indent=1), encoding="utf-8")
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as f:
            for s in dataset.samples:
                f.write(s.model_dump_json() + "\n")
        if report is not None:
            (tmp / "round.json").write_text(json.dumps(report.__dict__, indent=1), "utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
        return folder

    def _student_dir(self, version: int) -> Path:
        return self.out / "student" / f"v{version:03d}"

    # -- a round -------------------------------------------------------------------------

    async def _teacher_images(self, samples: list[Sample], round_no: int) -> int:
        dropped = 0
        for s in samples:
            if s.teacher_image is not None or s.status != "active":
                continue
            data, why = await self.teacher.image(s.prompt, self._seed(s))
            if data is None:
                s.status, s.reason = "dropped", why
                dropped += 1
            else:
                s.teacher_image = self._save_image(data)
        return dropped

    def _seed(self, s: Sample) -> int:
        return self.config.seed + int(s.id[:6], 16)

    async def _round(self, dataset: Dataset, round_no: int) -> tuple[Dataset, RoundReport]:
        c = self.config
        samples = [s.model_copy(deep=True) for s in dataset.samples]
        active = [s for s in samples if s.status == "active"]
        dropped = await self._teacher_images(active, round_no)
        active = [s for s in active if s.status == "active"]
        counts = {"teacher": 0, "student": 0, "tie": 0, "unanswered": 0}
        agree = answered = 0
        for s in active:
            student_png = await _generate(
                self.services,
                s.prompt,
                self._seed(s),
                model=dataset.student,
                steps=c.steps,
                width=c.width,
                height=c.height,
                guidance=c.guidance_scale,
            )
            s.student_image = self._save_image(student_png)
            assert s.teacher_image is not None
            teacher_png = (self.out / s.teacher_image).read_bytes()
            ab = await self.judge.prefer(teacher_png, student_png, s.prompt)
            ba = await self.judge.prefer(student_png, teacher_png, s.prompt)
            s.orders = [ab, ba]
            outcome = both_orders(ab, ba)
            if ab is not None and ba is not None:
                answered += 1
                mirror = {"first": "second", "second": "first", "tie": "tie"}
                agree += int(mirror[ab] == ba)
            verdict: Verdict = (
                "unanswered"
                if outcome is None
                else "teacher"
                if outcome > 0
                else "student"
                if outcome < 0
                else "tie"
            )
            s.verdict = verdict
            s.history.append(verdict)
            counts[verdict] += 1
        # The seed's rules: delete what the student masters, expand what it fails, keep ties.
        deleted = 0
        new: list[Sample] = []
        for s in active:
            if s.verdict == "student":
                s.status, s.reason = "deleted", f"mastered in round {round_no}"
                deleted += 1
            elif s.verdict == "teacher" and c.evolve.expand_n:
                variants = await self._ask(
                    EXPAND_SYSTEM.format(n=c.evolve.expand_n), f"Prompt: {s.prompt}"
                )
                for p in variants[: c.evolve.expand_n]:
                    new.append(
                        Sample(
                            id=_sample_id(p, s.id),
                            prompt=p,
                            op="expand",
                            parent=s.id,
                            born=round_no,
                        )  # fmt: skip
                    )
        kept = [s for s in active if s.status == "active"]
        if c.evolve.mutate_n and kept:
            examples = self.rng.sample(kept, k=min(3, len(kept)))
            variants = await self._ask(
                MUTATE_SYSTEM.format(n=c.evolve.mutate_n),
                "Examples:\n" + "\n".join(f"- {s.prompt}" for s in examples),
            )
            for p in variants[: c.evolve.mutate_n]:
                new.append(
                    Sample(
                        id=_sample_id(p, examples[0].id),
                        prompt=p,
                        op="mutate",
                        parent=examples[0].id,
                        born=round_no,
                    )  # fmt: skip
                )
        known = {s.prompt for s in samples}
        new = [s for s in new if s.prompt not in known]
        room = max(0, c.evolve.max_samples - len(kept))
        new = new[:room]
        dropped += await self._teacher_images(new, round_no)
        samples += new
        version = Dataset(version=round_no, student=dataset.student, samples=samples)
        loss, meter = self._train(version, round_no)
        student = str(self._student_dir(round_no))
        report = RoundReport(
            round=round_no,
            judged=len(active),
            teacher_wins=counts["teacher"],
            student_wins=counts["student"],
            ties=counts["tie"],
            unanswered=counts["unanswered"],
            order_agreement=agree / answered if answered else None,
            expanded=sum(1 for s in new if s.op == "expand" and s.status == "active"),
            mutated=sum(1 for s in new if s.op == "mutate" and s.status == "active"),
            deleted=deleted,
            dropped=dropped,
            active=len(version.active()),
            train_loss=loss,
            s_per_step=meter.s_per_step() if meter.steps else 0.0,
            peak_memory_gib=meter.peak_memory_gib(),
            memory_label=meter.memory_label(),
            student=student,
        )
        self._write_version(version, report)
        return Dataset(version=round_no, student=student, samples=samples), report

    async def _ask(self, system: str, text: str) -> list[str]:
        answer = await self.judge.ask([], system, text, parse_prompt_list)
        return list(answer or [])

    # -- training ------------------------------------------------------------------------

    def _train(self, dataset: Dataset, round_no: int) -> tuple[float | None, StepMeter]:
        """Fine-tune the student's LoRA (continuing the previous round's) on the active
        samples' teacher images with the denoising loss; writes student/vNNN."""
        import torch
        from PIL import Image
        from safetensors.torch import load_file, save_file

        c, t = self.config, self.config.train
        prec = precision(t.device, t.mixed_precision)
        meter = StepMeter(prec.device)
        train = [s for s in dataset.active() if s.teacher_image]
        pipe = load_pipeline(c.student, prec)
        params = add_lora(pipe, rank=t.rank, alpha=t.alpha, targets=t.targets, seed=c.seed)
        previous = self._student_dir(round_no - 1) / "lora.safetensors"
        if previous.is_file():
            set_lora_state(pipe.unet, load_file(str(previous)))
            for p in params:
                p.data = p.data.float()
        losses: list[float] = []
        if train:
            opt = torch.optim.AdamW(params, lr=t.lr)
            for step in range(t.steps):
                batch = [train[(step * t.batch_size + i) % len(train)] for i in range(t.batch_size)]
                images = []
                for s in batch:
                    with Image.open(self.out / str(s.teacher_image)) as im:
                        images.append(im.convert("RGB"))
                x = from_pil(images, t.resolution, t.resolution, prec.device)
                seeds = [
                    c.seed + round_no * 1_000_003 + step * t.batch_size + i
                    for i in range(len(batch))
                ]
                meter.start()
                opt.zero_grad(set_to_none=True)
                loss = denoising_loss(pipe, x, [s.prompt for s in batch], seeds, prec)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(float(loss.detach()))
                meter.tick()
        folder = self._student_dir(round_no)
        save_tuned_folder(
            pipe,
            folder,
            c.student,
            {
                "method": "curate",
                "name": c.name,
                "round": round_no,
                "dataset": f"dataset/v{round_no:03d}",
                "train_samples": len(train),
                "lora": {"rank": t.rank, "alpha": t.alpha, "targets": t.targets},
            },
        )
        save_file(lora_state(pipe.unet), str(folder / "lora.safetensors"))
        del pipe
        return (sum(losses) / len(losses) if losses else None), meter

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> CurateResult:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        state_path = self.out / "state.json"
        result = CurateResult(out_dir=self.out)
        if state_path.is_file():
            state = json.loads(state_path.read_text(encoding="utf-8"))
            dataset = load_dataset(self.out, int(state["round"]))
            dataset = Dataset(
                version=dataset.version, student=str(state["student"]), samples=dataset.samples
            )
            result.resumed_from = int(state["round"])
            result.rounds = [RoundReport(**r) for r in state.get("reports", [])]
        else:
            seeds = [Sample(id=_sample_id(p, None), prompt=p) for p in dict.fromkeys(c.prompts)]
            dataset = Dataset(version=0, student=c.student, samples=seeds)
            self._write_version(dataset, None)
        try:
            for round_no in range(dataset.version + 1, c.rounds + 1):
                dataset, report = await self._round(dataset, round_no)
                result.rounds.append(report)
                state = {
                    "round": round_no,
                    "student": dataset.student,
                    "reports": [r.__dict__ for r in result.rounds],
                }
                tmp = state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
                tmp.replace(state_path)
                if self.on_round:
                    self.on_round(report)
        finally:
            await self.teacher.aclose()
            await self.services.aclose()
        result.student = dataset.student
        self._write_report(result)
        return result

    def _write_report(self, result: CurateResult) -> None:
        lines = [
            f"# Curated training: {self.config.name}",
            "",
            f"Student `{self.config.student}`, teacher {self.config.teacher.kind}, judge "
            f"`{getattr(self.judge, 'name', '?')}`. Latest student: `{result.student}`.",
            "",
            "| round | judged | teacher | student | tie | unanswered | order agreement | "
            "expanded | mutated | mastered | active | train loss |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result.rounds:
            agree = "—" if r.order_agreement is None else f"{r.order_agreement:.0%}"
            loss = "—" if r.train_loss is None else f"{r.train_loss:.4f}"
            lines.append(
                f"| {r.round} | {r.judged} | {r.teacher_wins} | {r.student_wins} | {r.ties} | "
                f"{r.unanswered} | {agree} | {r.expanded} | {r.mutated} | {r.deleted} | "
                f"{r.active} | {loss} |"
            )
        (self.out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_curate(
    config: CurateConfig, *, on_round: Callable[[RoundReport], None] | None = None
) -> CurateResult:
    return asyncio.run(Curator(config, on_round=on_round).run())
