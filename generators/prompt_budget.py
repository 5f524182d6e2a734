"""How many tokens of a prompt reach the text encoder, counted by the model's own tokenizer.

CLIP text encoders (SD 1.x, 2.x, SDXL) see 77 tokens, start and end tokens included, and
silently drop the rest; T5 (FLUX.1, SD3) and Qwen2.5-VL (Qwen-Image) see hundreds. A grounded
prompt that overflows loses its last facts without a word, so the agent counts before it
sends. Only tokenizer files are read (from the model folder, the HF cache, or downloaded
alone): the count works where the pipeline lives on a remote worker, and costs milliseconds
when the model ships a `tokenizer.json` (the `tokenizers` library, no torch).
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from core.imports import heavy_imports
from generators.base import ModelNotFoundError, default_model_of
from generators.families import Family, ModelInfo, info_from_configs, info_from_pipeline
from generators.tuned import tuned_base

SEQUENCE_TOKENIZERS: dict[Family, tuple[str, int]] = {
    "flux": ("tokenizer_2", 512),
    "flux_kontext": ("tokenizer_2", 512),
    "sd3": ("tokenizer_3", 256),
    "flux2": ("tokenizer", 512),
    "qwen_image": ("tokenizer", 512),
    "qwen_image_edit": ("tokenizer", 512),
    "qwen_image_edit_plus": ("tokenizer", 512),
}
"""Families whose prompt content goes through one long encoder: (its tokenizer, the pipeline's
default max_sequence_length). Their CLIP tokenizer (if any) only feeds a pooled vector."""

CLIP_MAX_TOKENS = 77
_SANE_MAX = 100_000  # transformers writes 1e30 when a tokenizer has no limit


@dataclass(frozen=True)
class TokenCounter:
    """One tokenizer and how many of its tokens (special tokens included) its encoder sees."""

    name: str
    max_tokens: int
    encode: Callable[[str], int]


class PromptBudget:
    """The prompt budget of a model: `max_tokens`, `count(text)`, `fits(text)`, `cut(text)`.

    With several encoders that each see the whole prompt (SDXL's two CLIPs) the budget is the
    smallest and the count the largest, so `fits` holds for every encoder.
    """

    def __init__(self, counters: Sequence[TokenCounter], *, model: str = "") -> None:
        if not counters:
            raise ValueError("a PromptBudget needs at least one tokenizer")
        self.counters = tuple(counters)
        self.model = model
        self.max_tokens = min(c.max_tokens for c in self.counters)

    @property
    def tokenizers(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.counters)

    def count(self, text: str) -> int:
        """Tokens `text` takes in the tightest encoder, start/end tokens included."""
        return max(c.encode(text) for c in self.counters)

    def fits(self, text: str) -> bool:
        return all(c.encode(text) <= c.max_tokens for c in self.counters)

    def cut(self, text: str) -> str:
        """The longest whole-word prefix of `text` that fits (what the encoder would keep)."""
        if self.fits(text):
            return text
        words = text.split(" ")
        lo, hi = 0, len(words)  # words[:lo] fits, words[:hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.fits(" ".join(words[:mid])):
                lo = mid
            else:
                hi = mid
        return " ".join(words[:lo])

    def __repr__(self) -> str:
        return f"PromptBudget(max_tokens={self.max_tokens}, tokenizers={self.tokenizers})"

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_pipeline(cls, pipe: Any, *, model: str = "") -> PromptBudget:
        """The budget of a loaded pipeline, from its tokenizer objects (nothing is read)."""
        info = info_from_pipeline(pipe)
        counters = [
            _counter_from_object(name, getattr(pipe, name), limit)
            for name, limit in _which(info, lambda n: _max_of(getattr(pipe, n)))
        ]
        return cls(counters, model=model or type(pipe).__name__)

    @classmethod
    def from_model(cls, model: str, *, local_files_only: bool | None = None) -> PromptBudget:
        """The budget of a model folder or hub id, loading only its tokenizer files.

        A hub id is looked up in the HF cache first (no network); only when the cache cannot
        answer and downloads are allowed (not `local_files_only`, not HF_HUB_OFFLINE) are
        `model_index.json` and the tokenizer folders fetched (kilobytes). The answer, or the
        failure, is kept per model and process (a failure for FAILURE_TTL_S), so a run never
        waits on the hub for what an earlier run already asked (issue 21.4). A tuned folder
        (LoRA on a base model) has its base model's tokenizers.
        """
        model = tuned_base(model)
        offline = bool(local_files_only) or _env_offline()
        key = (model, offline)
        with _resolve_lock:  # concurrent runs wait for one resolution, not one each
            hit = _resolved.get(key)
            if isinstance(hit, PromptBudget):
                return hit
            if hit is not None and time.monotonic() - hit[1] < FAILURE_TTL_S:
                # A copy: raising the cached object again adds every caller's frames to its
                # traceback and keeps them (and the run state in their locals) alive; a chat
                # grew by one run's graph state a turn (issue 21.10).
                raise copy.copy(hit[0]).with_traceback(None) from hit[0].__cause__
            try:
                budget = _from_model(model, offline)
            except ModelNotFoundError as e:
                _resolved[key] = (e, time.monotonic())
                raise
            _resolved[key] = budget
            return budget


FAILURE_TTL_S = 600.0
"""How long a model whose tokenizers could not be found is not asked for again."""

_resolve_lock = threading.Lock()
_resolved: dict[tuple[str, bool], PromptBudget | tuple[ModelNotFoundError, float]] = {}


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _which(info: ModelInfo, max_of: Callable[[str], int | None]) -> list[tuple[str, int]]:
    """(tokenizer name, token limit) pairs that bound the prompt for this model."""
    seq = SEQUENCE_TOKENIZERS.get(info.family)
    if seq is not None and seq[0] in info.tokenizers:
        return [seq]
    out = []
    for name in info.tokenizers:
        limit = max_of(name)
        out.append((name, limit if limit is not None and limit < _SANE_MAX else CLIP_MAX_TOKENS))
    return out


def _max_of(tokenizer: Any) -> int | None:
    value = getattr(tokenizer, "model_max_length", None)
    return int(value) if isinstance(value, int | float) and value < _SANE_MAX else None


def _counter_from_object(name: str, tokenizer: Any, limit: int) -> TokenCounter:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return _counter_from_tokenizers(name, backend, limit)

    def encode(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    return TokenCounter(name, limit, encode)


def _counter_from_tokenizers(name: str, tk: Any, limit: int) -> TokenCounter:
    """A `tokenizers.Tokenizer` counter; a copy without truncation/padding so counts are true."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(tk.to_str())
    tk.no_truncation()
    tk.no_padding()

    def encode(text: str) -> int:
        return len(tk.encode(text, add_special_tokens=True).ids)

    return TokenCounter(name, limit, encode)


def _cached_snapshot(model: str) -> Path | None:
    """The cached snapshot of a hub model with its model_index.json and every tokenizer
    folder it lists, or None (nothing cached, or only part of it): never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        root = Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    index_path = root / "model_index.json"
    if not index_path.is_file():
        return None
    index = json.loads(index_path.read_text())
    needed = [
        name
        for name, value in index.items()
        if name.startswith("tokenizer") and isinstance(value, list) and value and value[0]
    ]
    return root if all((root / name).is_dir() for name in needed) else None


def _snapshot(model: str, local_files_only: bool) -> Path:
    """The folder holding model_index.json and the tokenizer folders of `model`: a local
    folder, else the HF cache, else (when allowed) a download of just those files."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{folder} has no model_index.json, so its tokenizers cannot be found; fix: "
                "point GROUNDWORK_GENERATOR__MODEL at a diffusers pipeline folder"
            )
        return folder
    cached = _cached_snapshot(model)
    if cached is not None:
        return cached
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(
            model,
            allow_patterns=["model_index.json", "tokenizer*/*"],
            local_files_only=local_files_only,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        why = "not in the Hugging Face cache" if local_files_only else "not reachable"
        raise ModelNotFoundError(
            f"the tokenizers of generator model {model!r} are {why} "
            f"({type(e).__name__}); fix: `hf download {model} --include 'tokenizer*/*' "
            "model_index.json`, or point GROUNDWORK_GENERATOR__MODEL at a local folder"
        ) from e
    return Path(path)


def _counter_from_folder(
    name: str, folder: Path, limit_from_files: bool, limit: int
) -> TokenCounter:
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if limit_from_files:
        found = config.get("model_max_length")
        limit = (
            int(found) if isinstance(found, int | float) and found < _SANE_MAX else CLIP_MAX_TOKENS
        )
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return _counter_from_tokenizers(
            name, Tokenizer.from_file(str(folder / "tokenizer.json")), limit
        )
    heavy_imports("transformers")  # may run beside a pipeline load (issue 21.3)
    from transformers import AutoTokenizer  # slow tokenizers (vocab.json + merges.txt, spiece)

    return _counter_from_object(name, AutoTokenizer.from_pretrained(str(folder)), limit)


def _from_model(model: str, local_files_only: bool) -> PromptBudget:
    root = _snapshot(model, local_files_only)
    index = json.loads((root / "model_index.json").read_text())
    unet_config = None
    if isinstance(index.get("unet"), list) and index["unet"][0] is not None:
        unet_path = root / "unet" / "config.json"
        unet_config = json.loads(unet_path.read_text()) if unet_path.is_file() else {}
    info = info_from_configs(index, unet_config)
    if not info.tokenizers:
        raise ModelNotFoundError(
            f"generator model {model!r} lists no tokenizer in model_index.json, so its prompt "
            "budget is unknown"
        )
    seq = SEQUENCE_TOKENIZERS.get(info.family)
    counters = []
    for name, limit in _which(info, lambda n: None):
        fixed = seq is not None and seq[0] == name
        counters.append(_counter_from_folder(name, root / name, not fixed, limit))
    return PromptBudget(counters, model=model)


@runtime_checkable
class CountsTokens(Protocol):
    """A generator that counts its model's prompt budget itself (from its loaded pipeline)."""

    def prompt_budget(self, model: str | None = None) -> PromptBudget: ...


def prompt_budget(generator: Any, model: str | None = None) -> PromptBudget:
    """The budget for any `Generator`: its own `prompt_budget(model)` when it has one (the
    diffusers backend), else read from the model's tokenizer files (the queue client)."""
    if isinstance(generator, CountsTokens):
        return generator.prompt_budget(model)
    name = model or default_model_of(generator)
    if not name:
        raise ModelNotFoundError(
            "the generator names no default model, so its prompt budget is unknown; pass model="
        )
    return PromptBudget.from_model(name)
