"""Latent diffusion throughput: a Stable Diffusion pipeline built from configs (SD 1.x sizes, random
weights: nothing can be downloaded), stock ``StableDiffusionPipeline.__call__`` against diffaudit's
fast path for the same steps and dtype (channels-last, compiled UNet and VAE decoder).

    python bench/bench_sd.py --size 512 --batch 8 --steps 20       # GPU
    python bench/bench_sd.py --tiny --size 64 --batch 2 --steps 2  # CPU smoke test
"""

from __future__ import annotations

import argparse

import torch

from _common import device_info, emit, timed


def make_pipeline(tiny: bool, size: int, dtype: torch.dtype, device: torch.device):
    """SD 1.x architecture (UNet 860M, CLIP ViT-L text encoder, KL VAE), random weights; or a tiny one."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if tiny:
            unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=size // 8,
                                        in_channels=4, out_channels=4, cross_attention_dim=32, norm_num_groups=8,
                                        attention_head_dim=4,
                                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
            vae = AutoencoderKL(block_out_channels=(16, 32, 32, 32), latent_channels=4, norm_num_groups=8,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
            text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77))
        else:
            unet = UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=768)  # SD 1.x defaults
            vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
            text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                                num_hidden_layers=12, projection_dim=768))  # ViT-L/14 text tower
    vocab = {f"w{i}": i for i in range(998)}
    vocab.update({"<|startoftext|>": 998, "<|endoftext|>": 999})
    with tempfile.TemporaryDirectory() as tmp:
        import json

        open(f"{tmp}/vocab.json", "w").write(json.dumps(vocab))
        open(f"{tmp}/merges.txt", "w").write("#version: 0.2\n")
        tok = CLIPTokenizer(f"{tmp}/vocab.json", f"{tmp}/merges.txt", model_max_length=77)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    pipe = make_pipeline(a.tiny, a.size, dtype, dev)
    prompts = ["w1 w2 w3"] * a.batch
    call = lambda: pipe(prompt=prompts, num_inference_steps=a.steps, guidance_scale=7.5, height=a.size, width=a.size,
                        output_type="np")
    call()
    t_stock = timed(call, dev, a.repeats)
    result = {"bench": "stable-diffusion", **device_info(dev), "size": a.size, "batch": a.batch, "steps": a.steps,
              "dtype": str(dtype), "images_per_s": {"stock_pipeline": a.batch / t_stock}}
    if dev.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        pipe.unet = torch.compile(pipe.unet)
        pipe.vae.decode = torch.compile(pipe.vae.decode)
        call()
        t_fast = timed(call, dev, a.repeats)
        result["images_per_s"]["diffaudit_fast_path"] = a.batch / t_fast
        result["speedup"] = t_stock / t_fast
    emit(result)


if __name__ == "__main__":
    main()
