"""The run folder: image.png, dossier.md (for people) and run.json (for programs).

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

from agent.stages.analyze import GapReport
from agent.stages.synthesize import GroundedPrompt
from agent.state import RunOutput
from core.artifacts import ArtifactNotFound, ArtifactStore
from core.errors import GroundworkError, InputError
from core.files import atomic_write
from tools.observations import ImageHit, Observation, Passage, SearchHit


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


def run_dir_name(prompt: str, thread_id: str, turn: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{thread_id[:8]}-t{turn}"


def make_run_dir(runs_dir: Path, prompt: str, thread_id: str, turn: int = 1) -> Path:
    """A new, unique folder (a counter suffix on a clash, never recursion on the name)."""
    base = runs_dir.expanduser() / run_dir_name(prompt, thread_id, turn)
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


def render_dossier(
    record: dict[str, Any], store: ArtifactStore, refs: dict[str, str] | None = None
) -> str:
    """`refs` maps IMG_### ids to image paths relative to the run folder."""
    refs = refs or {}
    files: dict[str, str] = record.get("round_files") or {}
    out: list[str] = ["# Groundwork run", ""]
    out += [f"- **Request:** {record.get('request')}", f"- **Thread:** `{record['thread_id']}`"]
    out += [f"- **Status:** {record['status']}"]
    if record.get("error"):
        out.append(f"- **Error:** {record['error']}")
    out.append(f"- **Image:** {'![image](image.png)' if record.get('image') else 'none'}")
    if record.get("clarification"):
        c = record["clarification"]
        answer = _one_line(c.get("answer")) or "(no answer)"
        out.append(f"- **Asked:** {_one_line(c.get('question'))} — **answer:** {answer}")
    out.append("")

    gaps = GapReport.model_validate(record.get("gaps") or {})
    out += ["## Knowledge gaps", ""]
    if not gaps.gaps:
        out.append("None found: the prompt was used without research.")
    for g in gaps.gaps:
        out.append(f"- **{g.span}** ({g.kind}, found by {g.origin}) — {g.why or 'no reason given'}")
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
    uses = _reference_uses(record)
    ids = record.get("image_ids") or {}
    if not images:
        out.append("None.")
    for img_id, hit in sorted(images.items()):
        local = refs.get(img_id)
        thumb = f" ![{img_id}]({local})" if local else " (not stored)"
        mark = ""
        if img_id in chosen:
            use = uses.get(ids.get(img_id, ""))
            if use is None:
                how = "pixels not sent to the generator (no record of use)"
            elif use.get("used"):
                how = f"pixels reached the generator via {use.get('how')}"
            else:
                how = f"pixels NOT used: {use.get('why') or 'the generator ignored it'}"
            mark = f" — **chosen** ({_one_line(chosen[img_id], 120)}); {how}"
        out.append(
            f"- `{img_id}` [{_one_line(hit.title or hit.url, 100)}]({hit.source_url or hit.url}) — "
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
        if grounded.ordinals:
            out += ["", "### Ordinal references", ""]
            for m in grounded.ordinals:
                target = m.get("replaced_with") or "kept (the generator takes the images in order)"
                out.append(f'- "{m["phrase"]}" -> `{m.get("img_id") or "?"}`: {target}')
        out += ["", "### Facts", ""]
        out += [f"- {f.claim} ({f.source_url or 'no source'})" for f in grounded.facts] or ["None."]
        out += ["", "### Requirements", ""]
        out += [f"- [{r.kind}] {r.text}" for r in grounded.requirements] or ["None."]
        if grounded.layout is not None:
            out += ["", "### Layout plan", ""]
            out += [
                f"- region {i + 1}: {_one_line(g.prompt)}"
                for i, g in enumerate(grounded.layout.regions)
            ]
            if files.get("plan"):
                out += ["", f"![layout plan]({files['plan']})"]
    out.append("")

    out += ["## Critique rounds", ""]
    rounds = record.get("rounds") or []
    if not rounds:
        out.append("None.")
    for r in rounds:
        v = r.get("verdict")
        img = r.get("image") or {}
        sha = (img.get("image") or {}).get("sha256", "?")
        out.append(f"### Round {r['round']} — {r['action']}")
        out.append("")
        out.append(f"- image: `{sha[:12]}` ({img.get('mode', '?')}, seed {img.get('seed', '?')})")
        if shot := files.get(f"round-{r['round']}"):
            out.append(f"  ![round {r['round']}]({shot})")
        if r.get("judge"):
            j = r["judge"]
            how = {"vlm-pairwise": "pairwise VLM judge (both orders)", "clip": "CLIP score"}.get(
                j.get("method"), "no judge"
            )
            out.append(
                f"- picked from {len(j.get('candidates') or [])} candidates by {how}"
                f"{' (' + str(j['model']) + ')' if j.get('model') else ''}: seed {j.get('seed')}"
            )
        if r.get("detail"):
            out.append(f"- decision: {_one_line(r['detail'])}")
        if v is None:
            out.append("- verdict: none (critique skipped or the critic was unusable)")
        else:
            out.append(f"- score: {v['score']:.2f}")
            for c in v.get("checks", []):
                mark = "pass" if c["passed"] else "FAIL"
                box = f" region {c['region']}" if c.get("region") else ""
                req = _one_line(c["requirement"], 100)
                why = _one_line(c.get("reason"), 150)
                out.append(f"  - {mark}: {req} — {why}{box}")
            if v.get("edit_instruction"):
                out.append(f"- edit instruction: {_one_line(v['edit_instruction'])}")
        out.append("")

    if record.get("notices"):
        out += ["## Notices", ""] + [f"- {n}" for n in record["notices"]] + [""]

    out += ["## Timings", "", "| stage | turn | seconds | summary |", "|---|---|---|---|"]
    for s in record.get("stages", []):
        out.append(f"| {s['stage']} | {s['turn']} | {s['elapsed_s']:.2f} | {_cell(s['summary'])} |")
    out.append("")
    return "\n".join(out)


def _reference_uses(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """sha256 -> how the generator used that reference (from the image's own report)."""
    image = record.get("image_artifact") or {}
    return {u["sha256"]: u for u in image.get("references") or [] if isinstance(u, dict)}


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _one_line(text: str | None, limit: int = 200) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
