"""Shared helpers of the benchmarks: timing with device synchronisation, JSON output, models.

Output: every benchmark prints one JSON object on stdout (:func:`emit`). When the environment variable
``DIFFAUDIT_BENCH_RESULT`` names a file (``run_all.py`` sets it, one file per benchmark), the result is
also written there, atomically: by :func:`checkpoint` after each finished comparison, with
``"partial": true`` and the stage reached, and by :func:`emit` at the end, without ``partial``. A
benchmark that crashes or is killed at its time limit so keeps what it had measured.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

RESULT_ENV = "DIFFAUDIT_BENCH_RESULT"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` (seconds), synchronised."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


#: Substrings of a kernel's name (lower case) that place it in a family, tried in this order:
#: inductor's generated element-wise and reduction kernels (``triton_poi``/``triton_red``/
#: ``triton_per``, whose names list the operations fused, "convolution" among them when they hold a
#: convolution's bias), the libraries' attention and convolution kernels, then matrix products
#: (cuBLAS's ``nvjet``/``gemm`` kernels, CUTLASS, inductor's Triton templates ``triton_tem``), then
#: everything else.
KERNEL_FAMILIES = (
    ("inductor fused (element-wise, norms)", ("triton_poi", "triton_red", "triton_per")),
    ("attention", ("sdpa", "flash", "fmha", "attention")),
    ("layout conversion", ("nchwtonhwc", "nhwctonchw")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm")),
    ("matrix product", ("nvjet", "gemm", "gemv", "cutlass", "xmma", "triton_tem", "triton_mm", "wgmma")),
)


def kernel_family(name: str) -> str:
    """The family (:data:`KERNEL_FAMILIES`) of a CUDA kernel by its name; "other (element-wise,
    norms, copies)" where none matches."""
    low = name.lower()
    for family, marks in KERNEL_FAMILIES:
        if any(m in low for m in marks):
            return family
    return "other (element-wise, norms, copies)"


#: CUDA runtime calls in which the host waits for the GPU (counted by :func:`profile_ops`).
HOST_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def profile_ops(fn, device: torch.device, top: int = 15) -> dict:
    """One call of ``fn`` under the torch profiler: its ``top`` operators by self time (device time on
    CUDA, else CPU time), and on CUDA the wall time beside the time kernels kept the GPU busy (their
    self device times summed), so that a side whose wall time exceeds its kernel time is seen to wait on
    the host, and that time by kernel family (:func:`kernel_family`); ``host_ops`` are the ``top``
    operators by self CPU time (launches, synchronisations), ``host_waits`` the calls in which the
    host waited for the GPU (:data:`HOST_WAITS`; a copy to pageable memory waits inside
    ``cudaMemcpyAsync`` and is not among them)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()

    def rows(attr: str) -> list[dict]:
        best = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:top]
        return [{"name": e.key, "calls": e.count, "self_ms": getattr(e, attr, 0) / 1e3} for e in best]

    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    out = {"by": attr, "wall_ms": wall * 1e3, "ops": rows(attr)}
    if cuda:
        kernels = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
        out["kernel_ms"] = sum(e.self_device_time_total for e in kernels) / 1e3
        out["kernel_launches"] = sum(e.count for e in kernels)
        families: dict[str, float] = {}
        for e in kernels:
            fam = kernel_family(e.key)
            families[fam] = families.get(fam, 0.0) + e.self_device_time_total / 1e3
        out["kernel_ms_by_family"] = dict(sorted(families.items(), key=lambda kv: -kv[1]))
        out["host_ops"] = rows("self_cpu_time_total")
        out["host_waits"] = sum(e.count for e in events if e.key in HOST_WAITS)
    return out


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["threads"] = torch.get_num_threads()
    return info


def _jsonable(x):
    """``x`` with non-finite floats as strings (strict JSON) and keys as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _named(result: dict) -> dict:
    """``result`` with the benchmark's name first under ``bench``: as given, else the script's name
    (``bench_knn.py`` -> ``knn``), so that every result says what measured it."""
    name = result.get("bench") or Path(sys.argv[0]).stem.removeprefix("bench_")
    return {"bench": name, **{k: v for k, v in result.items() if k != "bench"}}


def _write_result_file(result: dict) -> None:
    path = os.environ.get(RESULT_ENV)
    if not path:
        return
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    os.replace(tmp, target)


def checkpoint(result: dict, stage: str) -> None:
    """Save what ``result`` holds so far (when run by run_all): kept if the benchmark dies later."""
    _write_result_file({**_named(result), "partial": True, "stage": stage})
    print(f"[bench] {stage} done", file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """The final result: one JSON object on stdout (and in the run_all result file, if any)."""
    result = _jsonable(_named(result))
    _write_result_file(result)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


def random_denoiser(preset: str, image_size: int, channels: int, device: torch.device):
    """A randomly initialised UNet of ``preset`` as a Denoiser (throughput does not need trained weights)."""
    from diffaudit.models.denoiser import Denoiser
    from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
    from diffaudit.models.unets import build_unet, unet_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_unet(unet_config(preset, image_size=image_size, in_channels=channels))
    return Denoiser(unet=unet.to(device).eval(), alphas_cumprod=alphas_cumprod_of(make_scheduler()))
