"""A tiny trainable chat model built from config (no weights downloaded) and policy
conversations in both protocols, as run folders and as trace exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.profiles import GEN_SEARCHER, OPENAI
from tools.registry import GEN_SEARCHER_TOOLS, tool_specs

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""SmolLM2-Instruct's template (ChatML without tools), as the GGUF carries it."""

ENTITIES = [
    "Zephyr X1 drone",
    "Lumen Tower",
    "Karvo festival",
    "Orbix Cat robot",
    "Tallis Bridge",
    "Quen mascot",
    "Mirell lantern",
    "Brask tram",
    "Solva kettle",
    "Pell racing car",
    "Vinto jacket",
    "Ardent ship",
]


def corpus() -> list[str]:
    texts = [
        '<think>search</think>\n<tool_call>\n{"name": "search", "arguments": {"queries": '
        '["x"]}}\n</tool_call>',
        '<answer>{"gen_prompt": "a photo", "reference_images": []}</answer>',
        "search result title url snippet image_search browse IMG_001 reference note",
    ]
    texts += [e for e in ENTITIES]
    for e in ENTITIES:
        texts += [m["content"] for m in sharegpt_example(e, f"the {e} at dusk")["messages"]]
    return texts * 4


def make_tiny_base(folder: Path) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained here, saved like a HF model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.token_to_id("<|im_start|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        tie_word_embeddings=True,
    )
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def _answer(entity: str) -> str:
    body = {
        "gen_prompt": f"The {entity}, as the first reference image shows it, in daylight",
        "reference_images": [{"img_id": "IMG_001", "note": f"the {entity}"}],
    }
    return f"<think>enough</think>\n<answer>{json.dumps(body)}</answer>"


def sharegpt_example(entity: str, prompt: str) -> dict[str, Any]:
    """A Gen-Searcher text-protocol conversation as `traces export --format sharegpt` writes."""
    from datetime import date

    system = GEN_SEARCHER.system(tool_specs(GEN_SEARCHER_TOOLS), date(2026, 3, 14), 4)
    call = {"name": "image_search", "arguments": {"query": entity}}
    return {
        "messages": [
            {"role": "system", "content": system[:300]},
            {"role": "user", "content": prompt},
            {
                "role": "assistant",
                "content": f"<think>look</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>",
            },
            {
                "role": "user",
                "content": f"<tool_response>\n--- image search result for [{entity}] ---\n"
                f"IMG_001: title: {entity}\n  url: http://127.0.0.1/a.png\n"
                "--- end of image search result ---\n</tool_response>",
            },
            {"role": "assistant", "content": _answer(entity)},
        ],
        "images": [],
    }


def write_export(path: Path, n_prompts: int = 12, runs_per_prompt: int = 2) -> Path:
    """A sharegpt export: several runs (seeds) of each prompt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n_prompts):
            entity = ENTITIES[i % len(ENTITIES)]
            for _ in range(runs_per_prompt):
                example = sharegpt_example(entity, f"the {entity} number {i} at dusk")
                f.write(json.dumps(example) + "\n")
    return path


def write_run_folder(root: Path, name: str, entity: str, *, matched: bool) -> Path:
    """A react run folder (run.json + trace.jsonl) as the runner writes one."""
    from datetime import date

    run = root / name
    run.mkdir(parents=True)
    prompt = f"the {entity} at night"
    system = OPENAI.system(tool_specs(GEN_SEARCHER_TOOLS), date(2026, 3, 14), 4)
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": OPENAI.user(prompt)},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_0_0",
                    "type": "function",
                    "function": {"name": "search", "arguments": json.dumps({"queries": [entity]})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0_0", "content": f"{entity}: orange and round"},
    ]
    record = {
        "prompt": prompt,
        "turn": 1,
        "stages": [{"stage": "policy", "turn": 1}],
        "rounds": [{"verdict": {"checks": [{"passed": matched}]}}],
    }
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    llm = {
        "ts": 1.0,
        "kind": "llm",
        "role": "policy",
        "turn": 1,
        "messages": messages,
        "answer": {"role": "assistant", "content": _answer(entity)},
        "tools": tool_specs(GEN_SEARCHER_TOOLS),
    }
    (run / "trace.jsonl").write_text(json.dumps(llm) + "\n", encoding="utf-8")
    return run
