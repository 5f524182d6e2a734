"""A tiny random-init Stable Diffusion pipeline, built from config with no network.

Tests, benchmarks and the README demo need a real diffusers pipeline (same code path as
`stabilityai/sd-turbo`) on machines that have no weights and no internet. The components are
diffusers' own test-sized ones: the folder is ~170 KB and a 64x64 image takes milliseconds.
The pixels are noise; the point is that loading, seeding, img2img/inpaint and progress all run
for real.
"""

from __future__ import annotations

import argparse
import json
import string
import tempfile
from pathlib import Path
from typing import Any

TINY_VOCAB_PAD = "<|pad|>"


def _write_tokenizer_files(folder: Path) -> tuple[Path, Path, int]:
    """A character-level CLIP BPE vocab: no merges, so every character is its own token."""
    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    tokens = ["<|startoftext|>", "<|endoftext|>", TINY_VOCAB_PAD]
    for c in chars:
        tokens.append(c)
        tokens.append(c + "</w>")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path = folder / "vocab.json"
    merges_path = folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab))
    merges_path.write_text("#version: 0.2\n")
    return vocab_path, merges_path, len(vocab)


def build_tiny_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """Write a loadable tiny StableDiffusionPipeline into `folder`; same seed, same weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path, vocab_size = _write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(
            str(vocab_path), str(merges_path), pad_token=TINY_VOCAB_PAD, model_max_length=77
        )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
            hidden_size=8,
            intermediate_size=16,
            layer_norm_eps=1e-5,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            projection_dim=8,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe_any: Any = pipe  # diffusers' dynamic mixins are invisible to mypy
    pipe_any.save_pretrained(folder)
    return folder


def build_tiny_sdxl_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random-init StableDiffusionXLPipeline: two CLIP encoders (the second with a
    projection, for the pooled embedding) and a "text_time" UNet, like SDXL at toy size."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path, vocab_size = _write_tokenizer_files(Path(tmp))
        tokenizers = [
            CLIPTokenizer(
                str(vocab_path), str(merges_path), pad_token=TINY_VOCAB_PAD, model_max_length=77
            )
            for _ in range(2)
        ]
    hidden = 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + hidden,  # 6 time ids + pooled text
        cross_attention_dim=2 * hidden,  # both encoders' hidden states, concatenated
        norm_num_groups=2,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    )
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        hidden_size=hidden,
        intermediate_size=16,
        layer_norm_eps=1e-5,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        projection_dim=hidden,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(config)
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe: Any = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_ip_adapter(folder: Path, pipeline: Path, *, seed: int = 0) -> Path:
    """A tiny IP-Adapter for the tiny pipeline, laid out like h94/IP-Adapter.

    `folder/models/ip-adapter_tiny.safetensors` plus a tiny CLIP image encoder in
    `folder/models/image_encoder`, so `GeneratorSettings(ip_adapter=folder,
    ip_adapter_weight_name="ip-adapter_tiny.safetensors")` exercises the reference-image path.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    models = folder / "models"
    unet = UNet2DConditionModel.from_pretrained(Path(pipeline) / "unet")
    cross = int(unet.config.cross_attention_dim)
    blocks = list(unet.config.block_out_channels)
    embed_dim = 8
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=8,
            intermediate_size=16,
            projection_dim=embed_dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            num_channels=3,
        )
    )
    encoder.save_pretrained(models / "image_encoder")
    tensors: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(cross * 4, embed_dim) * 0.1,
        "image_proj.proj.bias": torch.zeros(cross * 4),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.1
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.1
        key_id += 2
    models.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(models / "ip-adapter_tiny.safetensors"))
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.tiny_pipeline",
        description="Write a tiny random-init Stable Diffusion pipeline (no download).",
    )
    parser.add_argument("outdir", type=Path, help="Folder to write the pipeline into.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    args = parser.parse_args(argv)
    path = build_tiny_pipeline(args.outdir, seed=args.seed)
    print(f"tiny pipeline written to {path}  (use: GROUNDWORK_GENERATOR__MODEL={path})")


if __name__ == "__main__":
    main()
