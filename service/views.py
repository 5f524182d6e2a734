"""Turn stored runs into API answers (signed URLs are made per answer, never stored)."""

from __future__ import annotations

from typing import Any

from service.auth import Auth
from service.schemas import ImageView, ReferenceView, RunView, StageView
from service.store import RunRow


def artifact_url(auth: Auth, sha256: str, base: str = "") -> str:
    return f"{base.rstrip('/')}/v1/artifacts/{sha256}?{auth.sign(sha256)}"


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def run_view(row: RunRow, auth: Auth, base: str = "") -> RunView:
    result = row.result or {}
    out: dict[str, Any] = result.get("output") or {}
    grounded: dict[str, Any] = out.get("grounded") or {}
    image_result: dict[str, Any] = out.get("image") or {}
    image = None
    ref = image_result.get("image") or {}
    if isinstance(ref.get("sha256"), str):
        image = ImageView(
            sha256=ref["sha256"],
            url=artifact_url(auth, ref["sha256"], base),
            width=ref.get("width"),
            height=ref.get("height"),
        )
    notes = {r.get("img_id"): r.get("note") for r in _dicts(grounded.get("reference_images"))}
    references = [
        ReferenceView(
            img_id=img_id,
            sha256=sha,
            url=artifact_url(auth, sha, base),
            used=img_id in notes,
            note=notes.get(img_id),
        )
        for img_id, sha in sorted((out.get("image_ids") or {}).items())
        if isinstance(sha, str)
    ]
    gaps = out.get("gaps") or {}
    stages = [
        StageView(
            stage=str(s.get("stage", "")),
            turn=int(s.get("turn", 0)),
            elapsed_s=float(s.get("elapsed_s", 0.0)),
            summary=str(s.get("summary", "")),
        )
        for s in _dicts(out.get("stages"))
    ]
    usage = {k: int(v) for k, v in (out.get("usage") or {}).items() if isinstance(v, int | float)}
    return RunView(
        id=row.id,
        kind="image" if row.kind == "image" else "run",
        status=row.status,
        created_at=int(row.created_at),
        updated_at=int(row.updated_at),
        turn=row.turn,
        policy=row.policy,
        request=row.request,
        error=row.error,
        question=row.question,
        image=image,
        revised_prompt=grounded.get("gen_prompt"),
        negative_prompt=grounded.get("negative_prompt"),
        references=references,
        facts=_dicts(grounded.get("facts")),
        gaps=_dicts(gaps.get("gaps") if isinstance(gaps, dict) else None),
        notices=[str(n) for n in out.get("notices") or []],
        stages=stages,
        usage=usage,
        dossier=result.get("dossier"),
        events_url=f"{base.rstrip('/')}/v1/runs/{row.id}/events",
    )
