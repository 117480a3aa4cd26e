"""Image sources: turn a model directory into ``source(seeds, prompts) -> uint8 (N, H, W, C)``.

- :class:`PixelSource`: a DDPM/DDIM pixel-space UNet (our runs, diffusers UNet2DModel or DDPM
  pipeline folders); unconditional (prompt None) or class-conditional (prompt = class index).
- :class:`StableDiffusionSource`: a local ``StableDiffusionPipeline`` folder; each image's initial
  latent is drawn from its own seed, so any image can be regenerated alone. Its GPU fast path
  (``open_source(fast=True, compile=...)`` on CUDA) is bf16 weights and, with ``compile``,
  channels-last memory for the UNet and the VAE and ``torch.compile`` of the UNet and of
  ``vae.decode``. Uncompiled it keeps the default layout: on an H100 the eager pipeline in
  channels-last ran at 0.81x the stock bf16 pipeline it otherwise equals (docs/performance.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from diffaudit.core.batch_fit import resolve_batch
from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import loads_json
from diffaudit.core.seeds import randn_per_seed
from diffaudit.models.denoiser import Denoiser, load_denoiser
from diffaudit.sampling.generate import generate_images
from diffaudit.sampling.schedules import ddim_timesteps


#: Classifier-free guidance of a Stable Diffusion pipeline unless --guidance-scale says otherwise.
DEFAULT_GUIDANCE = 7.5
#: Fewest steps diffusers' PNDM scheduler samples with (below, its warm-up fails on array shapes).
PNDM_MIN_STEPS = 4

#: Images per UNet call of a pixel UNet without --micro-batch (on CUDA, elsewhere), and the sizes
#: ``--micro-batch auto`` probes on CUDA (first, largest; doubling).
PIXEL_MICRO_BATCH, PIXEL_PROBE = {"cuda": 256, "other": 32}, (32, 4096)
#: The same for a Stable Diffusion pipeline (images per pipeline call, on any device).
SD_MICRO_BATCH, SD_PROBE = 8, (1, 64)


@dataclass
class PixelSource:
    denoiser: Denoiser
    steps: int = 50
    eta: float = 0.0
    micro_batch: int = 64

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.denoiser.image_size, self.denoiser.image_size, self.denoiser.in_channels)

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional UNet (prompts are their indices); None: unconditional."""
        return self.denoiser.num_classes

    def settings(self) -> dict[str, Any]:
        out = {"kind": "pixel", "steps": self.steps, "eta": self.eta, "micro_batch": self.micro_batch,
               "num_classes": self.denoiser.num_classes}
        if not self.denoiser.schedule.is_default():  # recorded where it changes pixels (older stores: default)
            out["schedule"] = self.denoiser.schedule.to_dict()
        return out

    def check_prompts(self, prompts: Sequence[str | None]) -> None:
        """Refuse prompts this model cannot honour, before any image (or output folder) is made: an
        unconditional model takes none (they would be recorded yet change nothing), a class-conditional
        one takes class indices in range."""
        self._labels(prompts)

    def _labels(self, prompts: Sequence[str | None]) -> list[int] | None:
        """The class index of each prompt (None for an unconditional model); raises on a prompt the model
        cannot take."""
        num_classes = self.denoiser.num_classes
        if num_classes is None:
            if any(p is not None for p in prompts):
                raise DiffauditError("this model is unconditional: it takes no prompts (--prompts would be recorded but "
                                     "change nothing); give --n N for N images, or use a class-conditional or "
                                     "Stable Diffusion model to sample from prompts")
            return None
        try:
            labels = [int(p) for p in prompts]
        except (TypeError, ValueError):
            raise DiffauditError("this model is class-conditional: prompts must be class indices (0, 1, ...)") from None
        if labels and (min(labels) < 0 or max(labels) >= num_classes):
            raise DiffauditError(f"class prompts must lie in [0, {num_classes - 1}] (this model has {num_classes} classes)")
        return labels

    def __call__(self, seeds: Sequence[int], prompts: Sequence[str | None], *,
                 on_images: Callable[[int], None] | None = None) -> np.ndarray:
        """uint8 (N, H, W, C) images, one per seed. ``on_images(n)`` is told after each micro-batch how many
        images it made (progress within a long call); pixels are the same as in one call of the whole
        request, since every micro-batch starts at a multiple of ``micro_batch`` and is padded alike."""
        labels = self._labels(prompts)
        out = []
        for start in range(0, len(seeds), self.micro_batch):
            stop = start + self.micro_batch
            out.append(generate_images(self.denoiser, seeds[start:stop], steps=self.steps, eta=self.eta,
                                       labels=None if labels is None else labels[start:stop],
                                       micro_batch=self.micro_batch))
            if on_images is not None:
                on_images(len(out[-1]))
        return np.concatenate(out) if out else np.empty((0, *self.image_shape), dtype=np.uint8)


@dataclass
class StableDiffusionSource:
    """Text-to-image generation with a local StableDiffusionPipeline folder (no hub access).

    ``micro_batch``: images per pipeline call, or ``auto``: on CUDA the largest of 1, 2, 4, ... 64 whose
    UNet call and VAE decoding fit (:func:`~diffaudit.core.batch_fit.resolve_batch`, probed before compiling), 8
    elsewhere. ``channels_last``: the UNet's and the VAE's weights in channels-last memory (any
    device; the images stay within rounding of the default layout). ``compile`` (CUDA only; refused
    on the CPU, Conventions: CPU limits): ``torch.compile`` of the UNet and of ``vae.decode``
    with ``compile_mode`` (None: the default mode), compiled on the first call (a minute or more at
    SD sizes; pays off over many images). ``pipe``: an already built ``StableDiffusionPipeline`` to use
    instead of loading ``path`` (see :meth:`from_pipeline`); it is moved to ``device``/``dtype`` and,
    like the loaded one, changed in place (scheduler, memory format, compiled modules).
    """

    path: str
    device: str | torch.device = "cpu"
    steps: int = 50
    guidance_scale: float = DEFAULT_GUIDANCE
    scheduler: str = "ddim"
    micro_batch: int | str = SD_MICRO_BATCH
    dtype: torch.dtype = torch.float32
    height: int | None = None
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None
    pipe: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

        from diffaudit.models.latent_loss import load_sd_pipeline

        schedulers = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "pndm": PNDMScheduler}
        if self.scheduler not in schedulers:
            raise DiffauditError(f"unknown --scheduler {self.scheduler!r}; choose one of {', '.join(schedulers)}")
        if self.scheduler == "pndm" and self.steps < PNDM_MIN_STEPS:
            raise DiffauditError(f"--scheduler pndm needs --steps {PNDM_MIN_STEPS} or more (diffusers' PNDM fails below, "
                                 f"in its warm-up); got {self.steps}: raise --steps, or use ddim or dpm")
        if self.compile and torch.device(self.device).type != "cuda":
            raise DiffauditError(f"torch.compile of the Stable Diffusion UNet and VAE decoder is for CUDA only (no "
                                 f"compilation on the CPU); the device here is {self.device}: leave compile off")
        if self.pipe is None:  # components checked first; a damaged one is an error naming it, not a traceback
            pipe = load_sd_pipeline(self.path, device=self.device, dtype=self.dtype)
        else:
            pipe = self.pipe.to(device=self.device, dtype=self.dtype)
        pipe.scheduler = schedulers[self.scheduler].from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.height = self.height or int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
        self._apply_fast_path()

    @classmethod
    def from_pipeline(cls, pipe: Any, **kwargs: Any) -> "StableDiffusionSource":
        """A source over an in-memory ``StableDiffusionPipeline`` (benchmarks, tests): same generation
        code as a loaded folder. ``kwargs``: the other fields (device, steps, dtype, channels_last, ...)."""
        return cls(path=kwargs.pop("path", "<in-memory pipeline>"), pipe=pipe, **kwargs)

    def _apply_fast_path(self) -> None:
        """Channels-last memory, the micro-batch (``auto``: probed, before compiling) and torch.compile, as
        asked (in place, on this source's pipeline)."""
        pipe = self.pipe
        if self.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        self.micro_batch = resolve_batch(self.micro_batch, torch.device(self.device), default=SD_MICRO_BATCH,
                                         probe=self._probe, start=SD_PROBE[0], cap=SD_PROBE[1], what="--micro-batch")
        if self.compile:
            if not hasattr(pipe.unet, "_orig_mod"):  # not compiled twice
                pipe.unet = torch.compile(pipe.unet, mode=self.compile_mode, dynamic=False)
            if not hasattr(pipe.vae.decode, "_torchdynamo_orig_callable"):
                pipe.vae.decode = torch.compile(pipe.vae.decode, mode=self.compile_mode, dynamic=False)

    @torch.no_grad()
    def _probe(self, batch: int) -> None:
        """The parts of one pipeline call on ``batch`` images that hold the most memory: a UNet call on its
        guided batch (2 x ``batch`` under classifier-free guidance), then the VAE decoder. Called directly,
        not through the pipeline, so that any scheduler (PNDM takes no single-step call) probes alike."""
        pipe = self.pipe
        lat = self.height // pipe.vae_scale_factor
        guided = batch * (2 if self.guidance_scale > 1 else 1)  # the pipeline's own test for guidance
        zeros = lambda *shape: torch.zeros(*shape, device=self.device, dtype=self.dtype)  # noqa: E731
        text = zeros(guided, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim)
        pipe.unet(zeros(guided, pipe.unet.config.in_channels, lat, lat), torch.tensor([999], device=self.device),
                  encoder_hidden_states=text)
        pipe.vae.decode(zeros(batch, pipe.vae.config.latent_channels, lat, lat))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.height, self.height, 3)

    #: Not class-conditional: its prompts are text.
    num_classes = None

    def settings(self) -> dict[str, Any]:
        return {"kind": "stable-diffusion", "steps": self.steps, "guidance_scale": self.guidance_scale,
                "scheduler": self.scheduler, "micro_batch": self.micro_batch, "height": self.height, "dtype": str(self.dtype)}

    def check_prompts(self, prompts: Sequence[str | None]) -> None:
        """Refuse a request without a prompt for every image, before any image (or output folder) is made."""
        if any(p is None for p in prompts):
            raise DiffauditError("a Stable Diffusion pipeline needs a prompt for every image (--prompts FILE)")

    def __call__(self, seeds: Sequence[int], prompts: Sequence[str | None], *,
                 on_images: Callable[[int], None] | None = None) -> np.ndarray:
        """uint8 (N, H, W, 3) images, one per seed and prompt; ``on_images(n)`` is told after each
        micro-batch how many images it made (progress within a long call)."""
        self.check_prompts(prompts)
        pipe = self.pipe
        lat_c = pipe.unet.config.in_channels
        lat_s = self.height // pipe.vae_scale_factor
        out = []
        for start in range(0, len(seeds), self.micro_batch):
            s = list(seeds[start:start + self.micro_batch])
            p = list(prompts[start:start + self.micro_batch])
            real, pad = len(s), self.micro_batch - len(s)
            s, p = s + [s[-1]] * pad, p + [p[-1]] * pad  # fixed micro-batch: pixels independent of --batch-size
            latents = randn_per_seed(s, (lat_c, lat_s, lat_s), device=self.device, dtype=self.dtype)
            res = pipe(prompt=p, latents=latents, num_inference_steps=self.steps,
                       guidance_scale=self.guidance_scale, height=self.height, width=self.height, output_type="np")
            imgs = np.asarray(res.images)[:real]
            if not np.isfinite(imgs).all():
                raise DiffauditError("the pipeline produced NaN or infinite values; no images were written")
            out.append(np.clip(np.round(imgs * 255), 0, 255).astype(np.uint8))
            if on_images is not None:
                on_images(real)
        return np.concatenate(out)


def is_stable_diffusion_dir(path: str | Path) -> bool:
    mi = Path(path) / "model_index.json"
    if not mi.is_file():
        return False
    try:  # nested too deeply: an error naming the file (loads_json), not a guess
        index = loads_json(mi.read_text(encoding="utf-8"), mi)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(index, dict) and "StableDiffusion" in str(index.get("_class_name", ""))


def open_source(model: str | Path, *, device: torch.device, steps: int, eta: float = 0.0, micro_batch: int | str | None = None,
                guidance_scale: float | None = None, scheduler: str | None = None, fast: bool = False, compile: bool = False):
    """The image source for a model directory (pixel UNet or Stable Diffusion pipeline).

    ``fast`` (CUDA only; ignored on other devices): bf16 weights and channels-last memory for a pixel
    UNet; ``compile`` adds ``torch.compile`` of the UNet (about a minute once; pays off from tens of
    thousands of images). A Stable Diffusion pipeline takes bf16 alone, and with ``compile``
    channels-last for its UNet and VAE and ``torch.compile`` of both (see :class:`StableDiffusionSource`).

    ``guidance_scale`` (default 7.5) and ``scheduler`` (``ddim``, default; ``dpm``, ``pndm``): a Stable Diffusion
    pipeline's; refused for a pixel UNet, which samples as its own scheduler config says.

    ``micro_batch``: images per UNet call; None: 256 on CUDA and 32 elsewhere (8 for Stable Diffusion);
    ``auto``: on CUDA the largest that fits (pixel UNets: 32, 64, ... 4096, one forward pass each;
    :func:`~diffaudit.core.batch_fit.resolve_batch`), the default elsewhere.
    """
    # Checked before any output folder exists, so a corrected re-run is not refused as "other settings".
    if not 0.0 <= eta <= 1.0:
        raise DiffauditError(f"--eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like); got {eta}")
    if isinstance(micro_batch, int) and micro_batch < 1:
        raise DiffauditError(f"--micro-batch must be at least 1; got {micro_batch}")
    if is_stable_diffusion_dir(model):
        if steps < 1:  # a pixel UNet's are checked against its schedule below
            raise DiffauditError(f"--steps must be at least 1; got {steps}")
        if eta != 0.0:  # the pipeline's call would take it, but its noise would not be the per-image seeded noise
            raise DiffauditError(f"--eta applies to a pixel UNet's DDIM; --model {model} is a Stable Diffusion pipeline, "
                                 "sampled deterministically from each image's seeded latents (η = 0): drop --eta")
        cuda_fast = fast and device.type == "cuda"
        return StableDiffusionSource(str(model), device=device, steps=steps,
                                     guidance_scale=DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale,
                                     scheduler=scheduler or "ddim",
                                     micro_batch=SD_MICRO_BATCH if micro_batch is None else micro_batch,
                                     dtype=torch.bfloat16 if cuda_fast else torch.float32,
                                     channels_last=cuda_fast and compile, compile=cuda_fast and compile)
    given = [flag for flag, value in (("--guidance-scale", guidance_scale), ("--scheduler", scheduler)) if value is not None]
    if given:
        raise DiffauditError(f"{' and '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to a Stable Diffusion pipeline; "
                             f"--model {model} is a pixel UNet, "
                             "sampled with DDIM as its scheduler config says: drop them")
    den = load_denoiser(model, device=device)
    den.schedule.check(f"--model {model}: the scheduler")  # a schedule the sampler follows, and --steps in
    ddim_timesteps(den.num_train_timesteps, steps, spacing=den.schedule.timestep_spacing,  # range, before any
                   offset=den.schedule.steps_offset)  # output folder exists
    if fast and device.type == "cuda":
        den.optimise_for_gpu(dtype=torch.bfloat16, channels_last=True, compile=compile)
    default = PIXEL_MICRO_BATCH["cuda" if device.type == "cuda" else "other"]
    micro_batch = resolve_batch(micro_batch, device, default=default, probe=den.forward_probe,
                                start=PIXEL_PROBE[0], cap=PIXEL_PROBE[1], what="--micro-batch")
    return PixelSource(den, steps=steps, eta=eta, micro_batch=micro_batch)
