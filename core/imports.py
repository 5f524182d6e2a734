"""Heavy third-party imports (torch, transformers, diffusers, open_clip): once, on one thread.

Why: these packages are not safe to import from two threads at once. transformers and
diffusers resolve their names lazily (`_LazyModule.__getattr__`), and a thread that asks for
`transformers.PreTrainedModel` while another is still executing `transformers.modeling_utils`
gets "cannot import name 'PreTrainedModel'" (issue 21.3: the generator's warm-up thread and
the CLIP ranker, on a cold start, failed every time). Every code path that needs them calls
`heavy_imports(...)` before its own import statements: one process-wide lock, a fixed order,
and the lazily resolved names those paths use resolved inside the lock. The first caller does
all the importing; any other thread waits, then finds everything in `sys.modules`.
"""

from __future__ import annotations

import importlib
import threading

ORDER = ("torch", "transformers", "diffusers", "open_clip", "sentence_transformers")
"""Import order: each package imports the ones before it."""

NEEDS: dict[str, tuple[str, ...]] = {
    "transformers": ("torch",),
    "diffusers": ("torch", "transformers"),
    "open_clip": ("torch", "transformers"),
    "sentence_transformers": ("torch", "transformers"),
}
"""Packages imported with a package because it imports them itself (when installed)."""

LAZY_NAMES: dict[str, tuple[str, ...]] = {
    "transformers": ("PreTrainedModel", "CLIPTextModel", "CLIPTokenizer"),
    "diffusers": (
        "DiffusionPipeline",
        "AutoPipelineForText2Image",
        "AutoPipelineForImage2Image",
        "AutoPipelineForInpainting",
    ),
}
"""Lazily resolved names whose resolution imports whole module trees: resolved under the lock."""

_lock = threading.RLock()
_done: set[str] = set()


def heavy_imports(*packages: str) -> None:
    """Import `packages` (and what they import themselves) unless done; one thread at a time.

    A package named here that is not installed raises ImportError as its own import would; a
    prerequisite that is not installed is skipped (the package decides whether it needs it).
    """
    wanted = set(packages)
    for name in packages:
        wanted.update(NEEDS.get(name, ()))
    if wanted <= _done:
        return
    ordered = [n for n in ORDER if n in wanted] + sorted(wanted - set(ORDER))
    with _lock:
        for name in ordered:
            if name in _done:
                continue
            try:
                module = importlib.import_module(name)
            except ImportError:
                if name in packages:
                    raise
                continue
            for attr in LAZY_NAMES.get(name, ()):
                getattr(module, attr)
            _done.add(name)


def imported() -> frozenset[str]:
    """Packages `heavy_imports` has imported in this process."""
    return frozenset(_done)
