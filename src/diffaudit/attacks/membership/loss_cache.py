"""Per-model loss arrays cached on disk, so a re-run (or another attack) never recomputes them.

Layout: ``<cache>/<name>-<model digest>-<data digest>[-noise<v>]/t<t>-d<draws>-f<flips>-s<noise seed>-<precision>.npy``,
one float64 (N, Q) array per timestep, Q = draws × (2 if flips else 1), query q = draw·n_flip + flip
(the order of :func:`diffaudit.models.loss.per_example_loss`). The folder name carries digests of
the model's weights and of the dataset (pixels, keys, labels), and, from version 2 on, the version of
how ε is drawn (:data:`~diffaudit.models.loss.NOISE_SCHEME`; version 1, today's, has no suffix, so the
caches made with it stay valid), so a retrained model, another dataset or another noise never reads
stale losses. A cached array with more draws than needed is reused: its first
queries are exactly the fewer-draw queries (ε of (example, draw) does not depend on the draw count).
Files are written atomically: a killed run leaves whole arrays or none. While a model's losses are
computed, every :data:`PART_ROWS` examples (rounded up to whole batches) are saved as a part,
``parts-<what>/rows-<start>-<stop>.npy``, so a killed run resumes from its last whole part; the parts
are deleted once the arrays are written. Parts cut at batch boundaries, so the losses do not depend on
where a run was killed.
"""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from diffaudit.core.batch_fit import AUTO, resolve_batch
from diffaudit.core.errors import DiffauditError
from diffaudit.core.faults import fault_point
from diffaudit.core.io import load_npy, save_npy_atomic
from diffaudit.core.progress import Timer, progress_bar, stage_line
from diffaudit.data.dataset import CAPTION_SOURCES, ImageDataset
from diffaudit.data.digest import dataset_digest
from diffaudit.models.denoiser import load_denoiser
from diffaudit.models.latent_loss import latent_loss_probe, load_sd_pipeline, per_example_latent_loss
from diffaudit.models.digest import model_digest
from diffaudit.models.loss import NOISE_SCHEME, per_example_loss
from diffaudit.sampling.sources import is_stable_diffusion_dir

PRECISIONS = ("fp32", "bf16")
#: Examples per forward pass of a Stable Diffusion pipeline at most: an explicit larger --batch-size is
#: taken down to it (at 512 x 512 one activation of the VAE encoder's first layers is 64 MiB an image in bf16).
SD_MAX_BATCH = 64
_NAME = re.compile(r"^t(\d+)-d(\d+)-f([01])-s(-?\d+)-(fp32|bf16)\.npy$")
#: Examples per saved part of one model's losses (rounded up to whole batches): what a killed run keeps.
PART_ROWS = 4096


def _file_name(t: int, draws: int, flips: bool, noise_seed: int, precision: str) -> str:
    return f"t{int(t):04d}-d{int(draws):03d}-f{int(bool(flips))}-s{int(noise_seed)}-{precision}.npy"


def _find(folder: Path, t: int, draws: int, flips: bool, noise_seed: int, precision: str, n: int) -> np.ndarray | None:
    """A cached (N, Q) array for ``t`` with at least ``draws`` draws, sliced to ``draws``; None if absent."""
    if not folder.is_dir():
        return None
    n_flip = 2 if flips else 1
    best = None
    for p in folder.glob("t*.npy"):
        m = _NAME.match(p.name)
        if not m:
            continue
        pt, pd, pf, ps, pp = int(m[1]), int(m[2]), m[3] == "1", int(m[4]), m[5]
        if (pt, pf, ps, pp) == (int(t), bool(flips), int(noise_seed), precision) and pd >= draws:
            if best is None or pd < best[0]:
                best = (pd, p)
    if best is None:
        return None
    arr = load_npy(best[1])
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] != best[0] * n_flip or not np.isfinite(arr).all():
        return None  # not what its name says: recompute (and overwrite with the right array)
    return np.array(arr[:, : draws * n_flip])


def cached_model_losses(
    run_dir: str | Path,
    dataset: ImageDataset,
    *,
    timesteps: Sequence[int],
    n_draws: int = 1,
    flips: bool = False,
    noise_seed: int = 0,
    precision: str = "fp32",
    batch_size: int | str = 256,
    device: str | torch.device = "cpu",
    cache_dir: str | Path,
    name: str = "model",
    data_digest: str | None = None,
    flag: str = "--model",
) -> np.ndarray:
    """Losses of the model in ``run_dir`` on every example of ``dataset``: float64 (N, T, Q).

    Timesteps already in the cache are read; the others are computed in one pass of
    :func:`~diffaudit.models.loss.per_example_loss` (ε seeded per (example index, draw) by
    ``noise_seed``: identical in every model) and saved. Lower loss = more likely a member.

    Args:
        run_dir: a diffaudit run directory or a diffusers UNet/pipeline folder.
        dataset: the examples (their index in the dataset seeds ε).
        timesteps: integers in [0, T).
        n_draws, flips: queries per example (Q = n_draws × (2 if flips else 1)).
        precision: ``fp32`` or ``bf16`` (bf16 only makes sense on a GPU).
        batch_size: examples per forward pass (it does not change the losses), or ``auto``: for a pixel
            UNet on CUDA the largest of 32, 64, ... 8192 that fits (:func:`~diffaudit.core.batch_fit.resolve_batch`),
            else 256; a Stable Diffusion pipeline takes at most :data:`SD_MAX_BATCH` (``auto``: on CUDA
            the largest of 4, 8, ... 64 that fits, probed with
            :func:`~diffaudit.models.latent_loss.latent_loss_probe`, else 64).
        cache_dir: the cache root; ``name`` labels the model's folder in it.
        data_digest: :func:`dataset_digest` of ``dataset`` when the caller already has it.
        flag: the option ``run_dir`` came from, which errors name (``--shadows``, ``--target``).
    """
    if precision not in PRECISIONS:
        raise DiffauditError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    scheme = "" if NOISE_SCHEME == 1 else f"-noise{NOISE_SCHEME}"
    folder = Path(cache_dir) / f"{name}-{model_digest(run_dir)}-{data_digest or dataset_digest(dataset)}{scheme}"
    n = len(dataset)
    ts = [int(t) for t in timesteps]
    have = {t: _find(folder, t, n_draws, flips, noise_seed, precision, n) for t in ts}
    missing = [t for t in ts if have[t] is None]
    if missing:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if is_stable_diffusion_dir(run_dir):  # latent diffusion: the loss needs a caption per image
            if dataset.captions is None:
                raise DiffauditError(f"{run_dir} is a Stable Diffusion pipeline: --data needs a caption per image ({CAPTION_SOURCES})")
            pipe = load_sd_pipeline(run_dir, device=device, dtype=dtype, flag=flag)
            batch = resolve_batch(batch_size if batch_size == AUTO else min(batch_size, SD_MAX_BATCH), torch.device(device),
                                  default=SD_MAX_BATCH, probe=functools.partial(latent_loss_probe, pipe), start=4,
                                  cap=SD_MAX_BATCH, what=f"mia: --batch-size for {name}")
            compute = functools.partial(per_example_latent_loss, pipe, timesteps=missing, n_draws=n_draws, flips=flips,
                                        noise_seed=noise_seed, batch_size=batch)
            rows = lambda a, b, bar: compute(dataset.images[a:b], dataset.captions[a:b], indices=range(a, b), bar=bar)  # noqa: E731
        else:
            den = load_denoiser(run_dir, device=device, dtype=torch.float32, flag=flag)
            if dtype != torch.float32:
                den.optimise_for_gpu(dtype=dtype, channels_last=True, compile=False)
            labels = dataset.labels if den.num_classes is not None else None
            batch = resolve_batch(batch_size, torch.device(device), default=256, probe=den.forward_probe, start=32, cap=8192,
                                  what=f"mia: --batch-size for {name}")
            compute = functools.partial(per_example_loss, den, timesteps=missing, n_draws=n_draws, flips=flips,
                                        noise_seed=noise_seed, batch_size=batch)
            rows = lambda a, b, bar: compute(dataset.images[a:b], labels=None if labels is None else labels[a:b],  # noqa: E731
                                             indices=range(a, b), bar=bar)
        parts = folder / f"parts-t{'_'.join(str(t) for t in missing)}-d{n_draws}-f{int(bool(flips))}-s{noise_seed}-{precision}"
        with Timer() as timer:
            fresh, computed = _losses_in_parts(rows, n, parts, batch, f"mia: losses of {name}")
        for j, t in enumerate(missing):
            save_npy_atomic(folder / _file_name(t, n_draws, flips, noise_seed, precision), np.ascontiguousarray(fresh[:, j]))
            have[t] = fresh[:, j]
        q = fresh.shape[2]
        kept = f"; {n - computed} read from the parts of an interrupted run" if computed < n else ""
        per_t = f" x {len(missing)} timesteps" if len(missing) > 1 else ""  # each timestep its own queries
        stage_line(f"mia: losses of {name} at t={missing} ({n} examples{per_t} x {q} quer{'y' if q == 1 else 'ies'}"
                   f"{' each' if per_t else ''}) in {timer.seconds:.1f}s "
                   f"({computed * q * len(missing) / max(timer.seconds, 1e-9):.0f} forward passes/s{kept})")
        shutil.rmtree(parts, ignore_errors=True)
        fault_point("mia.model_losses")
    else:  # said, as a resumed run's finished work is: nothing of this model is computed again
        stage_line(f"mia: losses of {name} at t={ts} read from the cache ({folder.parent}), computed by an earlier run")
    return np.stack([have[t] for t in ts], axis=1)


def _losses_in_parts(rows: Callable, n: int, parts: Path, batch: int, description: str) -> tuple[np.ndarray, int]:
    """(the losses of examples 0..n-1, float64 (n, T, Q); how many of them were computed rather than read).

    ``rows(start, stop, bar)`` computes those of examples start..stop-1, one part of :data:`PART_ROWS`
    examples (rounded up to whole batches) at a time; each part is saved in ``parts`` as it is done, and
    a part saved by an earlier, killed run is read instead (one of another shape, or not finite, is
    computed again)."""
    step = -(-PART_ROWS // batch) * batch
    out: np.ndarray | None = None
    computed = 0
    with progress_bar(description, n, unit="img") as bar:
        for start in range(0, n, step):
            stop = min(n, start + step)
            path = parts / f"rows-{start:09d}-{stop:09d}.npy"
            part = load_npy(path) if path.is_file() else None
            if part is not None and (part.shape[0] != stop - start or (out is not None and part.shape[1:] != out.shape[1:])
                                     or not np.isfinite(part).all()):
                part = None
            if part is None:
                part = np.asarray(rows(start, stop, bar), dtype=np.float64)
                save_npy_atomic(path, np.ascontiguousarray(part))
                computed += stop - start
                fault_point("mia.loss_part")
            else:
                bar.advance(stop - start)
            if out is None:
                out = np.empty((n, *part.shape[1:]), dtype=np.float64)
            out[start:stop] = part
    return out, computed
