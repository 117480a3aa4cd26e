"""The denoiser interface: a callable ε-predictor over a diffusers ``UNet2DModel``.

``denoiser(x_t, t, labels=None) -> ε̂`` with x_t (B, C, H, W) in model space ([-1, 1] at t = 0),
t (B,) integer timesteps in [0, T), labels (B,) class indices or None; ε̂ is float32 (B, C, H, W).
Loads a diffaudit run directory (``unet/`` + ``scheduler/``), a diffusers pipeline directory
(``model_index.json`` with ``unet/`` and ``scheduler/``) or a bare ``UNet2DModel`` directory
(then the paper's linear DDPM schedule is assumed). Weights load from safetensors only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffaudit.core.errors import DiffauditError
from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler


@dataclass
class Denoiser:
    """ε-prediction model with its noise schedule.

    Attributes:
        unet: the diffusers UNet (left unchanged except for device/dtype/memory format).
        alphas_cumprod: ᾱ_t, (T,) float64 on the CPU.
        dtype: the dtype the UNet runs in (float32, or bfloat16/float16 on a GPU).
        path: where it was loaded from ("" when built in memory).
    """

    unet: UNet2DModel
    alphas_cumprod: torch.Tensor
    dtype: torch.dtype = torch.float32
    path: str = ""
    channels_last: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def image_size(self) -> int:
        s = self.unet.config.sample_size
        return int(s if isinstance(s, int) else s[0])

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def num_classes(self) -> int | None:
        n = self.unet.config.num_class_embeds
        return int(n) if n else None

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes is not None and labels is None:
            raise DiffauditError("this model is class-conditional: give a class (prompt) for every image")
        x = x_t.to(self.device, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.unet(x, t.to(self.device), class_labels=None if labels is None else labels.to(self.device)).sample
        return out.float()

    def optimise_for_gpu(self, *, dtype: torch.dtype = torch.bfloat16, channels_last: bool = True, compile: bool = False,
                         compile_mode: str | None = None) -> "Denoiser":
        """GPU fast path: reduced precision, channels-last memory and optionally ``torch.compile``.

        ``compile_mode``: torch.compile's mode (None = default: a short compile; "max-autotune-no-cudagraphs"
        searches kernels for minutes; "reduce-overhead" adds CUDA graphs, which help small batches).
        Changes this denoiser's copy of the UNet in place (the files on disk are untouched).
        """
        self.unet.to(dtype=dtype)
        self.dtype = dtype
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.channels_last = True
        if compile:
            self.unet = torch.compile(self.unet, mode=compile_mode, dynamic=False)
        return self


def _scheduler_from(folder: Path) -> DDPMScheduler:
    if (folder / "scheduler_config.json").exists():
        return DDPMScheduler.from_pretrained(folder)
    return make_scheduler()


def load_denoiser(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Denoiser:
    """Load a run directory, a diffusers pipeline directory or a ``UNet2DModel`` directory."""
    root = Path(path)
    if not root.is_dir():
        raise DiffauditError(f"--model {root}: not a directory (expected a diffaudit run or a diffusers model folder)")
    if (root / "unet" / "config.json").exists():
        unet_dir, sched_dir = root / "unet", root / "scheduler"
    elif (root / "config.json").exists():
        unet_dir, sched_dir = root, root
    else:
        raise DiffauditError(
            f"--model {root}: no UNet found (looked for unet/config.json and config.json). "
            "Train one with `diffaudit train` or point to a diffusers UNet2DModel/DDPM pipeline folder."
        )
    try:
        config = json.loads((unet_dir / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffauditError(f"--model {root}: {unet_dir / 'config.json'} is not readable JSON ({exc})") from None
    cls = config.get("_class_name", "UNet2DModel") if isinstance(config, dict) else None
    if cls != "UNet2DModel":
        raise DiffauditError(f"--model {root}: {cls} is not a pixel-space UNet2DModel (latent pipelines load with load_sd_pipeline)")
    if not any(unet_dir.glob("*.safetensors")):
        raise DiffauditError(f"--model {root}: weights must be in safetensors format (pickled .bin weights are refused)")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:  # a truncated or damaged weights file, a config that does not fit them
        raise DiffauditError(f"--model {root}: the UNet in {unet_dir} cannot be loaded: {str(exc).splitlines()[0]}") from None
    unet = unet.to(device=device).eval()
    return Denoiser(unet=unet, alphas_cumprod=alphas_cumprod_of(_scheduler_from(sched_dir)), dtype=dtype, path=str(root))
