"""`groundwork tune feedback`: teach the generator a control from a judge's yes/no (Dual-Process).

A one/few-step generator (sd-turbo class) makes an image *with gradients* through its sampling
steps; a differentiable judge (a VLM, or CLIP as the cheap one) answers the task's questions
about it; the loss is the judge's -log p("yes"), backpropagated into a LoRA on the UNet. The
task file holds the questions (text, optional image prompts) and the prompts; held-out prompts
and seeds measure whether the control generalizes rather than memorizes noise.

    out_dir = "tune-out/blue"
    model = "stabilityai/sd-turbo"
    task = "blue.toml"            # or an inline [task] table
    steps = 200
    [judge]
    kind = "vlm"
    model = "llava-hf/llava-1.5-7b-hf"

The run folder holds `checkpoints/step-NNNNNN/` (LoRA, optimizer, state), `metrics.jsonl`
(the judge's curve), the final tuned folder (`groundwork_lora.json` + LoRA: usable as a
generator model) and `report/` (before/after grids, curve PNG, report.md). Rerunning the same
command resumes from the last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import InputError
from tuning.feedback_judge import Judge, JudgeConfig, Question, build_judge
from tuning.lora_diffusers import (
    DEFAULT_TARGETS,
    Precision,
    StepMeter,
    TuningError,
    add_lora,
    format_eta,
    grid,
    load_pipeline,
    lora_state,
    precision,
    sample,
    save_tuned_folder,
    set_lora_state,
    to_pil,
)

if TYPE_CHECKING:
    import torch


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeedbackTask(_Strict):
    """What to teach: questions the images should answer "yes" to, on which prompts."""

    prompts: list[str] = Field(min_length=1, description="Training prompts (cycled).")
    heldout_prompts: list[str] = Field(
        default_factory=list, description="Measured, never trained on (default: the prompts)."
    )
    questions: list[Question] = Field(min_length=1)


class LoraConfig(_Strict):
    rank: int = Field(default=8, ge=1, le=256)
    alpha: float = Field(default=8.0, gt=0)
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))


class FeedbackConfig(_Strict):
    name: str = "feedback"
    out_dir: Path = Path("tune-out/feedback")
    model: str = Field(default="stabilityai/sd-turbo", description="Base diffusers model.")
    local_files_only: bool = False
    task: Path | FeedbackTask
    steps: int = Field(default=200, ge=1)
    batch_size: int = Field(default=1, ge=1, le=64)
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    sample_steps: int = Field(default=1, ge=1, le=8, description="Denoising steps (turbo: 1).")
    guidance_scale: float = Field(default=0.0, ge=0)
    width: int = Field(default=512, ge=16, le=2048)
    height: int = Field(default=512, ge=16, le=2048)
    seed: int = Field(default=0, ge=0, description="LoRA init and training-seed stream.")
    heldout_seeds: list[int] = Field(default_factory=lambda: [1_000_000, 1_000_001])
    eval_every: int = Field(default=25, ge=1)
    checkpoint_every: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every: int = Field(default=1, ge=1)
    device: str = "auto"
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        default="auto", description="auto: on with CUDA (memory), off on CPU (speed)."
    )
    grid_px: int = Field(default=128, ge=16, le=1024)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    @model_validator(mode="after")
    def _check(self) -> FeedbackConfig:
        train = range(self.seed * 10_000_000, self.seed * 10_000_000 + self.steps * self.batch_size)
        clash = sorted(s for s in self.heldout_seeds if s in train)
        if clash:
            raise ValueError(
                f"held-out seeds {clash} are also training seeds (seed*10_000_000 + step); "
                "pick others"
            )
        if not self.heldout_seeds:
            raise ValueError("heldout_seeds is empty: nothing would measure generalization")
        return self

    def train_seeds(self, step: int) -> list[int]:
        first = self.seed * 10_000_000 + step * self.batch_size
        return list(range(first, first + self.batch_size))


def load_feedback_config(path: Path | str, **overrides: Any) -> tuple[FeedbackConfig, FeedbackTask]:
    """Config + task; relative paths (out_dir, task, image prompts) are relative to the file
    that names them."""
    path = Path(path).absolute()  # paths in it (and in the manifests) stay valid
    data = _read_toml(path, "feedback config")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = FeedbackConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(f"invalid feedback config {path}: {loc}: {first['msg']}") from exc
    base = path.parent
    if not config.out_dir.is_absolute():
        config.out_dir = base / config.out_dir
    model_path = base / config.model
    if not Path(config.model).is_absolute() and model_path.exists():
        config.model = str(model_path)
    judge_path = base / config.judge.model
    if not Path(config.judge.model).is_absolute() and judge_path.exists():
        config.judge.model = str(judge_path)
    if isinstance(config.task, FeedbackTask):
        task, task_base = config.task, base
    else:
        task_path = config.task if config.task.is_absolute() else base / config.task
        try:
            task = FeedbackTask.model_validate(_read_toml(task_path, "task file"))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise InputError(f"invalid task file {task_path}: {loc}: {first['msg']}") from exc
        task_base = task_path.parent
    for q in task.questions:
        q.images = [str(p if Path(p).is_absolute() else task_base / p) for p in q.images]
        for p in q.images:
            if not Path(p).is_file():
                raise InputError(f"image prompt {p} of question {q.text!r} not found")
    if not task.heldout_prompts:
        task.heldout_prompts = list(task.prompts)
    return config, task


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{what} {path} not found") from exc
    try:
        if path.suffix == ".json":
            data: dict[str, Any] = json.loads(text)
            return data
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what} {path} is not valid TOML/JSON: {exc}") from exc


@dataclass
class Progress:
    """One training step, for the CLI's progress line."""

    step: int
    total: int
    loss: float
    p_yes: float
    s_per_step: float
    eta_s: float
    peak_memory_gib: float
    memory_label: str
    heldout: dict[str, Any] | None = None

    def line(self) -> str:
        text = (
            f"step {self.step}/{self.total}  loss {self.loss:.4f}  p(yes) {self.p_yes:.3f}  "
            f"{self.s_per_step:.3f} s/step  ETA {format_eta(self.eta_s)}  "
            f"{self.memory_label} {self.peak_memory_gib:.2f} GiB"
        )
        if self.heldout:
            text += (
                f"  | held-out loss {self.heldout['loss']:.4f} p(yes) {self.heldout['p_yes']:.3f}"
            )
        return text


@dataclass
class FeedbackResult:
    out_dir: Path
    tuned: Path
    report: Path
    steps: int
    resumed_from: int
    before: dict[str, Any]
    after: dict[str, Any]
    s_per_step: float
    peak_memory_gib: float
    memory_label: str
    curve: list[dict[str, Any]] = field(default_factory=list)


def _fingerprint(config: FeedbackConfig, task: FeedbackTask) -> str:
    """What a checkpoint must agree with to be resumed (not steps: a run may be extended)."""
    keep = config.model_dump(
        mode="json", exclude={"steps", "eval_every", "checkpoint_every", "log_every", "out_dir"}
    )
    keep["task"] = task.model_dump(mode="json")
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class FeedbackTrainer:
    """Holds the pipeline, the LoRA, the judge and the optimizer; `run()` trains to the end."""

    def __init__(
        self,
        config: FeedbackConfig,
        task: FeedbackTask,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        judge: Judge | None = None,
    ) -> None:
        import torch

        self.config = config
        self.task = task
        self.on_progress = on_progress
        self.prec: Precision = precision(config.device, config.mixed_precision)
        self.pipe = load_pipeline(config.model, self.prec, local_files_only=config.local_files_only)
        self.params = add_lora(
            self.pipe,
            rank=config.lora.rank,
            alpha=config.lora.alpha,
            targets=config.lora.targets,
            seed=config.seed,
        )
        ckpt = config.gradient_checkpointing
        self.checkpointing = ckpt == "on" or (
            ckpt == "auto" and self.prec.device.startswith("cuda")
        )
        self.judge = judge or build_judge(config.judge, self.prec.device)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.prec.autocast and self.prec.weights == torch.float16
        )
        self.weights = torch.tensor([q.weight for q in task.questions], device=self.prec.device)
        self.fingerprint = _fingerprint(config, task)
        self.step = 0
        self.curve: list[dict[str, Any]] = []

    # -- the pieces ----------------------------------------------------------------------

    def images(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        c = self.config
        return sample(
            self.pipe,
            prompts,
            seeds,
            steps=c.sample_steps,
            guidance=c.guidance_scale,
            height=c.height,
            width=c.width,
            prec=self.prec,
            checkpointing=self.checkpointing,
        )

    def loss(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted mean of -log p(yes), [B, Q] log p(yes))."""
        logp = self.judge.log_p_yes(images, prompts, self.task.questions)
        loss = -(logp * self.weights).sum(1).mean() / self.weights.sum()
        return loss, logp

    def train_step(self) -> tuple[float, float]:
        import torch

        c = self.config
        prompts = [
            self.task.prompts[(self.step * c.batch_size + i) % len(self.task.prompts)]
            for i in range(c.batch_size)
        ]
        self.optimizer.zero_grad(set_to_none=True)
        loss, logp = self.loss(self.images(prompts, c.train_seeds(self.step)), prompts)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return float(loss.detach()), float(logp.detach().exp().mean())

    def evaluate(self, *, keep_images: bool = False) -> dict[str, Any]:
        """Loss and p(yes) per question on held-out prompts x held-out seeds (no gradient)."""
        import torch

        rows: list[list[Any]] = []
        losses, logps = [], []
        with torch.no_grad():
            for prompt in self.task.heldout_prompts:
                seeds = list(self.config.heldout_seeds)
                images = self.images([prompt] * len(seeds), seeds)
                loss, logp = self.loss(images, [prompt] * len(seeds))
                losses.append(float(loss))
                logps.append(logp)
                if keep_images:
                    rows.append(to_pil(images))
        allp = torch.cat(logps).exp()
        out: dict[str, Any] = {
            "step": self.step,
            "loss": sum(losses) / len(losses),
            "p_yes": float(allp.mean()),
            "p_yes_by_question": [round(float(v), 6) for v in allp.mean(0)],
        }
        if keep_images:
            out["images"] = rows
        return out

    # -- checkpoints ---------------------------------------------------------------------

    @property
    def ckpt_dir(self) -> Path:
        return self.config.out_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        import torch
        from safetensors.torch import save_file

        folder = self.ckpt_dir / f"step-{self.step:06d}"
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(lora_state(self.pipe.unet), str(tmp / "lora.safetensors"))
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()},
            tmp / "optimizer.pt",
        )
        state = {"step": self.step, "fingerprint": self.fingerprint, "curve": self.curve}
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
        old = sorted(p for p in self.ckpt_dir.glob("step-*") if not p.name.endswith(".tmp"))
        for stale in old[: -self.config.keep_checkpoints]:
            shutil.rmtree(stale, ignore_errors=True)
        return folder

    def latest_checkpoint(self) -> Path | None:
        if not self.ckpt_dir.is_dir():
            return None
        done = sorted(
            p
            for p in self.ckpt_dir.glob("step-*")
            if not p.name.endswith(".tmp") and (p / "state.json").is_file()
        )
        return done[-1] if done else None

    def resume(self, folder: Path) -> None:
        import torch
        from safetensors.torch import load_file

        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        if state.get("fingerprint") != self.fingerprint:
            raise TuningError(
                f"checkpoint {folder} was made with another config or task; fix: use a new "
                "out_dir, or pass --restart to discard it"
            )
        set_lora_state(self.pipe.unet, load_file(str(folder / "lora.safetensors")))
        for p in self.params:
            p.data = p.data.float()
        opt = torch.load(folder / "optimizer.pt", map_location=self.prec.device, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scaler.load_state_dict(opt["scaler"])
        self.step = int(state["step"])
        self.curve = list(state.get("curve") or [])

    # -- the run -------------------------------------------------------------------------

    def run(self, *, restart: bool = False) -> FeedbackResult:
        c = self.config
        c.out_dir.mkdir(parents=True, exist_ok=True)
        report_dir = c.out_dir / "report"
        report_dir.mkdir(exist_ok=True)
        if restart:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            (c.out_dir / "metrics.jsonl").unlink(missing_ok=True)
        latest = self.latest_checkpoint()
        resumed_from = 0
        if latest is not None:
            self.resume(latest)
            resumed_from = self.step
        before_path = c.out_dir / "before.json"
        if before_path.is_file() and (report_dir / "before.png").is_file():
            before = json.loads(before_path.read_text(encoding="utf-8"))
        else:
            if self.step:
                raise TuningError(
                    f"{c.out_dir} has a checkpoint but no before.json; fix: --restart"
                )
            before = self.evaluate(keep_images=True)
            self._grid(before.pop("images"), report_dir / "before.png")
            before_path.write_text(json.dumps(before), encoding="utf-8")
            self._record({"kind": "heldout", **before})
        meter = StepMeter(self.prec.device)
        final: dict[str, Any] | None = None  # the last step's held-out evaluation (with images)
        # a held-out evaluation costs about (prompts x seeds) no-grad samples every eval_every
        n_eval = len(self.task.heldout_prompts) * len(c.heldout_seeds)
        eval_overhead = 1.0 + n_eval / (3.0 * c.batch_size * c.eval_every)
        while self.step < c.steps:
            meter.start()
            loss, p_yes = self.train_step()
            meter.tick()
            self._record({"kind": "train", "step": self.step, "loss": loss, "p_yes": p_yes})
            heldout = None
            if self.step % c.eval_every == 0 or self.step == c.steps:
                heldout = self.evaluate(keep_images=self.step == c.steps)
                if self.step == c.steps:
                    final = heldout
                    heldout = {k: v for k, v in heldout.items() if k != "images"}
                self._record({"kind": "heldout", **heldout})
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                self.save_checkpoint()
            if self.on_progress and (
                self.step % c.log_every == 0 or heldout is not None or self.step == c.steps
            ):
                spp = meter.s_per_step()
                self.on_progress(
                    Progress(
                        step=self.step,
                        total=c.steps,
                        loss=loss,
                        p_yes=p_yes,
                        s_per_step=spp,
                        eta_s=spp * (c.steps - self.step) * eval_overhead,
                        peak_memory_gib=meter.peak_memory_gib(),
                        memory_label=meter.memory_label(),
                        heldout=heldout,
                    )
                )
        after = final if final is not None else self.evaluate(keep_images=True)
        self._grid(after.pop("images"), report_dir / "after.png")
        tuned = save_tuned_folder(
            self.pipe,
            c.out_dir,
            c.model,
            {
                "method": "feedback",
                "name": c.name,
                "steps": self.step,
                "lora": c.lora.model_dump(),
                "judge": self.judge.name,
                "questions": [q.text for q in self.task.questions],
                "heldout_before": {"loss": before["loss"], "p_yes": before["p_yes"]},
                "heldout_after": {"loss": after["loss"], "p_yes": after["p_yes"]},
            },
        )
        result = FeedbackResult(
            out_dir=c.out_dir,
            tuned=tuned,
            report=report_dir / "report.md",
            steps=self.step,
            resumed_from=resumed_from,
            before=before,
            after=after,
            s_per_step=meter.s_per_step() if meter.steps else 0.0,
            peak_memory_gib=meter.peak_memory_gib(),
            memory_label=meter.memory_label(),
            curve=self.curve,
        )
        write_report(result, self.config, self.task, self.judge.name)
        return result

    def _record(self, row: dict[str, Any]) -> None:
        row = {k: v for k, v in row.items() if k != "images"}
        self.curve.append(row)
        with (self.config.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def _grid(self, rows: list[list[Any]], path: Path) -> None:
        grid(rows, self.config.grid_px).save(path)


def write_report(
    result: FeedbackResult, config: FeedbackConfig, task: FeedbackTask, judge: str
) -> Path:
    """report.md + curve.png beside the before/after grids."""
    report_dir = result.report.parent
    _plot_curve(result.curve, report_dir / "curve.png")
    b, a = result.before, result.after
    lines = [
        f"# Feedback tuning: {config.name}",
        "",
        f"- base model: `{config.model}`; judge: `{judge}`; LoRA rank {config.lora.rank}",
        f"- steps: {result.steps} (resumed from {result.resumed_from}); batch "
        f"{config.batch_size}; lr {config.lr}; {config.sample_steps} sampling step(s)",
        f"- time: {result.s_per_step:.3f} s/step; {result.memory_label}: "
        f"{result.peak_memory_gib:.2f} GiB",
        f"- tuned folder (use as `generator.model`): `{result.tuned}`",
        "",
        "## Held-out prompts x seeds",
        "",
        f"Prompts: {', '.join(repr(p) for p in task.heldout_prompts)}; seeds: "
        f"{config.heldout_seeds}",
        "",
        "| | loss (-log p yes) | p(yes) |",
        "|---|---|---|",
        f"| before | {b['loss']:.4f} | {b['p_yes']:.4f} |",
        f"| after | {a['loss']:.4f} | {a['p_yes']:.4f} |",
        "",
        "| question | p(yes) before | p(yes) after |",
        "|---|---|---|",
    ]
    for q, pb, pa in zip(
        task.questions, b["p_yes_by_question"], a["p_yes_by_question"], strict=True
    ):
        lines.append(f"| {q.text} | {pb:.4f} | {pa:.4f} |")
    lines += [
        "",
        "## Images (rows: held-out prompts; columns: held-out seeds)",
        "",
        "Before: ![before](before.png)",
        "",
        "After: ![after](after.png)",
        "",
        "## The judge's curve",
        "",
        "![curve](curve.png)",
        "",
    ]
    result.report.write_text("\n".join(lines), encoding="utf-8")
    return result.report


def _plot_curve(curve: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in curve if r.get("kind") == "train"]
    held = [r for r in curve if r.get("kind") == "heldout"]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, key in enumerate(("loss", "p_yes")):
        if train:
            x, y = [r["step"] for r in train], [r[key] for r in train]
            ax[i].plot(x, y, lw=0.8, color="tab:gray", label="train")
        if held:
            x, y = [r["step"] for r in held], [r[key] for r in held]
            ax[i].plot(x, y, "o-", color="tab:blue", label="held-out")
    ax[0].set_title("-log p(yes)")
    ax[1].set_title("p(yes)")
    for a in ax:
        a.set_xlabel("step")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_feedback(
    config: FeedbackConfig,
    task: FeedbackTask,
    *,
    restart: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> FeedbackResult:
    trainer = FeedbackTrainer(config, task, on_progress=on_progress)
    result = trainer.run(restart=restart)
    if not math.isfinite(result.after["loss"]):
        raise TuningError(
            "the held-out loss became non-finite (diverged); fix: lower lr, or use "
            "mixed_precision = 'bf16' instead of fp16"
        )
    return result
