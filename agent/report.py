"""The run folder: image.png, dossier.md (for people) and run.json (for programs).

Everything is rendered from the final graph state, so a resumed run produces the same
report as one that never stopped.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from agent.errors import InputError
from agent.models import GapReport, GroundedPrompt
from agent.state import RunState
from generators.artifacts import ArtifactNotFound, ArtifactStore
from tools.observations import ImageHit, Observation, Passage, SearchHit


def make_run_dir(runs_dir: Path, prompt: str, thread_id: str) -> Path:
    """Create the run folder up front so an unwritable location fails before any work."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = runs_dir.expanduser() / f"{stamp}-{slug}-{thread_id[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=False)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except FileExistsError:
        return make_run_dir(runs_dir, prompt + "-", thread_id)
    except OSError as exc:
        raise InputError(
            f"cannot write the run folder {path}: {exc.strerror or exc}; choose another with --out"
        ) from exc
    return path


def write_run(
    run_dir: Path, state: RunState, store: ArtifactStore, *, thread_id: str, extra: dict[str, Any]
) -> dict[str, Any]:
    image_written = _write_image(run_dir, state, store)
    record = {
        "thread_id": thread_id,
        "request": state.get("request"),
        "prompt": state.get("prompt"),
        "turn": state.get("turn"),
        "status": "failed" if state.get("error") or not image_written else "done",
        "error": state.get("error"),
        "image": "image.png" if image_written else None,
        "image_artifact": state.get("image"),
        "stages": state.get("stages", []),
        "gaps": state.get("gaps"),
        "observations": state.get("observations", []),
        "image_ids": state.get("image_ids", {}),
        "grounded": state.get("grounded"),
        "rounds": state.get("rounds", []),
        "notices": state.get("notices", []),
        **extra,
    }
    refs = _copy_references(run_dir, state.get("image_ids") or {}, store)
    record["reference_files"] = refs
    (run_dir / "run.json").write_text(json.dumps(record, indent=2, default=str))
    (run_dir / "dossier.md").write_text(render_dossier(record, store, refs))
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
        shutil.copyfile(source, target)
        copied[img_id] = f"refs/{target.name}"
    return copied


def _write_image(run_dir: Path, state: RunState, store: ArtifactStore) -> bool:
    image = state.get("image")
    target = run_dir / "image.png"
    if image is None:
        reason = state.get("error") or "no image was generated"
        (run_dir / "NO_IMAGE.txt").write_text(reason + "\n")
        return False
    try:
        shutil.copyfile(store.path(image["image"]["sha256"]), target)
    except ArtifactNotFound as exc:
        (run_dir / "NO_IMAGE.txt").write_text(f"image artifact missing: {exc}\n")
        return False
    return True


def render_dossier(
    record: dict[str, Any], store: ArtifactStore, refs: dict[str, str] | None = None
) -> str:
    """`refs` maps IMG_### ids to image paths relative to the run folder."""
    refs = refs or {}
    out: list[str] = ["# Groundwork run", ""]
    out += [f"- **Request:** {record.get('request')}", f"- **Thread:** `{record['thread_id']}`"]
    out += [f"- **Status:** {record['status']}"]
    if record.get("error"):
        out.append(f"- **Error:** {record['error']}")
    out.append(f"- **Image:** {'![image](image.png)' if record.get('image') else 'none'}")
    out.append("")

    gaps = GapReport.model_validate(record.get("gaps") or {})
    out += ["## Knowledge gaps", ""]
    if not gaps.gaps:
        out.append("None found: the prompt was used without research.")
    for g in gaps.gaps:
        out.append(f"- **{g.span}** ({g.kind}) — {g.why or 'no reason given'}")
        if g.text_queries:
            out.append(f"  - text queries: {', '.join(repr(q) for q in g.text_queries)}")
        if g.image_queries:
            out.append(f"  - image queries: {', '.join(repr(q) for q in g.image_queries)}")
    out.append("")

    observations = [Observation.model_validate(o) for o in record.get("observations", [])]
    out += ["## Research", ""]
    if not observations:
        out.append("No tool calls.")
    else:
        out += ["| tool | query | result | cache | time |", "|---|---|---|---|---|"]
        for o in observations:
            result = f"{len(o.items)} items" if o.ok else f"failed: {o.error}"
            cache = "hit" if o.cached else "miss"
            out.append(
                f"| {o.tool} | {_cell(o.query)} | {_cell(result)} | {cache} | {o.elapsed_s:.2f}s |"
            )
    out.append("")

    out += ["## Sources", ""]
    sources = [(o, i) for o in observations for i in o.items if isinstance(i, SearchHit | Passage)]
    if not sources:
        out.append("None.")
    for _, item in sources:
        if isinstance(item, SearchHit):
            out.append(f"- [{item.title or item.url}]({item.url}) — {_one_line(item.snippet)}")
        else:
            out.append(f"- {item.source or 'local'} — {_one_line(item.text)}")
    out.append("")

    out += ["## Reference images", ""]
    images = {i.img_id: i for o in observations for i in o.items if isinstance(i, ImageHit)}
    grounded_json = record.get("grounded")
    grounded = GroundedPrompt.model_validate(grounded_json) if grounded_json else None
    chosen = {r.img_id: r.note for r in grounded.reference_images} if grounded else {}
    if not images:
        out.append("None.")
    for img_id, hit in sorted(images.items()):
        mark = f" **used**: {chosen[img_id]}" if img_id in chosen else ""
        local = refs.get(img_id)
        thumb = f" ![{img_id}]({local})" if local else " (not stored)"
        out.append(
            f"- `{img_id}` [{hit.title or hit.url}]({hit.source_url or hit.url}) — "
            f"{hit.width}x{hit.height}{mark}{thumb}"
        )
    out.append("")

    out += ["## Grounded prompt", ""]
    if grounded is None:
        out.append("Not written.")
    else:
        out += ["```text", grounded.gen_prompt, "```"]
        if grounded.negative_prompt:
            out.append(f"Negative prompt: `{grounded.negative_prompt}`")
        out += ["", "### Facts", ""]
        out += [f"- {f.claim} ({f.source_url or 'no source'})" for f in grounded.facts] or ["None."]
    out.append("")

    out += ["## Critique rounds", ""]
    rounds = record.get("rounds", [])
    if not rounds:
        out.append("None.")
    for r in rounds:
        v = r.get("verdict")
        sha = r["image"].get("image", {}).get("sha256", "?")[:12]
        out.append(f"### Round {r['round']} — {r['action']}")
        out.append("")
        out.append(f"- image: `{sha}` ({r['image'].get('mode', '?')})")
        if v is None:
            out.append("- verdict: skipped (no vision model configured)")
        else:
            out.append(f"- verdict: match={v['match']}, score={v['score']:.2f}")
            out += [f"- issue: {i}" for i in v.get("issues", [])]
            if v.get("edit_instruction"):
                out.append(f"- edit instruction: {v['edit_instruction']}")
        out.append("")

    if record.get("notices"):
        out += ["## Notices", ""] + [f"- {n}" for n in record["notices"]] + [""]

    out += ["## Timings", "", "| stage | turn | seconds | summary |", "|---|---|---|---|"]
    for s in record.get("stages", []):
        out.append(f"| {s['stage']} | {s['turn']} | {s['elapsed_s']:.2f} | {_cell(s['summary'])} |")
    out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _one_line(text: str | None, limit: int = 200) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
