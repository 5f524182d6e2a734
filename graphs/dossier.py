"""dossier.md, the run explained for people: one function per section, each reading the run
record (run.json's content) and returning its lines. A new section is one function and one
entry in `SECTIONS`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.contracts import GapReport, GroundedPrompt
from tools.observations import ImageHit, Observation, Passage, SearchHit

Record = dict[str, Any]


class View:
    """The record with what several sections read, parsed once."""

    def __init__(self, record: Record, refs: dict[str, str]) -> None:
        self.record = record
        self.refs = refs
        self.files: dict[str, str] = record.get("round_files") or {}
        self.observations = [
            Observation.model_validate(o) for o in record.get("observations") or []
        ]
        grounded = record.get("grounded")
        self.grounded = GroundedPrompt.model_validate(grounded) if grounded else None


def header(v: View) -> list[str]:
    r = v.record
    out = ["# Groundwork run", ""]
    out += [f"- **Request:** {r.get('request')}", f"- **Thread:** `{r['thread_id']}`"]
    out.append(f"- **Status:** {r['status']}")
    if r.get("error"):
        out.append(f"- **Error:** {r['error']}")
    out.append(f"- **Image:** {'![image](image.png)' if r.get('image') else 'none'}")
    if r.get("clarification"):
        c = r["clarification"]
        answer = _one_line(c.get("answer")) or "(no answer)"
        out.append(f"- **Asked:** {_one_line(c.get('question'))} — **answer:** {answer}")
    return out


def gaps(v: View) -> list[str]:
    report = GapReport.model_validate(v.record.get("gaps") or {})
    out = ["## Knowledge gaps", ""]
    if not report.gaps:
        out.append("None found: the prompt was used without research.")
    for g in report.gaps:
        out.append(f"- **{g.span}** ({g.kind}, found by {g.origin}) — {g.why or 'no reason given'}")
        if g.text_queries:
            out.append(f"  - text queries: {', '.join(repr(q) for q in g.text_queries)}")
        if g.image_queries:
            out.append(f"  - image queries: {', '.join(repr(q) for q in g.image_queries)}")
    return out


def research(v: View) -> list[str]:
    out = ["## Research", ""]
    if not v.observations:
        return [*out, "No tool calls."]
    out += ["| tool | query | result | cache | time |", "|---|---|---|---|---|"]
    for o in v.observations:
        result = f"{len(o.items)} items" if o.ok else f"failed: {o.error}"
        cache = "hit" if o.cached else "miss"
        out.append(
            f"| {o.tool} | {_cell(o.query)} | {_cell(result)} | {cache} | {o.elapsed_s:.2f}s |"
        )
    return out


def sources(v: View) -> list[str]:
    out = ["## Sources", ""]
    found = [i for o in v.observations for i in o.items if isinstance(i, SearchHit | Passage)]
    if not found:
        out.append("None.")
    for item in found:
        if isinstance(item, SearchHit):
            out.append(f"- [{item.title or item.url}]({item.url}) — {_one_line(item.snippet)}")
        else:
            out.append(f"- {item.source or 'local'} — {_one_line(item.text)}")
    return out


def _how_used(use: dict[str, Any] | None) -> str:
    if use is None:
        return "pixels not sent to the generator (no record of use)"
    if use.get("used"):
        return f"pixels reached the generator via {use.get('how')}"
    return f"pixels NOT used: {use.get('why') or 'the generator ignored it'}"


def references(v: View) -> list[str]:
    out = ["## Reference images", ""]
    images = {i.img_id: i for o in v.observations for i in o.items if isinstance(i, ImageHit)}
    chosen = {r.img_id: r.note for r in v.grounded.reference_images} if v.grounded else {}
    uses = _reference_uses(v.record)
    ids = v.record.get("image_ids") or {}
    if not images:
        out.append("None.")
    for img_id, hit in sorted(images.items()):
        local = v.refs.get(img_id)
        thumb = f" ![{img_id}]({local})" if local else " (not stored)"
        mark = ""
        if img_id in chosen:
            how = _how_used(uses.get(ids.get(img_id, "")))
            mark = f" — **chosen** ({_one_line(chosen[img_id], 120)}); {how}"
        out.append(
            f"- `{img_id}` [{_one_line(hit.title or hit.url, 100)}]({hit.source_url or hit.url}) — "
            f"{hit.width}x{hit.height}{mark}{thumb}"
        )
    return out


def grounded_prompt(v: View) -> list[str]:
    out = ["## Grounded prompt", ""]
    g = v.grounded
    if g is None:
        return [*out, "Not written."]
    out += ["```text", g.gen_prompt, "```"]
    if g.negative_prompt:
        out.append(f"Negative prompt: `{g.negative_prompt}`")
    if g.ordinals:
        out += ["", "### Ordinal references", ""]
        for m in g.ordinals:
            target = m.get("replaced_with") or "kept (the generator takes the images in order)"
            out.append(f'- "{m["phrase"]}" -> `{m.get("img_id") or "?"}`: {target}')
    out += ["", "### Facts", ""]
    out += [f"- {f.claim} ({f.source_url or 'no source'})" for f in g.facts] or ["None."]
    out += ["", "### Requirements", ""]
    out += [f"- [{r.kind}] {r.text}" for r in g.requirements] or ["None."]
    if g.layout is not None:
        out += ["", "### Layout plan", ""]
        out += [f"- region {i + 1}: {_one_line(r.prompt)}" for i, r in enumerate(g.layout.regions)]
        if v.files.get("plan"):
            out += ["", f"![layout plan]({v.files['plan']})"]
    return out


def _round(r: dict[str, Any], files: dict[str, str]) -> list[str]:
    img = r.get("image") or {}
    sha = (img.get("image") or {}).get("sha256", "?")
    out = [f"### Round {r['round']} — {r['action']}", ""]
    out.append(f"- image: `{sha[:12]}` ({img.get('mode', '?')}, seed {img.get('seed', '?')})")
    if shot := files.get(f"round-{r['round']}"):
        out.append(f"  ![round {r['round']}]({shot})")
    if j := r.get("judge"):
        how = {"vlm-pairwise": "pairwise VLM judge (both orders)", "clip": "CLIP score"}.get(
            j.get("method"), "no judge"
        )
        model = f" ({j['model']})" if j.get("model") else ""
        count = len(j.get("candidates") or [])
        out.append(f"- picked from {count} candidates by {how}{model}: seed {j.get('seed')}")
    if r.get("detail"):
        out.append(f"- decision: {_one_line(r['detail'])}")
    verdict = r.get("verdict")
    if verdict is None:
        return [*out, "- verdict: none (critique skipped or the critic was unusable)"]
    out.append(f"- score: {verdict['score']:.2f}")
    for c in verdict.get("checks", []):
        mark = "pass" if c["passed"] else "FAIL"
        box = f" region {c['region']}" if c.get("region") else ""
        req, why = _one_line(c["requirement"], 100), _one_line(c.get("reason"), 150)
        out.append(f"  - {mark}: {req} — {why}{box}")
    if verdict.get("edit_instruction"):
        out.append(f"- edit instruction: {_one_line(verdict['edit_instruction'])}")
    return out


def rounds(v: View) -> list[str]:
    out = ["## Critique rounds", ""]
    all_rounds = v.record.get("rounds") or []
    if not all_rounds:
        return [*out, "None."]
    for r in all_rounds:
        out += [*_round(r, v.files), ""]
    return out[:-1]


def notices(v: View) -> list[str]:
    said = v.record.get("notices") or []
    return ["## Notices", "", *[f"- {n}" for n in said]] if said else []


def timings(v: View) -> list[str]:
    out = ["## Timings", "", "| stage | turn | seconds | summary |", "|---|---|---|---|"]
    for s in v.record.get("stages", []):
        out.append(f"| {s['stage']} | {s['turn']} | {s['elapsed_s']:.2f} | {_cell(s['summary'])} |")
    return out


SECTIONS: list[Callable[[View], list[str]]] = [
    header,
    gaps,
    research,
    sources,
    references,
    grounded_prompt,
    rounds,
    notices,
    timings,
]
"""The dossier's sections, in order."""


def render_dossier(record: Record, store: object = None, refs: dict[str, str] | None = None) -> str:
    """The dossier of a run record. `refs` maps IMG_### ids to image paths relative to the run
    folder. (`store` is unused: kept for callers of the first signature.)"""
    view = View(record, refs or {})
    out: list[str] = []
    for section in SECTIONS:
        lines = section(view)
        if lines:
            out += [*lines, ""]
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
