"""The largest batch that fits on a GPU: what ``--micro-batch auto`` and ``--batch-size auto`` choose.

A model's peak memory grows about linearly with its batch, and a GPU computes faster per image on
larger batches until it is saturated. :func:`largest_batch_that_fits` runs the real workload once
at doubling batch sizes (``start``, 2·``start``, ... up to ``cap``) and keeps the largest one whose
peak allocation stayed within ``memory_fraction`` of the GPU's memory: the rest is left for the
allocator's fragmentation, compiled kernels' workspaces and whatever else the process holds. It stops
at the first size that runs out of memory or would not leave that headroom, and before a size whose
estimated peak (the per-image growth measured so far, extrapolated) would not.

Off CUDA there is nothing to probe (host memory is not what bounds a CPU run): callers keep their
CPU default. Whether the batch changes the numbers is the caller's business (``sample`` records its
micro-batch, since bf16 kernels can round differently at other sizes; the loss and inpainting batches
are not recorded: in fp32 their numbers do not depend on them, and with bf16 only in rounding).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from diffaudit.core.errors import DiffauditError

if TYPE_CHECKING:  # torch is imported where used: the commands' --help and argument parsing stay light
    import torch

AUTO = "auto"
#: Fraction of the GPU's memory a chosen batch may peak at.
DEFAULT_MEMORY_FRACTION = 0.8


def batch_option(value: str) -> int | str:
    """argparse ``type`` of a batch-size flag: an integer, or ``auto`` (the largest that fits). The command
    checks the range, with its own message."""
    if value == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None


@dataclass
class BatchFit:
    """The probe's outcome: ``batch`` chosen; ``tried``: (batch, peak bytes, or None where it ran out of
    memory) in order; ``limit_bytes``: ``memory_fraction`` of the GPU's memory."""

    batch: int
    limit_bytes: int
    tried: list[tuple[int, int | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        gib = lambda b: f"{b / 2 ** 30:.1f} GiB"  # noqa: E731
        steps = ", ".join(f"{b}: {'out of memory' if p is None else gib(p)}" for b, p in self.tried)
        return f"{self.batch} (peak memory by batch: {steps}; limit {gib(self.limit_bytes)})"


class CudaMemory:
    """The CUDA allocator's view of one device, as :func:`largest_batch_that_fits` reads it."""

    def __init__(self, device: torch.device):
        import torch

        self.device = device
        self._cuda = torch.cuda

    def total(self) -> int:
        return int(self._cuda.get_device_properties(self.device).total_memory)

    def reset(self) -> None:
        cuda = self._cuda
        cuda.synchronize(self.device)
        cuda.empty_cache()
        cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        self._cuda.synchronize(self.device)
        return int(self._cuda.max_memory_allocated(self.device))


def largest_batch_that_fits(try_batch: Callable[[int], Any], *, start: int, cap: int, memory: Any,
                            memory_fraction: float = DEFAULT_MEMORY_FRACTION) -> BatchFit:
    """The largest of ``start``·2^j ≤ ``cap`` whose run of ``try_batch(batch)`` peaked within
    ``memory_fraction`` ∈ (0, 1] of ``memory.total()`` bytes (``memory``: :class:`CudaMemory`, or any
    object with ``total``, ``reset`` and ``peak``).

    ``start`` is kept when it ran, even above the fraction (it is the smallest batch asked for); a
    ``start`` that runs out of memory raises :class:`DiffauditError`. ``try_batch`` should run the
    workload as it will run (same dtype, memory format, no gradients where none are taken); its
    result is dropped before the next size.
    """
    import torch

    if not 1 <= start <= cap:
        raise ValueError(f"need 1 <= start <= cap, got start={start}, cap={cap}")
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must lie in (0, 1], got {memory_fraction}")
    limit = int(memory_fraction * memory.total())
    fit = BatchFit(batch=start, limit_bytes=limit)
    batch = start
    while batch <= cap:
        memory.reset()
        try:
            try_batch(batch)
            peak = memory.peak()
        except torch.OutOfMemoryError:
            fit.tried.append((batch, None))
            memory.reset()  # free what the failed attempt left cached
            if batch == start:
                raise DiffauditError(f"a batch of {start} does not fit in this GPU's memory ({memory.total() / 2 ** 30:.1f} "
                                     "GiB); free the GPU of other work, or give a smaller batch than auto") from None
            break
        fit.tried.append((batch, peak))
        if peak > limit:  # over the headroom: the size before it stays (start, when it is start)
            break
        fit.batch = batch
        if len(fit.tried) >= 2:  # the next size's peak, from the growth per image measured so far
            (b0, p0), (b1, p1) = fit.tried[-2], fit.tried[-1]
            if p1 + (p1 - p0) / (b1 - b0) * batch > limit:
                break
        batch *= 2
    return fit


def resolve_batch(requested: int | str | None, device: torch.device, *, default: int, probe: Callable[[int], Any],
                  start: int, cap: int, what: str, memory: Any = None) -> int:
    """The batch to run: ``requested`` when it is an integer, ``default`` when None, and for ``auto`` the
    largest that fits on a CUDA ``device`` (:func:`largest_batch_that_fits` of ``probe`` from ``start``
    up to ``cap``; said on stderr with each size's peak) or ``default`` on any other device.
    ``what``: the flag, for messages. ``memory``: the allocator to read (default :class:`CudaMemory`)."""
    import torch

    from diffaudit.core.progress import stage_line

    if requested is None:
        return default
    if requested != AUTO:
        return int(requested)
    if torch.device(device).type != "cuda":
        return default
    fit = largest_batch_that_fits(probe, start=min(start, cap), cap=cap,
                                  memory=memory if memory is not None else CudaMemory(torch.device(device)))
    stage_line(f"{what} auto: {fit.describe()}")
    return fit.batch
