"""EvolveDirector curation with a scripted VLM judge (OpenAI-compatible, on loopback), a tiny
teacher pipeline (other random weights) and the tiny student pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.scripted_llm import ScriptedLLM
from tuning.curate import (
    CurateConfig,
    Curator,
    RoundReport,
    load_curate_config,
    load_dataset,
    parse_prompt_list,
    slug,
)


def _config(tmp: Path, student: Path, teacher: dict[str, Any], llm: ScriptedLLM, **kw: Any) -> Any:
    data: dict[str, Any] = {
        "out_dir": tmp / "out",
        "student": str(student),
        "prompts": ["a red house", "a green tree", "a blue car"],
        "rounds": 1,
        "width": 32,
        "height": 32,
        "steps": 2,
        "settings": {
            "generator": {"model": str(student), "device": "cpu", "width": 64, "height": 64},
            "artifacts": {"root": str(tmp / "artifacts")},
        },
        "teacher": teacher,
        "judge": {"base_url": llm.base_url, "model": "scripted-vlm", "max_attempts": 1},
        "train": {"steps": 2, "resolution": 32, "rank": 2, "alpha": 2, "device": "cpu"},
        "evolve": {"expand_n": 1, "mutate_n": 1},
    }
    data.update(kw)
    return CurateConfig.model_validate(data)


def _run(config: CurateConfig, reports: list[RoundReport] | None = None) -> Any:
    import asyncio

    on_round = reports.append if reports is not None else None
    return asyncio.run(Curator(config, on_round=on_round).run())


def test_curate_keeps_winner_deletes_mastered_versions_lineage_and_resumes(
    tmp_path: Path, tiny_pipeline: Path, scripted_llm: ScriptedLLM
) -> None:
    from tests.support.tiny_pipeline import build_tiny_pipeline

    teacher_model = build_tiny_pipeline(tmp_path / "teacher", seed=1)
    teacher = {"kind": "generator", "model": str(teacher_model), "steps": 2}
    # Round 1, per sample: teacher-first order then swapped.
    scripted_llm.add(
        "PreferenceAnswer",
        {"winner": "first"}, {"winner": "second"},   # house: teacher wins in both orders
        {"winner": "second"}, {"winner": "first"},   # tree: the student wins: mastered
        {"winner": "first"}, {"winner": "first"},    # car: flips with the order -> tie
    )  # fmt: skip
    scripted_llm.add("text", '["a red barn"]', 'Sure: ["a purple cat"]')  # expand, mutate
    config = _config(tmp_path, tiny_pipeline, teacher, scripted_llm)
    reports: list[RoundReport] = []
    result = _run(config, reports)

    r1 = reports[0]
    assert (r1.teacher_wins, r1.student_wins, r1.ties) == (1, 1, 1)
    assert r1.order_agreement == pytest.approx(2 / 3)  # the judge agreed with itself 2 of 3
    assert (r1.expanded, r1.mutated, r1.deleted, r1.active) == (1, 1, 1, 4)
    assert r1.train_loss is not None and r1.s_per_step > 0

    ds = load_dataset(config.out_dir, 1)
    by = {s.prompt: s for s in ds.samples}
    house, tree, car = by["a red house"], by["a green tree"], by["a blue car"]
    assert house.status == "active" and house.verdict == "teacher"
    assert house.orders == ["first", "second"]
    # The judged winner's image (the teacher's) is what the student trains on.
    assert house.teacher_image and (config.out_dir / house.teacher_image).is_file()
    assert house.student_image and house.student_image != house.teacher_image
    assert tree.status == "deleted" and "mastered" in tree.reason
    assert car.status == "active" and car.verdict == "tie"
    barn, cat = by["a red barn"], by["a purple cat"]
    assert (barn.op, barn.parent, barn.born) == ("expand", house.id, 1)
    assert cat.op == "mutate" and cat.parent in {house.id, car.id}
    assert barn.teacher_image and cat.teacher_image
    assert {s.prompt for s in ds.active()} == {
        "a red house",
        "a blue car",
        "a red barn",
        "a purple cat",
    }
    assert load_dataset(config.out_dir, 0).samples[1].status == "active"  # v000 untouched
    student_v1 = config.out_dir / "student" / "v001"
    manifest = json.loads((student_v1 / "groundwork_lora.json").read_text())
    assert manifest["method"] == "curate" and manifest["base_model"] == str(tiny_pipeline)
    assert result.student == str(student_v1)

    # Resume: two rounds now; round 1 is not redone, round 2 judges against student v001.
    scripted_llm.add("PreferenceAnswer", *([{"winner": "tie"}] * 8))
    scripted_llm.add("text", '["a yellow boat"]')
    longer = _config(tmp_path, tiny_pipeline, teacher, scripted_llm, rounds=2)
    again = _run(longer)
    assert again.resumed_from == 1 and [r.round for r in again.rounds] == [1, 2]
    r2 = again.rounds[1]
    assert (r2.judged, r2.ties, r2.deleted, r2.order_agreement) == (4, 4, 0, 1.0)
    ds2 = load_dataset(config.out_dir)
    assert ds2.version == 2 and ds2.student == str(student_v1)
    assert {s.prompt: s.history for s in ds2.samples}["a red house"] == ["teacher", "tie"]
    assert (config.out_dir / "student" / "v002" / "lora.safetensors").is_file()
    assert "order agreement" in (config.out_dir / "report.md").read_text()


def test_folder_teacher_and_config_file(tmp_path: Path, scripted_llm: ScriptedLLM) -> None:
    import asyncio

    from PIL import Image

    from agent.services import Services
    from agent.settings import Settings
    from tuning.curate import Teacher

    folder = tmp_path / "teacher"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / f"{slug('A red house!')}.png")
    Image.new("RGB", (8, 8), "blue").save(folder / "x.jpg")
    (folder / "prompts.jsonl").write_text(json.dumps({"prompt": "a sea", "image": "x.jpg"}) + "\n")
    (tmp_path / "c.toml").write_text(
        'student = "s"\nprompts = ["A red house!"]\n[teacher]\nkind = "folder"\npath = "teacher"\n'
    )
    config = load_curate_config(tmp_path / "c.toml")
    assert config.teacher.path == str(folder)
    services = Services(Settings().merged({"artifacts": {"root": str(tmp_path / "a")}}))
    teacher = Teacher(config, services)
    png, why = asyncio.run(teacher.image("A red house!", 0))
    assert png is not None and png.startswith(b"\x89PNG") and why == ""
    assert asyncio.run(teacher.image("a sea", 0))[0] is not None
    none, why = asyncio.run(teacher.image("unknown", 0))
    assert none is None and "no image" in why
    assert parse_prompt_list('x ["a", " ", 3, "b"] y') == ["a", "b"]
    assert parse_prompt_list("no list") is None


@pytest.mark.slow
async def test_curate_generates_through_the_worker_fleet(
    tmp_path: Path, tiny_pipeline: Path, scripted_llm: ScriptedLLM, redis_url: str
) -> None:
    """generator.backend = "queue": teacher and student images are Redis jobs a worker makes;
    round 2's student images come from the round-1 tuned folder, loaded by the worker."""
    import asyncio
    import uuid

    from core.artifacts import ArtifactStore
    from generators.diffusers_backend import DiffusersGenerator
    from generators.queue.worker import Worker
    from generators.settings import GeneratorSettings, QueueSettings
    from tests.support.tiny_pipeline import build_tiny_pipeline

    teacher_model = build_tiny_pipeline(tmp_path / "teacher", seed=1)
    prefix = f"curate{uuid.uuid4().hex[:6]}"
    queue = {
        "redis_url": redis_url,
        "key_prefix": prefix,
        "stream": f"{prefix}:jobs",
        "group": f"{prefix}-workers",
        "dead_letter_stream": f"{prefix}:dead",
        "job_timeout_s": 120,
    }
    artifacts = tmp_path / "artifacts"
    scripted_llm.add(
        "PreferenceAnswer",
        {"winner": "first"}, {"winner": "second"},  # round 1: the teacher wins
        {"winner": "tie"}, {"winner": "tie"},  # round 2
    )  # fmt: skip
    config = _config(
        tmp_path,
        tiny_pipeline,
        {"kind": "generator", "model": str(teacher_model), "steps": 2},
        scripted_llm,
        rounds=2,
        prompts=["a red house"],
        settings={
            "generator": {"model": str(tiny_pipeline), "backend": "queue"},
            "queue": queue,
            "artifacts": {"root": str(artifacts)},
        },
        evolve={"expand_n": 0, "mutate_n": 0},
    )
    store = ArtifactStore(artifacts)
    gen = DiffusersGenerator(GeneratorSettings(model=str(tiny_pipeline), device="cpu"), store)
    worker = Worker(gen, QueueSettings.model_validate(queue), consumer="w1")
    run = asyncio.create_task(worker.run())
    try:
        result = await Curator(config).run()
    finally:
        worker.request_stop()
        await run
        await worker.aclose()
        await gen.aclose()
    assert [r.judged for r in result.rounds] == [1, 1]
    sample = load_dataset(config.out_dir, 2).samples[0]
    assert sample.history == ["teacher", "tie"] and sample.student_image
    made_by = store.meta(Path(sample.student_image).stem)
    assert made_by["model"] == str(config.out_dir / "student" / "v001")
    # the worker's pipeline made them all: teacher, student base, then the student's LoRA as
    # an adapter on the resident base (no third load)
    assert gen.loads == 2


def test_cli_commands_report_bad_configs_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.tune import tune_app

    runner = CliRunner()
    missing = runner.invoke(tune_app, ["feedback", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "not found" in missing.output
    (tmp_path / "c.toml").write_text('student = "s"\nprompts = ["a"]\n')
    no_judge = runner.invoke(tune_app, ["curate", str(tmp_path / "c.toml")])
    assert no_judge.exit_code == 2 and "judge" in no_judge.output
    (tmp_path / "bad.toml").write_text("rounds = 0\n")
    bad = runner.invoke(tune_app, ["curate", str(tmp_path / "bad.toml")])
    assert bad.exit_code == 2 and "invalid curate config" in bad.output
