"""Differentiable judges for Dual-Process tuning: log p("yes") to a question about an image.

Dual-Process distils a deliberative VLM into a feed-forward generator by backpropagating the
VLM's rating into the generator's weights. That needs a judge whose answer is a function of the
pixels with a gradient, so both judges here preprocess images with torch ops (resize,
center crop, normalize), never with PIL:

- `VLMJudge`: any transformers image-text-to-text model whose processor gives `pixel_values`
  as [images, 3, H, W] (LLaVA 1.5, PaliGemma, BLIP-2, InstructBLIP ...). The question (and
  optional reference images: the image prompts) go in as text/images; the score is the
  log-probability of the "yes" token(s) at the answer position, over the whole vocabulary or
  normalized over yes/no.
- `CLIPJudge`: the cheap judge: p(yes) = softmax of CLIP similarities to a "yes" caption (and/or
  a reference image) against a "no" caption.

Questions may contain `{prompt}` (commonsense tasks: "Does the image show {prompt}?").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuning.lora_diffusers import TuningError

if TYPE_CHECKING:
    import torch
    from PIL import Image


class Question(BaseModel):
    """One yes/no question the tuned generator should make true."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="Asked to the VLM judge, e.g. 'Is the horizon in the top third?'")
    yes: str | None = Field(
        default=None, description="CLIP judge: a caption true when the answer is yes (= text)."
    )
    no: str = Field(default="an image", description="CLIP judge: the caption it competes with.")
    images: list[str] = Field(
        default_factory=list,
        description="Image prompts (files): shown to the VLM after the generated image; the CLIP "
        "judge adds their embedding to the yes side.",
    )
    weight: float = Field(default=1.0, gt=0)


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["clip", "vlm"] = "clip"
    model: str = Field(
        default="ViT-B-32",
        description="clip: an open_clip model name (or a model config .json file); vlm: a "
        "transformers model id or folder (e.g. llava-hf/llava-1.5-7b-hf).",
    )
    pretrained: str | None = Field(
        default="openai", description="clip: open_clip pretrained tag or weights file."
    )
    allow_random: bool = Field(
        default=False, description="clip: allow pretrained=None (tests only; a random judge)."
    )
    clip_scale: float | None = Field(
        default=None, gt=0, description="clip: logit scale (None = the model's own, ~100)."
    )
    score: Literal["vocab", "yes_no"] = Field(
        default="vocab",
        description="vlm: log p(yes) over the whole vocabulary, or normalized over yes/no.",
    )
    prompt_template: str | None = Field(
        default=None,
        description="vlm: used when the processor has no chat template; {images} = the image "
        "tokens, {question} = the question.",
    )
    suffix: str = Field(default=" Answer yes or no.", description="vlm: appended to questions.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    local_files_only: bool = False

    @field_validator("pretrained")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        """TOML has no null: pretrained = "" means no pretrained weights."""
        return v or None


class Judge(Protocol):
    name: str

    def log_p_yes(
        self, images: torch.Tensor, prompts: Sequence[str], questions: Sequence[Question]
    ) -> torch.Tensor:
        """[B, Q] log-probabilities of "yes", differentiable in `images` ([B, 3, H, W], 0..1)."""
        ...


def _field(d: Any, key: str) -> Any:
    if d is None:
        return None
    if isinstance(d, dict):
        return d.get(key)
    return getattr(d, key, None)


@dataclass
class Preprocess:
    """Resize (shortest edge or exact size), optional center crop, normalize: in torch."""

    shortest_edge: int | None
    size: tuple[int, int] | None
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F  # noqa: N812

        x = images.float()
        h, w = x.shape[-2:]
        if self.size is not None:
            x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True)
        elif self.shortest_edge is not None:
            s = self.shortest_edge / min(h, w)
            x = F.interpolate(
                x,
                size=(max(1, round(h * s)), max(1, round(w * s))),
                mode="bicubic",
                antialias=True,
            )
        if self.crop is not None:
            ch, cw = self.crop
            h, w = x.shape[-2:]
            top, left = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
            x = x[..., top : top + ch, left : left + cw]
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _load_images(paths: Sequence[str], base: Path | None) -> list[Image.Image]:
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in paths:
        path = Path(p) if base is None or Path(p).is_absolute() else base / p
        try:
            with Image.open(path) as im:
                out.append(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise TuningError(
                f"image prompt {path} cannot be read ({e}); fix: the task file"
            ) from e
    return out


class CLIPJudge:
    """p(yes) = softmax(scale * [cos(img, yes anchor), cos(img, no caption)])[0]."""

    def __init__(self, config: JudgeConfig, device: str, base: Path | None = None) -> None:
        import open_clip
        import torch

        if config.pretrained is None and not config.allow_random:
            raise TuningError(
                "the CLIP judge has no pretrained weights (pretrained unset): its yes/no would "
                "be noise; fix: [judge] pretrained = 'openai' (or a weights file), or "
                "allow_random = true for tests"
            )
        name = config.model
        if name.endswith(".json") and Path(name).is_file():
            # an open_clip model config file (open_clip names the model after the file)
            open_clip.add_model_config(name)
            name = Path(name).stem
        try:
            model, _, _ = open_clip.create_model_and_transforms(
                name, pretrained=config.pretrained, device=device
            )
        except (RuntimeError, ValueError, OSError) as e:
            raise TuningError(
                f"open_clip model {config.model!r} / {config.pretrained!r} cannot be loaded "
                f"({e}); fix: [judge] model/pretrained (weights must be on disk offline)"
            ) from e
        model.eval().requires_grad_(False)
        self.model: Any = model
        self.tokenizer = open_clip.get_tokenizer(name)
        self.device = device
        self.base = base
        self.name = f"clip:{name}"
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = model.visual.image_size
        side = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.pre = Preprocess(
            shortest_edge=side,
            size=None,
            crop=(side, side),
            mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        )
        self.scale = config.clip_scale or float(torch.clamp(model.logit_scale.exp(), max=100.0))
        self._text: dict[str, torch.Tensor] = {}
        self._image: dict[str, torch.Tensor] = {}

    def _text_emb(self, text: str) -> torch.Tensor:
        import torch

        if text not in self._text:
            with torch.no_grad():
                t = self.model.encode_text(self.tokenizer([text]).to(self.device))
            self._text[text] = torch.nn.functional.normalize(t.float(), dim=-1)[0]
        return self._text[text]

    def _image_emb(self, path: str) -> torch.Tensor:
        import torch

        if path not in self._image:
            im = _load_images([path], self.base)[0]
            from tuning.lora_diffusers import from_pil

            x = from_pil([im], im.height, im.width, self.device)
            with torch.no_grad():
                e = self.model.encode_image(self.pre(x))
            self._image[path] = torch.nn.functional.normalize(e.float(), dim=-1)[0]
        return self._image[path]

    def log_p_yes(
        self, images: torch.Tensor, prompts: Sequence[str], questions: Sequence[Question]
    ) -> torch.Tensor:
        import torch

        emb = torch.nn.functional.normalize(
            self.model.encode_image(self.pre(images)).float(), dim=-1
        )
        cols = []
        for q in questions:
            yes_rows, no_rows = [], []
            for prompt in prompts:
                anchor = self._text_emb((q.yes or q.text).replace("{prompt}", prompt))
                for path in q.images:
                    anchor = anchor + self._image_emb(path)
                yes_rows.append(torch.nn.functional.normalize(anchor, dim=-1))
                no_rows.append(self._text_emb(q.no.replace("{prompt}", prompt)))
            yes, no = torch.stack(yes_rows), torch.stack(no_rows)
            logits = self.scale * torch.stack([(emb * yes).sum(-1), (emb * no).sum(-1)], -1)
            cols.append(torch.log_softmax(logits, dim=-1)[:, 0])
        return torch.stack(cols, dim=1)


class VLMJudge:
    """A transformers VLM answering yes/no; the score is read from the next-token logits."""

    YES = ("yes", "Yes", " yes", " Yes", "YES")
    NO = ("no", "No", " no", " No", "NO")

    def __init__(self, config: JudgeConfig, device: str, base: Path | None = None) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from core.device import resolve_dtype

        self.config = config
        self.device = device
        self.base = base
        self.name = f"vlm:{config.model}"
        dtype = resolve_dtype(config.dtype, device)
        try:
            self.processor: Any = AutoProcessor.from_pretrained(
                config.model, local_files_only=config.local_files_only
            )
            model = AutoModelForImageTextToText.from_pretrained(
                config.model, dtype=dtype, local_files_only=config.local_files_only
            )
        except (OSError, ValueError) as e:
            raise TuningError(
                f"VLM judge {config.model!r} cannot be loaded ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); fix: `hf download {config.model}` "
                "where there is internet, or point [judge] model at a local folder"
            ) from e
        loaded: Any = model
        self.model: Any = loaded.to(device).eval().requires_grad_(False)
        self.dtype = dtype
        tok = self.processor.tokenizer
        self.yes_ids = self._ids(tok, self.YES)
        self.no_ids = self._ids(tok, self.NO)
        if not self.yes_ids or not self.no_ids:
            raise TuningError(f"the tokenizer of {config.model} has no 'yes'/'no' token")
        self.pre = self._preprocess()
        self._inputs: dict[tuple[str, tuple[str, ...]], dict[str, torch.Tensor]] = {}

    @staticmethod
    def _ids(tok: Any, words: Sequence[str]) -> list[int]:
        unk = getattr(tok, "unk_token_id", None)
        ids: list[int] = []
        for w in words:
            enc = tok.encode(w, add_special_tokens=False)
            if enc and enc[0] != unk and enc[0] not in ids:
                ids.append(int(enc[0]))
        return ids

    def _preprocess(self) -> Preprocess:
        ip = self.processor.image_processor
        size, crop = _field(ip, "size"), _field(ip, "crop_size")
        shortest = _field(size, "shortest_edge")
        h, w = _field(size, "height"), _field(size, "width")
        do_crop = bool(_field(ip, "do_center_crop")) and crop is not None
        return Preprocess(
            shortest_edge=int(shortest) if shortest else None,
            size=(int(h), int(w)) if h and w and not shortest else None,
            crop=(int(_field(crop, "height")), int(_field(crop, "width"))) if do_crop else None,
            mean=tuple(_field(ip, "image_mean") or (0.5, 0.5, 0.5)),
            std=tuple(_field(ip, "image_std") or (0.5, 0.5, 0.5)),
        )

    def _text(self, question: str, n_images: int) -> str:
        proc = self.processor
        if getattr(proc, "chat_template", None) and self.config.prompt_template is None:
            content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_images)]
            content.append({"type": "text", "text": question})
            messages = [{"role": "user", "content": content}]
            return str(
                proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            )
        template = self.config.prompt_template or "USER: {images}\n{question} ASSISTANT:"
        token = getattr(proc, "image_token", "<image>")
        return template.format(images=token * n_images, question=question)

    def _prepared(self, question: Question, prompt: str) -> dict[str, torch.Tensor]:
        """Token ids for (question, prompt) and the reference images' pixels, built once with
        the model's own processor; the generated image's slot is filled per step."""
        from PIL import Image

        text = question.text.replace("{prompt}", prompt) + self.config.suffix
        key = (text, tuple(question.images))
        if key not in self._inputs:
            refs = _load_images(question.images, self.base)
            dummy = Image.new("RGB", (512, 512), "gray")
            enc = self.processor(
                text=[self._text(text, 1 + len(refs))], images=[dummy, *refs], return_tensors="pt"
            )
            pv = enc.get("pixel_values")
            if pv is None or pv.ndim != 4 or pv.shape[0] != 1 + len(refs):
                raise TuningError(
                    f"{self.config.model}: its processor lays images out as "
                    f"{None if pv is None else tuple(pv.shape)}, not [images, 3, H, W]; the "
                    "differentiable judge supports LLaVA-1.5-, PaliGemma- and BLIP-2-style "
                    "processors (one fixed-size tile per image)"
                )
            mine = self.pre(_to_tensor(dummy))
            if tuple(mine.shape[-2:]) != tuple(pv.shape[-2:]):
                raise TuningError(
                    f"{self.config.model}: differentiable preprocessing gives "
                    f"{tuple(mine.shape[-2:])} but the processor {tuple(pv.shape[-2:])}"
                )
            self._inputs[key] = {k: v.to(self.device) for k, v in enc.items()}
        return self._inputs[key]

    def log_p_yes(
        self, images: torch.Tensor, prompts: Sequence[str], questions: Sequence[Question]
    ) -> torch.Tensor:
        import torch

        pixels = self.pre(images).to(self.dtype)
        cols = []
        for q in questions:
            # one forward per distinct prompt text, batched over the images that share it
            groups: dict[str, list[int]] = {}
            for i, prompt in enumerate(prompts):
                groups.setdefault(prompt, []).append(i)
            rows: dict[int, torch.Tensor] = {}
            for prompt, idx in groups.items():
                enc = self._prepared(q, prompt)
                refs = enc["pixel_values"][1:].to(self.dtype)
                pv = torch.cat([torch.cat([pixels[i : i + 1], refs]) for i in idx])
                n = len(idx)
                inputs = {
                    k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v
                    for k, v in enc.items()
                    if k != "pixel_values"
                }
                out = self.model(**inputs, pixel_values=pv)
                logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
                yes = torch.logsumexp(logp[:, self.yes_ids], dim=-1)
                if self.config.score == "yes_no":
                    yes = yes - torch.logsumexp(logp[:, self.yes_ids + self.no_ids], dim=-1)
                for j, i in enumerate(idx):
                    rows[i] = yes[j]
            cols.append(torch.stack([rows[i] for i in range(len(prompts))]))
        return torch.stack(cols, dim=1)


def _to_tensor(im: Image.Image) -> torch.Tensor:
    from tuning.lora_diffusers import from_pil

    return from_pil([im], im.height, im.width, "cpu")


def build_judge(config: JudgeConfig, device: str, base: Path | None = None) -> Judge:
    if config.kind == "clip":
        return CLIPJudge(config, device, base)
    return VLMJudge(config, device, base)
