"""The trained side, made here: outputs are versioned folders the eval harness's arms point at.

- `tuning.policy`: supervised fine-tuning of a search policy on the agent's own traces (TRL's
  `SFTTrainer`, a PEFT LoRA or a full fine-tune), `groundwork tune policy CONFIG.toml`.
- `tuning.policy_serve`: the tuned policy as an OpenAI-compatible endpoint through a maintained
  server (`transformers serve` on CPU, `vllm serve --enable-lora` on a GPU): no code of ours in
  the serving path.

This package sits above `evals/` (it may import agent/, generators/ and evals/); only `cli/`
imports it, and the harness refers to its outputs by path. Heavy libraries (torch, transformers,
trl, peft) are imported inside the functions that train, so importing the package is cheap.
"""
