"""The int8 kNN's matrix product with its selection fused in: a Triton kernel for CUDA.

The unfused search (:mod:`.knn_backends`) writes the whole (queries x block) int32 matrix of scores
s(q, r) = ‖r'‖² − 2·q'·r' (pixels shifted to x' = x − 128; the squared distance is ‖q'‖² + s) to
GPU memory and reads it again with ``torch.topk``. On an H100, for 2^20 CIFAR-sized generations
against 50,000 training images, the products take 0.47 s and the whole search 2.3 s: ``topk`` over
50,000 columns alone takes 0.66 s (``docs/performance.md``). This kernel never writes that matrix.
On that H100 the kernel with its selection took 0.43 s, and the whole search 2.16 s against the
unfused 2.47 s in the same run.

Each program multiplies one tile of ``BM`` queries by ``BN`` reference rows (int8 in, int32
accumulators, ``tl.dot``: ``wgmma …s32.s8.s8`` on sm_90, ``mma.sync …satfinite.s32.s8.s8.s32`` on
sm_80/89, whose saturation at int32's bounds never applies; exact, since every partial sum is below
16,384·D < 2^31), adds the norms (in int32: scores lie in [−16,384·D, 49,152·D],
D ≤ :data:`.compute.INT8_MAX_DIM`) and, in registers, keeps the ``keep`` smallest scores of each
query in that tile (ties by the smaller column). It writes them as int64 keys (score · 2^32 + column), layout (T, keep, M) with
T = ceil(N / BN) tiles, so one ``torch.topk`` over T·keep keys per query gives both the scores and
the columns of the candidates.

Completeness, the fact the search's certificate rests on: a reference row that was not kept has a
score ≥ the ``keep``-th kept score of its own tile (its tile's *floor*). So the c smallest kept
keys are the c smallest scores of the whole block wherever every tile's floor is ≥ the c-th of
them; :func:`select` flags the queries where that fails (a tile held ``keep`` or more of the c
best), which the backend recomputes with the unfused product. With the top 62 spread over 391 tiles
of 128 (50,000 rows) and keep = 4 that is about 1% of the queries where the near neighbours lie in
random order; 0.65% of 2,000 CIFAR-10 queries against its training set
(``experiments/fused_keep_rate.py``).

Triton is imported on first use; CUDA builds of PyTorch on Linux ship it. With
``TRITON_INTERPRET=1`` set before the first import, the same kernel runs on CPU tensors through
Triton's interpreter (slowly; the tests use it).
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch

#: The sentinel score of excluded entries (a query's own row, columns past the block's end): above
#: every real score, which is at most 49,152·D < 2^31 − 1 for D ≤ :data:`.compute.INT8_MAX_DIM`.
EXCLUDED = 2 ** 31 - 1


@dataclass(frozen=True)
class FusedConfig:
    """Tile sizes and launch options of the fused kernel.

    block_m, block_n: queries and reference rows per program (powers of two ≥ 16; ``block_n`` is
    also the tile each ``keep`` smallest are kept from); block_k: values per step of the product (a
    power of two ≥ 32); group_m: query tiles that share reference tiles in L2 (grouped launch order);
    keep: smallest scores kept per query and tile (≥ 1); num_warps, num_stages: Triton's launch options.
    """

    block_m: int = 128
    block_n: int = 128
    block_k: int = 128
    group_m: int = 8
    keep: int = 4
    num_warps: int = 8
    num_stages: int = 3


#: The default. Compiled for sm_90 (H100) by Triton 3.6 (the GPU image's) it multiplies with int8
#: wgmma (m64n128k32), uses 128 registers per thread and 96 KiB of shared memory without spilling,
#: so two programs fit one multiprocessor and one's selection overlaps the other's products; Triton
#: 3.9 gives it 156 registers, one program per multiprocessor (``tests/test_knn_fused.py`` checks
#: the compilation). The fastest of the eight tile shapes ``experiments/gpu_fused_knn.sh`` times
#: (``bench/bench_knn.py --fused-configs``): on an H100, for 2^20 x 50,000 CIFAR-sized rows, 0.329 s
#: (49% of the int8 peak) for the kernel, 0.431 s with the selection (``docs/performance.md``).
DEFAULT_CONFIG = FusedConfig()


def interpreted() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to interpret its kernels (on CPU tensors, as the tests
    do), by the values Triton reads as true."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on", "y")


def available(device: torch.device) -> bool:
    """Whether the fused kernel can run on ``device``: CUDA with int8 tensor cores (compute
    capability 8.0 or later) and Triton importable. Not while ``TRITON_INTERPRET`` is set (left in
    the environment by a test or a debugging session): the interpreter runs the kernel on the host,
    thousands of times slower than the unfused product; a warning says so."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device)[0] < 8:
        return False
    if interpreted():
        warnings.warn("TRITON_INTERPRET is set, so Triton would interpret the fused kNN kernel on the host; the "
                      "unfused product is used (unset TRITON_INTERPRET to use the kernel)", RuntimeWarning, stacklevel=2)
        return False
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _kernel():
    """The Triton kernel, defined on first use (Triton is imported only then).

    One program per (query tile, reference tile) pair, in grouped order. Per program: the int32
    product of BM x K queries and BN x K reference rows in steps of BK values (rows and columns past
    the ends read the last row again and are dropped), the scores rn[j] − 2·acc[i, j] with excluded
    entries set to :data:`EXCLUDED`, then KEEP times: each query's smallest score and its first
    column, stored as one int64 key at out[(tile·KEEP + j)·M + query], and masked out.
    """
    import triton
    import triton.language as tl

    @triton.jit
    def tile_keys_kernel(q_ptr, r_ptr, rn_ptr, out_ptr, M, N, stride_q, stride_r, q_offset, r_offset, K: tl.constexpr,
                         EXCLUDE_SELF: tl.constexpr, KEEP: tl.constexpr, EVEN_K: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BM)
        tiles_n = tl.cdiv(N, BN)
        # grouped order: GROUP_M query tiles walk the reference tiles together (reuse in L2)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_size = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_size
        pid_n = (pid % per_group) // group_size

        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)
        ks = tl.arange(0, BK)
        # rows and columns past the end read the last one again (in bounds; their results are dropped)
        q_rows = q_ptr + tl.minimum(rows, M - 1).to(tl.int64)[:, None] * stride_q
        r_rows = r_ptr + tl.minimum(cols, N - 1).to(tl.int64)[:, None] * stride_r
        acc = tl.zeros((BM, BN), dtype=tl.int32)
        for k0 in range(0, K, BK):  # K is a compile-time constant: one compilation per image size
            if EVEN_K:
                a = tl.load(q_rows + (k0 + ks)[None, :])
                b = tl.load(r_rows + (k0 + ks)[None, :])
            else:
                in_k = (k0 + ks)[None, :] < K
                a = tl.load(q_rows + (k0 + ks)[None, :], mask=in_k, other=0)
                b = tl.load(r_rows + (k0 + ks)[None, :], mask=in_k, other=0)
            acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)

        rn = tl.load(rn_ptr + cols, mask=cols < N, other=0)
        score = rn[None, :] - 2 * acc
        excluded = (cols >= N)[None, :]
        if EXCLUDE_SELF:
            excluded = excluded | ((rows + q_offset)[:, None] == (cols + r_offset)[None, :])
        score = tl.where(excluded, 2147483647, score)

        lane = tl.arange(0, BN)[None, :]
        in_m = rows < M
        for j in tl.static_range(KEEP):
            best = tl.min(score, axis=1)
            at = tl.min(tl.where(score == best[:, None], lane, BN), axis=1)
            key = (best.to(tl.int64) << 32) | (pid_n * BN + at).to(tl.int64)
            tl.store(out_ptr + (pid_n * KEEP + j).to(tl.int64) * M + rows, key, mask=in_m)
            score = tl.where(lane == at[:, None], 2147483647, score)

    return tile_keys_kernel


def compile_report(config: FusedConfig = DEFAULT_CONFIG, *, dim: int = 3072, arch: int = 90) -> dict:
    """Compile the kernel for CUDA compute capability ``arch`` (90: H100/H200) on any machine, no GPU
    needed, and report what the compiler made of it: the tensor-core instructions in its PTX,
    shared memory, and ptxas's registers per thread and spilled bytes (Triton ships ptxas).

    Needs Triton without ``TRITON_INTERPRET`` (the interpreter replaces the compiler). Returns a
    dict: ``tensor_core_ops`` (sorted distinct ``wgmma``/``mma`` opcodes), ``shared_bytes``,
    ``registers``, ``spill_bytes`` (stores + loads), ``programs_per_sm`` (how many programs fit
    one multiprocessor's 65,536 registers and its shared memory at once; 0 for an ``arch`` not in
    :data:`_SHARED_PER_SM`), ``compile_seconds``.
    """
    import re
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    c = config
    sig = {"q_ptr": "*i8", "r_ptr": "*i8", "rn_ptr": "*i32", "out_ptr": "*i64", "M": "i32", "N": "i32",
           "stride_q": "i32", "stride_r": "i32", "q_offset": "i32", "r_offset": "i32"}
    sig.update(dict.fromkeys(("K", "EXCLUDE_SELF", "KEEP", "EVEN_K", "BM", "BN", "BK", "GROUP_M"), "constexpr"))
    consts = {"K": dim, "EXCLUDE_SELF": False, "KEEP": c.keep, "EVEN_K": dim % c.block_k == 0,
              "BM": c.block_m, "BN": c.block_n, "BK": c.block_k, "GROUP_M": c.group_m}
    aligned = [["tt.divisibility", 16]]  # as the launcher specialises 16-byte aligned pointers and strides
    attrs = {(i,): aligned for i, name in enumerate(sig) if name.endswith("_ptr") or name.startswith("stride_")}
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=_kernel(), signature=sig, constexprs=consts, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": c.num_warps, "num_stages": c.num_stages})
    seconds = time.perf_counter() - start
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        info = subprocess.run([get_ptxas(arch).path, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v",
                               str(path), "-o", str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", info).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
    shared = int(compiled.metadata.shared)
    by_registers = 65536 // (registers * 32 * c.num_warps)
    by_shared = _SHARED_PER_SM.get(arch, 0) // (shared + 1024)  # the driver reserves 1 KiB per program
    return {"tensor_core_ops": sorted(set(re.findall(r"\b(wgmma\.mma_async[\w.]*|mma\.sync[\w.]*)", ptx))),
            "shared_bytes": shared, "registers": registers, "spill_bytes": spills,
            "programs_per_sm": min(by_registers, by_shared), "compile_seconds": seconds}


#: Shared memory per multiprocessor by compute capability (bytes; CUDA C++ Programming Guide).
_SHARED_PER_SM = {80: 167936, 86: 102400, 89: 102400, 90: 233472}


def tile_keys(q: torch.Tensor, r: torch.Tensor, r_norms: torch.Tensor, *, q_offset: int = 0, r_offset: int = 0,
              exclude_self: bool = False, config: FusedConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """The ``keep`` smallest scores of every query in every tile of ``block_n`` reference rows.

    Args:
        q: int8 (M, K) shifted queries (:func:`.compute.to_compute`), rows contiguous.
        r: int8 (N, K) shifted reference rows, same K; N ≥ 1.
        r_norms: int32 (N,) ‖r'‖² of the shifted rows.
        q_offset, r_offset: global index of row 0 of ``q`` and ``r`` (for ``exclude_self``).
        exclude_self: give query i and reference row j the score :data:`EXCLUDED` where
            q_offset + i == r_offset + j.

    Returns:
        int64 (T, keep, M) keys score · 2^32 + column (column local to ``r``), ascending in each
        (tile, query); T = ceil(N / block_n). A tile with fewer than ``keep`` rows (the last) pads
        with :data:`EXCLUDED` scores. Decode with :func:`decode`.
    """
    if q.dtype != torch.int8 or r.dtype != torch.int8 or q.shape[1] != r.shape[1]:
        raise ValueError(f"int8 operands with equal rows expected, got {q.dtype} {tuple(q.shape)} and {r.dtype} {tuple(r.shape)}")
    m, k = q.shape
    n = r.shape[0]
    if n == 0:
        raise ValueError("the reference block is empty")
    q, r = q.contiguous(), r.contiguous()
    c = config
    tiles_m, tiles_n = -(-m // c.block_m), -(-n // c.block_n)
    out = torch.empty((tiles_n, c.keep, m), dtype=torch.int64, device=q.device)
    if m == 0:
        return out
    _kernel()[(tiles_m * tiles_n,)](
        q, r, r_norms.to(torch.int32).contiguous(), out, m, n, q.stride(0), r.stride(0), q_offset, r_offset, K=k,
        EXCLUDE_SELF=bool(exclude_self), KEEP=c.keep, EVEN_K=(k % c.block_k == 0),
        BM=c.block_m, BN=c.block_n, BK=c.block_k, GROUP_M=c.group_m,
        num_warps=c.num_warps, num_stages=c.num_stages,
    )
    return out


def reference_keys(scores: torch.Tensor, block_n: int, keep: int) -> torch.Tensor:
    """What :func:`tile_keys` computes, in plain torch: from int64 scores (M, N) (excluded entries
    already :data:`EXCLUDED`), int64 (T, keep, M) keys, each tile's ``keep`` smallest by (score,
    column); keep ≤ block_n. Keys scoring :data:`EXCLUDED` (a tile's padding) may name other columns
    than the kernel's, which may repeat one: compare those by score only."""
    m, n = scores.shape
    t = -(-n // block_n)
    padded = torch.full((m, t * block_n), EXCLUDED, dtype=torch.int64, device=scores.device)
    padded[:, :n] = scores
    keys = (padded << 32) | torch.arange(t * block_n, device=scores.device)
    kept = torch.topk(keys.view(m, t, block_n), keep, dim=2, largest=False, sorted=True).values
    return kept.permute(1, 2, 0).contiguous()


def decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (int64 scores, int64 columns) of the same shape."""
    return keys >> 32, keys & 0xFFFFFFFF


def select(keys: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The c smallest kept scores of each query, and whether they are the block's c smallest.

    Args:
        keys: int64 (T, keep, M) from :func:`tile_keys`; c: candidates wanted, 1 ≤ c ≤ T·keep.

    Returns:
        scores int64 (M, c) and columns int64 (M, c), in no particular order (an excluded entry has
        score :data:`EXCLUDED`), and ``incomplete`` bool (M,): where some tile's floor (its
        ``keep``-th kept score) lies below the largest real candidate score, so that tile may hold
        a row smaller than a candidate which was not kept. Elsewhere every row of the block that is
        not a candidate scores ≥ every real candidate.
    """
    t, keep, m = keys.shape
    flat = keys.permute(2, 0, 1).reshape(m, t * keep)
    chosen = torch.topk(flat, c, dim=1, largest=False, sorted=False).values
    scores, cols = decode(chosen)
    real = scores < EXCLUDED
    top = torch.where(real, scores, torch.full_like(scores, torch.iinfo(torch.int64).min)).amax(1)
    floor = (keys[:, keep - 1, :] >> 32).amin(0)
    return scores, cols, floor < top
