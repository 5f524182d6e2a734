"""The run folder the Runner owns: image.png, dossier.md (for people, graphs/dossier.py) and
run.json (for programs).

Everything is rendered from the final graph state, so a resumed run produces the same
report as one that never stopped.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from agent.contracts import GroundedPrompt
from agent.services import Services
from agent.settings import Settings
from agent.state import RunOutput
from agent.trace import read_trace
from core.artifacts import ArtifactNotFound, ArtifactStore
from core.errors import GroundworkError, InputError
from core.files import atomic_write
from graphs.dossier import render_dossier


def write_turn(
    services: Services,
    thread_id: str,
    values: dict[str, Any],
    output: dict[str, Any],
    settings: Settings,
) -> Path:
    """The folder of one turn (its trace lines included), from the thread's final values. File
    I/O with fsync: call it in a thread where other runs share the event loop."""
    turn = int(values.get("turn") or 1)
    run_dir = make_run_dir(settings.runs_dir, str(values.get("request") or "run"), thread_id, turn)
    trace = read_trace(services.trace_path(thread_id), turn=turn)
    write_run(
        run_dir,
        output,
        services.store,
        thread_id=thread_id,
        extra={"run_dir": str(run_dir)},
        trace=trace,
    )
    return run_dir


class RunFolderError(GroundworkError):
    """The run folder cannot be written (disk full, permissions)."""


def check_writable(runs_dir: Path) -> None:
    """Fail before any work when run folders cannot be made; creates nothing else."""
    target = runs_dir.expanduser()
    probe_dir = target
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not os.access(probe_dir, os.W_OK | os.X_OK) or not probe_dir.is_dir():
        raise InputError(
            f"cannot write the run folder under {target} ({probe_dir} is not a writable folder); "
            "choose another with --out"
        )


def _slug(text: str, limit: int, default: str) -> str:
    """Letters, digits and single dashes only: no separator, dot run or drive letter survives,
    so a name made from a prompt or a thread id (`/../../.`) stays one folder inside runs/."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or default


def run_dir_name(prompt: str, thread_id: str, turn: int) -> str:
    slug = _slug(prompt, 40, "run")
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{_slug(thread_id, 8, 'thread')}-t{int(turn)}"


def make_run_dir(runs_dir: Path, prompt: str, thread_id: str, turn: int = 1) -> Path:
    """A new, unique folder (a counter suffix on a clash, never recursion on the name)."""
    root = runs_dir.expanduser()
    base = root / run_dir_name(prompt, thread_id, turn)
    if base.resolve().parent != root.resolve():
        raise RunFolderError(f"run folder name {base.name!r} would leave {root}; this is a bug")
    for n in range(1000):
        path = base if n == 0 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunFolderError(
                f"cannot create the run folder {path}: {exc.strerror or exc}; free space or "
                "choose another folder with --out, then write it again with "
                f"groundwork run --thread {thread_id}"
            ) from exc
    raise RunFolderError(f"too many run folders named {base.name}* in {runs_dir}")


def write_run(
    run_dir: Path,
    output: dict[str, Any],
    store: ArtifactStore,
    *,
    thread_id: str,
    extra: dict[str, Any] | None = None,
    trace: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every file atomically, `run.json` last: a folder without run.json says INCOMPLETE."""
    try:
        return _write_run(
            run_dir, output, store, thread_id=thread_id, extra=extra or {}, trace=trace
        )
    except OSError as exc:
        raise RunFolderError(
            f"cannot write the run folder {run_dir}: {exc.strerror or exc}; free space and write "
            f"it again with: groundwork run --thread {thread_id}"
        ) from exc


# Only run.json, written last, is fsynced: it marks the folder complete, and an fsync per file
# would cost more than the rest of a run's orchestration.


def _write_run(
    run_dir: Path,
    output: dict[str, Any],
    store: ArtifactStore,
    *,
    thread_id: str,
    extra: dict[str, Any],
    trace: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / "INCOMPLETE"
    atomic_write(
        marker, b"this run folder is being written; run.json is written last\n", durable=False
    )
    image_written = _write_image(run_dir, output, store)
    record: dict[str, Any] = {
        "thread_id": thread_id,
        **{key: output.get(key) for key in RunOutput.__annotations__},
        "status": "failed" if output.get("error") or not image_written else "done",
        "image": "image.png" if image_written else None,
        **extra,
    }
    record["image_artifact"] = output.get("image")
    refs = _copy_references(run_dir, output.get("image_ids") or {}, store)
    record["reference_files"] = refs
    record["round_files"] = _write_round_files(run_dir, output, store)
    if trace is not None:
        lines = "".join(json.dumps(t, default=str, ensure_ascii=False) + "\n" for t in trace)
        atomic_write(run_dir / "trace.jsonl", lines.encode(), durable=False)
    atomic_write(
        run_dir / "dossier.md", render_dossier(record, store, refs).encode(), durable=False
    )
    atomic_write(
        run_dir / "run.json", json.dumps(record, indent=2, default=str).encode(), durable=True
    )
    marker.unlink(missing_ok=True)
    return record


def _copy_references(run_dir: Path, ids: dict[str, str], store: ArtifactStore) -> dict[str, str]:
    """Copies researched images next to the dossier so it renders (and travels) on its own."""
    copied: dict[str, str] = {}
    for img_id, sha in sorted(ids.items()):
        if not store.exists(sha):
            continue
        source = store.path(sha)
        (run_dir / "refs").mkdir(exist_ok=True)
        target = run_dir / "refs" / f"{img_id}{source.suffix}"
        atomic_write(target, source.read_bytes(), durable=False)
        copied[img_id] = f"refs/{target.name}"
    return copied


def _write_round_files(
    run_dir: Path, output: dict[str, Any], store: ArtifactStore
) -> dict[str, str]:
    """Each critique round's image, and the layout plan's diagram, beside the dossier."""
    files: dict[str, str] = {}
    for r in output.get("rounds") or []:
        sha = ((r.get("image") or {}).get("image") or {}).get("sha256")
        if sha and store.exists(sha):
            (run_dir / "rounds").mkdir(exist_ok=True)
            files[f"round-{r['round']}"] = name = f"rounds/round-{r['round']}.png"
            atomic_write(run_dir / name, store.path(sha).read_bytes(), durable=False)
    grounded = GroundedPrompt.model_validate(output.get("grounded") or {"gen_prompt": ""})
    if grounded.layout is not None:
        from generators.layout import render_layout

        image = (output.get("image") or {}).get("image") or {}
        png = render_layout(
            grounded.layout.to_regional(),
            width=image.get("width") or 512,
            height=image.get("height") or 512,
            fmt="png",
            base_prompt=grounded.gen_prompt,
        )
        atomic_write(run_dir / "plan.png", png, durable=False)
        files["plan"] = "plan.png"
    return files


def _write_image(run_dir: Path, output: dict[str, Any], store: ArtifactStore) -> bool:
    image = output.get("image")
    if image is None:
        reason = output.get("error") or "no image was generated"
        atomic_write(run_dir / "NO_IMAGE.txt", (reason + "\n").encode(), durable=False)
        return False
    try:
        atomic_write(
            run_dir / "image.png", store.path(image["image"]["sha256"]).read_bytes(), durable=False
        )
    except ArtifactNotFound as exc:
        atomic_write(
            run_dir / "NO_IMAGE.txt", f"image artifact missing: {exc}\n".encode(), durable=False
        )
        return False
    (run_dir / "NO_IMAGE.txt").unlink(missing_ok=True)
    return True
