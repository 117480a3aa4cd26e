"""The denoiser interface: a callable ε-predictor over a diffusers ``UNet2DModel``.

``denoiser(x_t, t, labels=None) -> ε̂`` with x_t (B, C, H, W) in model space ([-1, 1] at t = 0),
t (B,) integer timesteps in [0, T), labels (B,) class indices or None; ε̂ is float32 (B, C, H, W).
Loads a diffaudit run directory (``unet/`` + ``scheduler/``), a diffusers pipeline directory
(``model_index.json`` with ``unet/`` and ``scheduler/``) or a bare ``UNet2DModel`` directory
(then the paper's linear DDPM schedule is assumed). Weights load from safetensors only.

Every consumer (sampling, losses, inpainting) reads ε̂, so a model trained for another target is
converted by its schedule's ``prediction_type``, with ᾱ = ᾱ_t of each row:

    v_prediction:  ε̂ = sqrt(ᾱ)·v̂ + sqrt(1 − ᾱ)·x_t        (v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x_0)
    sample:        ε̂ = (x_t − sqrt(ᾱ)·x̂_0) / sqrt(1 − ᾱ)

and a learned-variance UNet (``out_channels`` = 2C, ``variance_type`` learned/learned_range) gives its
first C channels. Schedules that are not discrete-time β schedules (score-SDE VE/VP), non-square
UNets and other output layouts are refused at load.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors import SafetensorError, safe_open

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import loads_json, permission_denied
from diffaudit.core.outdir import read_settings_record, recorded_command
from diffaudit.core.progress import warning_once
from diffaudit.models.config_values import check_scheduler_values, check_unet_values, shown
from diffaudit.models.quiet import quiet_loading
from diffaudit.models.run_files import checkpoint_dirs
from diffaudit.models.scheduler import SamplingSchedule, alphas_cumprod_of, make_scheduler


@dataclass
class Denoiser:
    """ε-prediction model with its noise schedule.

    Attributes:
        unet: the diffusers UNet (left unchanged except for device/dtype/memory format).
        alphas_cumprod: ᾱ_t, (T,) float64 on the CPU.
        dtype: the dtype the UNet runs in (float32, or bfloat16/float16 on a GPU).
        path: where it was loaded from ("" when built in memory).
        prediction_type: what the UNet predicts (:data:`PREDICTION_TYPES`); the call returns ε̂ always.
        learned_variance: the UNet's output holds ε̂ then a variance (2C channels); the first C are used.
        schedule: how its scheduler config says to sample it with few steps (spacing, clipping, final ᾱ).
    """

    unet: UNet2DModel
    alphas_cumprod: torch.Tensor
    dtype: torch.dtype = torch.float32
    path: str = ""
    channels_last: bool = False
    prediction_type: str = "epsilon"
    learned_variance: bool = False
    schedule: SamplingSchedule = SamplingSchedule()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def image_size(self) -> int:
        s = self.unet.config.sample_size
        if s is None:  # diffusers' default: the UNet scores images of any size, but none says what to generate
            raise DiffauditError(f"{self.path or 'the model'}: its UNet's config.json gives no sample_size, so the size "
                                 "of the images to generate is unknown: set sample_size to the size it was trained at")
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
        """ε̂(x_t, t): float32 (B, C, H, W) for noisy images ``x_t`` float (B, C, H, W) in model space and
        integer timesteps ``t`` (B,) or () in [0, T); ``labels`` int (B,) for a class-conditional model.

        Raises :class:`DiffauditError` for another layout or dtype (channels last, or float timesteps, gave a
        torch error from inside the UNet, or a silent answer); the values are not checked, which would wait
        for the device on every call."""
        if x_t.ndim != 4 or x_t.shape[1] != self.in_channels or not x_t.is_floating_point():
            raise DiffauditError(f"the model takes float x_t of shape (B, {self.in_channels}, H, W), in model space "
                                 f"[-1, 1] plus noise; got {str(x_t.dtype).removeprefix('torch.')} of shape "
                                 f"{tuple(x_t.shape)}")
        if t.is_floating_point() or t.shape not in ((), (x_t.shape[0],)):
            raise DiffauditError(f"the model takes integer timesteps t of shape ({x_t.shape[0]},) or (); got "
                                 f"{str(t.dtype).removeprefix('torch.')} of shape {tuple(t.shape)}")
        if self.num_classes is not None and labels is None:
            raise DiffauditError("this model is class-conditional: give a class (prompt) for every image")
        x = x_t.to(self.device, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.unet(x, t.to(self.device), class_labels=None if labels is None else labels.to(self.device)).sample.float()
        if self.learned_variance:
            out = out[:, : x_t.shape[1]]
        if self.prediction_type == "epsilon":
            return out
        ab = self.alphas_cumprod.to(self.device)[t.to(self.device).long()].float().view(-1, 1, 1, 1)
        x_t = x_t.to(self.device, torch.float32)
        if self.prediction_type == "v_prediction":
            return ab.sqrt() * out + (1 - ab).sqrt() * x_t
        return (x_t - ab.sqrt() * out) / (1 - ab).sqrt()  # "sample": x̂_0

    @torch.no_grad()
    def forward_probe(self, batch: int) -> None:
        """One forward pass of the uncompiled UNet on ``batch`` zero images at the last timestep, in this
        denoiser's dtype and memory format: the workload whose peak memory
        :func:`~diffaudit.core.batch_fit.largest_batch_that_fits` reads (a compiled UNet needs no more,
        and is not recompiled for each probed size)."""
        unet = getattr(self.unet, "_orig_mod", self.unet)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.zeros(batch, self.in_channels, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
        t = torch.full((batch,), self.num_train_timesteps - 1, dtype=torch.long, device=self.device)
        labels = None if self.num_classes is None else torch.zeros(batch, dtype=torch.long, device=self.device)
        unet(x.contiguous(memory_format=memory_format), t, class_labels=labels)

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


#: What a pixel UNet may predict (a scheduler config's ``prediction_type``); converted to ε̂.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _scheduler_from(folder: Path, root: Path, flag: str = "--model") -> tuple[DDPMScheduler, dict]:
    """The model's discrete-time schedule as a DDPMScheduler (ᾱ_t, prediction_type, variance_type), and
    its config as the file holds it ({} when there is none; a DDIM config's ``set_alpha_to_one`` is not a
    DDPMScheduler field: :class:`SamplingSchedule` reads it from there); errors name the model as
    ``flag root``."""
    cfg_path = folder / "scheduler_config.json"
    if not cfg_path.exists():  # a bare UNet folder, or a model folder whose scheduler/ was left behind
        warning_once("", f"{flag} {root}: no {cfg_path.relative_to(root) if folder != root else cfg_path.name} "
                         "beside the UNet, so the DDPM defaults are taken (linear β from 1e-4 to 0.02, T = 1000, "
                         "ε-prediction); a model trained with another schedule samples and scores wrongly under "
                         "them: save its scheduler beside it (scheduler.save_pretrained(FOLDER/scheduler))")
        return make_scheduler(), {}
    try:
        cfg = loads_json(cfg_path.read_text(), f"{flag} {root}: {cfg_path}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffauditError(f"{flag} {root}: {cfg_path} is not readable JSON ({exc})") from None
    if not isinstance(cfg, dict) or not ("beta_schedule" in cfg or "trained_betas" in cfg):
        name = cfg.get("_class_name") if isinstance(cfg, dict) else None
        raise DiffauditError(f"{flag} {root}: the scheduler {name or cfg_path} is not a discrete-time β schedule "
                             "(DDPM, DDIM, PNDM, ...); score-SDE and other continuous schedules are not supported")
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise DiffauditError(f"{flag} {root}: prediction_type {prediction!r} is not supported; "
                             f"choose one of {', '.join(PREDICTION_TYPES)}")
    where = f"{flag} {root}: {cfg_path}"
    check_scheduler_values(cfg, where)
    try:
        scheduler = DDPMScheduler.from_pretrained(folder)
    except NotImplementedError:  # the one refusal of DDPMScheduler.__init__: a β schedule it does not build
        raise DiffauditError(f"{where}: beta_schedule {shown(cfg.get('beta_schedule'))} is not a β schedule "
                             "diffusers' DDPMScheduler builds (linear, scaled_linear, squaredcos_cap_v2, sigmoid)") from None
    except (OSError, ValueError, TypeError, RuntimeError) as exc:  # any other value it cannot take
        raise DiffauditError(f"{where}: no noise schedule can be built from it: "
                             f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    betas = scheduler.betas
    if not (bool(torch.isfinite(betas).all()) and 0 <= float(betas.min()) and float(betas.max()) <= 1):
        why = "ᾱ_t = Π(1 − β) must stay in (0, 1]"
        raise DiffauditError(f"{where}: trained_betas must be numbers in [0, 1] ({why})" if cfg.get("trained_betas") is not None
                             else f"{where}: beta_start and beta_end must give βs in [0, 1] ({why}); they are "
                                  f"{shown(cfg.get('beta_start'))} and {shown(cfg.get('beta_end'))}")
    if float(scheduler.alphas_cumprod.min()) <= 0:  # zero terminal SNR: ε̂ ↔ x̂_0 divides by sqrt(ᾱ_t) = 0
        raise DiffauditError(f"{flag} {root}: the schedule reaches ᾱ_t = 0 (zero terminal SNR, "
                             "rescale_betas_zero_snr), where the sampler and the losses, which work through ε̂, "
                             "divide by zero; it is not supported")
    return scheduler, cfg


def _check_layout(config: dict, scheduler: DDPMScheduler, root: Path, flag: str = "--model") -> bool:
    """Refuse UNets whose input or output diffaudit cannot read; True when the output carries a
    learned variance after ε̂ (2C channels)."""
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len({int(v) for v in size}) > 1:
        raise DiffauditError(f"{flag} {root}: the UNet is non-square (sample_size {list(size)}); only square models are supported")
    c_in, c_out = int(config.get("in_channels", 3)), int(config.get("out_channels", config.get("in_channels", 3)))
    if c_out == c_in:
        return False
    if c_out == 2 * c_in and scheduler.config.get("variance_type") in ("learned", "learned_range"):
        return True
    raise DiffauditError(f"{flag} {root}: the UNet takes {c_in} channels but gives {c_out}, and its schedule "
                         "declares no learned variance; a pixel model must predict one value per input channel")


def not_a_model_reason(root: Path) -> str | None:
    """Why the folder ``root`` holds no model, in words (:func:`_not_a_model`), or None when it holds a UNet
    (a run, pipeline or bare UNet folder) or is no folder at all."""
    if not root.is_dir() or (root / "unet" / "config.json").exists() or (root / "config.json").exists():
        return None
    return _not_a_model(root)


def _locate(root: Path, flag: str = "--model") -> tuple[Path, Path]:
    """(UNet folder, scheduler folder) of a run directory, pipeline directory or bare UNet folder."""
    if not root.is_dir():
        raise DiffauditError(f"{flag} {root}: not a directory (expected a diffaudit run or a diffusers model folder)")
    if (root / "unet" / "config.json").exists():
        return root / "unet", root / "scheduler"
    if (root / "config.json").exists():
        return root, root
    raise DiffauditError(f"{flag} {root}: {_not_a_model(root)}")


def made_by(run: Path) -> tuple[str, Path] | None:
    """(command, folder) of the ``shadows`` run (``SHADOWS/model-NN``), audit (``AUDIT/models/model-NN``) or
    canaries run (``CANARIES/model``) that trains the run folder ``run`` as one of its models; None for a run
    of its own."""
    if run.name.startswith("model-") and recorded_command(run.parent) == "shadows":
        return "shadows", run.parent
    if run.name.startswith("model-") and run.parent.name == "models" and recorded_command(run.parent.parent) == "audit":
        return "audit", run.parent.parent
    if run.name == "model" and recorded_command(run.parent) == "canaries":
        return "canaries", run.parent
    return None


def _not_a_model(root: Path) -> str:
    """Why a folder without a UNet is none, in words: an unfinished ``train`` run (how far it got, and
    how to finish it), the folder of another diffaudit command (where its models lie), or neither."""
    record = read_settings_record(root)
    command = record.get("command") if record else None
    if command == "train":
        steps = ((record.get("settings") or {}).get("train") or {}).get("steps")
        done = checkpoint_dirs(root)
        of = f" of {steps}" if isinstance(steps, int) else ""
        where = (f"its last checkpoint is step {int(done[-1].name.split('-')[1])}{of}" if done
                 else f"it has no checkpoint yet{f', of {steps} steps' if of else ''}")
        maker = made_by(root)
        if maker is not None:  # one model of a shadows run or an audit: that command finishes it, not `train`
            command_name, folder = maker
            return (f"a model that `diffaudit {command_name}` has not finished ({where}; its UNet is written when it "
                    f"finishes). Re-run the `diffaudit {command_name}` command that made {folder} (the same options): it "
                    "resumes where it stopped.")
        return (f"an unfinished `diffaudit train` run ({where}; "
                "its UNet is written when it finishes). Run the same `diffaudit train ... --out "
                f"{root}` again to finish it: it resumes from its last checkpoint.")
    if command == "canaries":  # its one model trained beside --data on canaries no --data holds
        model = root / "model"
        return (f"the folder of `diffaudit canaries`, not a model. Its model{f' ({model})' if (model / 'unet').is_dir() else ''} "
                "trained on --data and the canaries it inserted, which no --data holds, so it is measured by that "
                f"run itself: `diffaudit report {root}` shows its canaries' exposure and extraction")
    if command in ("shadows", "audit"):
        models = [p for p in [root / "model", *sorted((root / "models").glob("model-*")), *sorted(root.glob("model-*"))]
                  if (p / "unet" / "config.json").exists()]
        listed = ", ".join(str(p) for p in models[:3]) + (", ..." if len(models) > 3 else "")
        return f"the folder of `diffaudit {command}`, not one model" + (f"; pass one of its models: {listed}" if models else "")
    if command:
        return f"the output folder of `diffaudit {command}`, which holds no model"
    return ("no UNet found (looked for unet/config.json and config.json). "
            "Train one with `diffaudit train` or point to a diffusers UNet2DModel/DDPM pipeline folder.")


def read_unet_config(path: str | Path, flag: str = "--model") -> dict:
    """The UNet's ``config.json`` of a model folder (as :func:`load_denoiser` finds it), weights unread.
    ``flag``: the option the path came from, which errors name (``--shadow``, ...)."""
    root = Path(path)
    unet_dir, _ = _locate(root, flag)
    try:
        config = loads_json((unet_dir / "config.json").read_text(), f"{flag} {root}: {unet_dir / 'config.json'}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffauditError(f"{flag} {root}: {unet_dir / 'config.json'} is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DiffauditError(f"{flag} {root}: {unet_dir / 'config.json'} is not a JSON object")
    if config.get("_class_name", "UNet2DModel") == "UNet2DModel":  # another class is refused by its name where loaded
        check_unet_values(config, f"{flag} {root}: {unet_dir / 'config.json'}")
    return config


def read_schedule(path: str | Path, flag: str = "--model") -> tuple[np.ndarray, str]:
    """ᾱ_t, float64 (T,) in (0, 1], and the ``prediction_type`` of a model folder's noise schedule
    (:func:`load_denoiser`'s; the paper's DDPM schedule where the folder records none), weights unread."""
    root = Path(path)
    _, sched_dir = _locate(root, flag)
    scheduler, _ = _scheduler_from(sched_dir, root, flag)
    return alphas_cumprod_of(scheduler).numpy(), str(scheduler.config.prediction_type)


def read_sampling_schedule(path: str | Path, flag: str = "--model") -> SamplingSchedule:
    """How a model folder's scheduler config says to sample it (:class:`SamplingSchedule`), weights unread."""
    root = Path(path)
    _, sched_dir = _locate(root, flag)
    _, config = _scheduler_from(sched_dir, root, flag)
    return SamplingSchedule.from_config(config)


def check_image_shape(config, image_shape: tuple[int, int, int], *, what: str) -> None:
    """Refuse images (``image_shape``: H, W, C) of another size or channel count than the UNet of
    ``config`` takes (``sample_size``, ``in_channels``), naming the ``--image-size`` and ``--mode`` that
    load them so (a folder of gray images with one colour file loads as RGB); ``what`` names the model."""
    H, W, C = (int(v) for v in image_shape)
    size = config.get("sample_size")
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size) if size else None
    channels = config.get("in_channels")
    if (hw is None or hw == (H, W)) and (channels is None or int(channels) == C):
        return
    fixes = []
    if hw is not None and hw != (H, W) and hw[0] == hw[1]:
        fixes.append(f"--image-size {hw[0]}")
    mode = {1: "L", 3: "RGB"}.get(int(channels)) if channels is not None and int(channels) != C else None
    if mode:
        fixes.append(f"--mode {mode}")
    how = " and ".join(fixes) if fixes else "the --image-size and --mode it was trained with"
    why = " (a folder of gray images with one colour file loads as RGB)" if mode == "L" else ""
    built = f"{hw[0]}x{hw[1]}" if hw else "any size"
    raise DiffauditError(f"{what} takes {built} images with {channels} channel(s), but the data gives {H}x{W} with {C}; "
                         f"load it with {how}{why}")


def check_model_input(config, image_shape: tuple[int, int, int], *, labels, what: str) -> None:
    """Refuse images a UNet was not built for, before any work.

    Args:
        config: the UNet's config (``unet.config`` or :func:`read_unet_config`): ``sample_size``,
            ``in_channels``, ``num_class_embeds``.
        image_shape: (H, W, C) of the images it will see.
        labels: the class label of every image (int array), or None where there are none; a
            class-conditional UNet needs them, each in [0, num_class_embeds).
        what: how errors name the model.

    A fully convolutional UNet runs on any size, so without this check images of another size or
    a dataset that is not its training data would give numbers and no error.
    """
    check_image_shape(config, image_shape, what=what)
    n_classes = config.get("num_class_embeds")
    if n_classes and labels is None:
        raise DiffauditError(f"{what} is class-conditional, but the data has no class labels")
    if n_classes and len(labels) and not (0 <= int(np.min(labels)) and int(np.max(labels)) < int(n_classes)):
        raise DiffauditError(f"{what} knows classes 0..{int(n_classes) - 1}, but the data has labels "
                             f"{int(np.min(labels))}..{int(np.max(labels))}")


def _not_pixel_space(root: Path, cls: str, flag: str) -> str:
    """Why ``root`` (whose UNet is a ``cls``) is refused where a pixel-space model is needed, and what to give."""
    pipeline = next((p for p in (root, root.parent) if (p / "model_index.json").is_file()), None)
    where = ("" if pipeline is None or pipeline == root else
             f"; {pipeline} holds its pipeline (model_index.json): give that folder to sample or mia")
    if pipeline is None and (root / "unet").is_dir() and (root / "vae").is_dir():  # a pipeline's folder, its index lost
        where = (f"; {root} looks like a pipeline's folder (unet/, vae/) without its model_index.json, which names "
                 "the components: restore it (save_pretrained writes it)")
    return (f"{flag} {root}: its UNet is a {cls}, not a pixel-space UNet2DModel: this takes pixel-space diffusion models "
            "(the inpainting attack, and anything else that denoises pixels) only. A Stable Diffusion pipeline's folder "
            f"is taken whole by sample and mia{where}")


def _retrain_hint(root: Path) -> str:
    """How to make a damaged model of diffaudit's again: the folder of ``diffaudit train`` (one of
    ``diffaudit shadows``' or an audit's models when its parent is theirs, retrained when deleted), or ""."""
    if recorded_command(root) != "train":
        return ""
    if recorded_command(root.parent) == "shadows":
        return (f". If its weights file was damaged (cut short, edited), delete {root} and re-run the `diffaudit "
                "shadows` or `diffaudit audit` that trained it: that model alone is trained again")
    return (f". If its weights file was damaged (cut short, edited), train it again: `diffaudit train` with the settings "
            f"in {root / 'settings.json'} and --fresh")


def _check_weights_hold_config(unet_dir: Path, config: dict, root: Path, flag: str) -> None:
    """Refuse a UNet whose ``config`` describes more parameters than its safetensors files hold, before
    diffusers allocates them: it builds the model, randomly initialised, and only then compares it with the
    weights, so ``block_out_channels: [8000, 8000]`` beside a tiny model's weights first took tens of GB.
    The model is built on the meta device (shapes, no memory); the files' tensors are counted from their
    headers. Errors of the build itself are the caller's to word."""
    with quiet_loading(), torch.device("meta"):
        wanted = sum(p.numel() for p in UNet2DModel.from_config(config).parameters())
    held = 0
    for weights in sorted(unet_dir.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:  # the header only
            held += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    if wanted > held:
        raise DiffauditError(f"{flag} {root}: {unet_dir / 'config.json'} describes a UNet of {wanted:,} parameters, but "
                             f"its weights hold {held:,}: the config and the weights are not of one model (a config "
                             f"edited, or weights of another model){_retrain_hint(root)}")


def load_denoiser(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  flag: str = "--model") -> Denoiser:
    """Load a run directory, a diffusers pipeline directory or a ``UNet2DModel`` directory. ``flag``: the
    option the path came from, which errors name (``--shadow``, ...)."""
    root = Path(path)
    unet_dir, sched_dir = _locate(root, flag)
    config = read_unet_config(root, flag)
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise DiffauditError(_not_pixel_space(root, cls, flag))
    if not any(unet_dir.glob("*.safetensors")):
        pickled = sorted(p.name for p in unet_dir.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise DiffauditError(f"{flag} {root}: weights must be in safetensors format (pickled weights such as {pickled[0]} "
                             "are refused: unpickling runs code). Where you trust the file, convert it once with "
                             f"diffusers: UNet2DModel.from_pretrained('{unet_dir}', use_safetensors=False)"
                             f".save_pretrained('{unet_dir}', safe_serialization=True)" if pickled else f"{flag} {root}: {unet_dir} holds no weights (no "
                             ".safetensors file); the run is incomplete or its weights were removed")
    scheduler, sched_config = _scheduler_from(sched_dir, root, flag)
    schedule = SamplingSchedule.from_config(sched_config)  # checked where it is sampled (open_source)
    learned_variance = _check_layout(config, scheduler, root, flag)
    try:
        _check_weights_hold_config(unet_dir, config, root, flag)
        with quiet_loading():
            unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, torch_dtype=dtype)
    except DiffauditError:
        raise
    # a truncated or damaged weights file, a config that does not fit them, or a config value that diffusers or torch
    # cannot build a layer from (those check_unet_values names are refused before; others fail inside them)
    except (OSError, ValueError, RuntimeError, TypeError, ArithmeticError, LookupError, NameError, SafetensorError) as exc:
        unreadable = next((f for f in sorted(unet_dir.iterdir()) if f.is_file() and not os.access(f, os.R_OK)), None)
        if unreadable is not None:  # safetensors says "No such file": not damaged, so never "train it again"
            raise DiffauditError(f"{flag} {root}: {permission_denied(unreadable)}") from None
        said = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DiffauditError(f"{flag} {root}: the UNet in {unet_dir} cannot be loaded: {said}{_retrain_hint(root)}") from None
    unet = unet.to(device=device).eval()
    return Denoiser(unet=unet, alphas_cumprod=alphas_cumprod_of(scheduler), dtype=dtype, path=str(root),
                    prediction_type=scheduler.config.prediction_type, learned_variance=learned_variance,
                    schedule=schedule)
