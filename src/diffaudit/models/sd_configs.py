"""Stable Diffusion pipelines built from configs with random weights (nothing is downloaded).

For benchmarks at the real SD 1.x sizes (UNet 860M, CLIP ViT-L/14 text tower, KL VAE) and for tests
with a tiny pipeline. The tokenizer is a CLIP tokenizer over a local character vocabulary (a-z, 0-9,
no merges), written to a temporary folder: any lower-case alphanumeric prompt tokenizes.
"""

from __future__ import annotations

import json
import string
import tempfile

import torch


def _tokenizer():
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits
    tokens = list(chars) + [c + "</w>" for c in chars]
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/vocab.json", "w") as f:
            json.dump(vocab, f)
        with open(f"{tmp}/merges.txt", "w") as f:
            f.write("#version: 0.2\n")
        return CLIPTokenizer(f"{tmp}/vocab.json", f"{tmp}/merges.txt", model_max_length=77)


def build_stable_diffusion(*, tiny: bool = True, size: int = 64, seed: int = 0):
    """A ``StableDiffusionPipeline`` with random weights; ``size`` is the image side in pixels."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if tiny:
            unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=size // 8,
                                        in_channels=4, out_channels=4, cross_attention_dim=32, norm_num_groups=8,
                                        attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
            vae = AutoencoderKL(block_out_channels=(16, 32, 32, 32), latent_channels=4, norm_num_groups=8,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
            text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                num_hidden_layers=2, vocab_size=80, max_position_embeddings=77))
        else:
            unet = UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=768)  # SD 1.x defaults
            vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
            text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                                num_hidden_layers=12, projection_dim=768))  # ViT-L/14 text tower
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)  # SD 1.x's (the pipeline would set it, warning)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=_tokenizer(), scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
