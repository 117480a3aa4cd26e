"""How squared distances are computed by GEMM: ‖a − b‖² = ‖a‖² + ‖b‖² − 2·a·b on integer pixels.

Every distance in :mod:`diffaudit.distances` works on the integer pixel values 0..255 and divides by
255² only at the end. On integers the squared norms are exact (int64), and so is each product
a_i·b_i ≤ 65,025. Only the accumulation of the cross term a·b can round:

- ``int8`` (default of the kNN and radius searches and of the pairwise ℓ2 on uint8 images, wherever
  the device's int8 GEMM passes the exactness probe :func:`int8_gemm_exact`; any image size): the
  pixels shifted to x − 128 ∈ [−128, 127] (a shift leaves every difference, hence every distance,
  unchanged) and multiplied by an int8 GEMM with int32 accumulation (``torch._int_mm``: int8 tensor
  cores on CUDA, twice the bf16 rate on Hopper). Every product is an integer of magnitude ≤ 16,384,
  so a GEMM over at most :data:`INT8_CHUNK` values is exact in int32 (in any summation order, and
  without relying on wrap-around even where a GEMM offsets s8 operands to u8 internally). Longer rows
  are multiplied in chunks of :data:`INT8_CHUNK` columns whose int32 partial products are added in
  int32 while the total is bounded below 2^31 (D ≤ :data:`INT8_CROSS_MAX_DIM`) and in int64 beyond,
  so the result is *exact* for any D, with no re-ranking. The kNN search forms ‖r'‖² − 2·q'·r' in
  int32 up to :data:`INT8_MAX_DIM` values and in int64 above (:func:`int8_acc_dtype`).
- ``float64`` (the CPU's default where the int8 GEMM is not exact): every partial sum is an integer
  below 2^53 for any realistic image (D·65,025 < 2^53 for D < 1.3·10^11 values), so the GEMM is
  *exact*; error margin 0.
- ``bf16`` (the CUDA default where the int8 GEMM is not exact): 0..255 are exact in bfloat16; the
  GEMM accumulates in fp32 and writes fp32 (``torch.mm(..., out_dtype=torch.float32)``; where that
  overload is missing, fp32/TF32 inputs, which also hold 0..255 exactly, are used instead).
- ``float32``: fp32 inputs and accumulation (what ``bf16`` becomes on the CPU).

The fp32 kinds are *not* exact, and their rounding is not random: on flat images (constant regions)
every partial sum rounds the same way, so a probabilistic bound (λ·sqrt(D)·u) is exceeded at large D
(a 512 x 512 RGB search missed its true nearest neighbour with one). :func:`cross` therefore
multiplies them in chunks of at most :func:`fp32_chunk` columns (:data:`FP32_CHUNK` on the CPU,
:data:`FP32_CHUNK_CUDA` on CUDA), each an fp32 GEMM of its own, and adds the chunks' results in fp32;
:func:`error_margin` (:func:`gemm_error_factor`) is a *deterministic* bound on the rounding of that
computation, valid for any summation order inside the GEMM: with round-to-nearest on the CPU, and on
CUDA also for accumulators that truncate and tensor cores that add aligned groups of products.
Callers that need exact answers (the kNN re-ranking and certificate, the radius search, the
near-duplicate graph) recompute every value within that bound of a decision with exact integer
arithmetic, so the *final* results are exact whatever kind is used.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from diffaudit.core.errors import DiffauditError

#: fp32 unit roundoff.
U_FP32 = 2.0 ** -24
#: 255²: integer squared distances are divided by D·255² to become mean squares on [0, 1] pixels.
PIXEL_SQ = 255.0 * 255.0

COMPUTE_KINDS = ("auto", "float64", "float32", "bf16")
#: The kinds of the GEMM users that handle the int8 kind's shifted operands: the kNN and radius
#: searches (:mod:`.knn`, :mod:`.radius`) and, on uint8 images, the pairwise (tiled) ℓ2 (:mod:`.pairwise`).
KNN_COMPUTE_KINDS = COMPUTE_KINDS + ("int8",)
#: Largest D for which the kNN's fused int8 formula stays in int32: with x' = x − 128,
#: ‖r'‖² − 2·q'·r' lies in [−16,384·D, 49,152·D], which int32 holds for D ≤ 43,690 (e.g. 120 x 120
#: RGB; CIFAR-10 has 3,072). Above it the same formula is formed in int64 (:func:`int8_acc_dtype`).
INT8_MAX_DIM = (2 ** 31 - 1) // (3 * 128 * 128)
#: Largest D whose int8 cross term alone fits int32 (|q'·r'| ≤ 16,384·D): 131,071 values, e.g. a
#: 128 x 128 RGB tile of a 512 x 512 image under the paper's 4 x 4 grid (49,152). :func:`int8_dots`
#: returns int32 up to this length and int64 above.
INT8_CROSS_MAX_DIM = (2 ** 31 - 1) // (128 * 128)
#: Columns per int8 GEMM (a multiple of :data:`INT8_ALIGN`): every partial sum of at most 32,768
#: products of magnitude ≤ 16,384 is below 2^29, and below 2^30 even for a GEMM that offsets one
#: operand to u8 (products ≤ 255·128), so each chunk's int32 result is exact whatever the GEMM's
#: internal order. :func:`int8_gemm_exact` probes the device at this width.
INT8_CHUNK = 32768
#: int8 GEMM operand columns are padded with zeros to a multiple of this (cuBLAS int8 needs K % 8 = 0).
INT8_ALIGN = 8
#: Values per exact fp32 partial dot product: 256 · 255² = 16,646,400 < 2^24, so every partial sum of
#: 256 integer products is an integer that fp32 holds exactly, in any summation order (also TF32).
EXACT_CHUNK = 256
#: Columns per fp32 GEMM of the inexact kinds on the CPU (:func:`cross`, :func:`fp32_chunk`); the
#: rounding bound grows with it (:func:`gemm_error_factor`: about FP32_CHUNK·u = 2.4·10^-4 relative to
#: ‖a‖² + ‖b‖² with the CPU's round-to-nearest).
FP32_CHUNK = 4096
#: The same on CUDA, whose bound is 6x larger per column (tensor cores may truncate): 1,024 columns
#: give about 6·1024·u = 3.7·10^-4, which keeps the certificate's fallback rare on CIFAR-sized images.
FP32_CHUNK_CUDA = 1024


@dataclass(frozen=True)
class ComputeSpec:
    """How the cross term a·b is computed on ``device``.

    Attributes:
        kind: ``int8``, ``float64``, ``float32`` or ``bf16`` (inputs), see the module docstring.
        device: where the GEMM runs.
        exact: True when the GEMM result is exact on integer pixels (int8 and float64, any D).
    """

    kind: str
    device: torch.device

    @property
    def exact(self) -> bool:
        return self.kind in ("float64", "int8")

    @property
    def input_dtype(self) -> torch.dtype:
        return {"float64": torch.float64, "float32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}[self.kind]

    @property
    def output_dtype(self) -> torch.dtype:
        return {"float64": torch.float64, "int8": torch.int32}.get(self.kind, torch.float32)


def resolve_compute(kind: str, device: torch.device, *, cpu_default: str = "float64", dim: int | None = None,
                    allow_int8: bool = False, int8_max_dim: int | None = None) -> ComputeSpec:
    """The :class:`ComputeSpec` for ``kind``.

    "auto": ``int8`` when ``allow_int8`` (integer pixels, a caller that handles the shifted operands)
    and the device's int8 GEMM passes the exactness probe (:func:`int8_gemm_exact`), for any image
    size (long rows are multiplied in exact chunks, see the module docstring); else bf16 on CUDA and
    ``cpu_default`` elsewhere. ``dim`` (the GEMM's length) and ``int8_max_dim`` no longer change the
    choice: they are accepted for callers written when int8 had a size limit.
    """
    kinds = KNN_COMPUTE_KINDS if allow_int8 else COMPUTE_KINDS
    if kind not in kinds:
        extra = " (int8 needs uint8 images)" if kind == "int8" else ""
        raise DiffauditError(f"compute precision {kind!r} is unknown here{extra}; choose one of: {', '.join(kinds)}")
    if kind == "auto" and allow_int8 and int8_gemm_exact(device):
        kind = "int8"
    if kind == "auto":
        kind = "bf16" if device.type == "cuda" else cpu_default
    if kind == "bf16" and device.type != "cuda":
        # bf16 GEMMs on the CPU are slow and have no fp32-output overload: use fp32 there.
        kind = "float32"
    return ComputeSpec(kind, device)


def int8_acc_dtype(dim: int) -> torch.dtype:
    """The dtype in which the kNN forms ‖r'‖² − 2·q'·r' of shifted rows of ``dim`` values exactly:
    int32 up to :data:`INT8_MAX_DIM`, int64 above."""
    return torch.int32 if dim <= INT8_MAX_DIM else torch.int64


def to_compute(x_uint8: torch.Tensor, spec: ComputeSpec) -> torch.Tensor:
    """uint8 (N, D) on any device -> the GEMM input dtype on ``spec.device``: values 0..255, or for
    ``int8`` the shifted values x − 128 with D padded by zero columns to a multiple of :data:`INT8_ALIGN`
    (zeros on both operands add nothing to a product)."""
    x = x_uint8.to(spec.device, non_blocking=True)
    if spec.kind != "int8":
        return x.to(spec.input_dtype)
    shifted = torch.bitwise_xor(x, 128).view(torch.int8)  # x − 128, exactly: flipping the top bit
    pad = (-shifted.shape[1]) % INT8_ALIGN
    return torch.nn.functional.pad(shifted, (0, pad)) if pad else shifted


def shifted_sq_norms(x_uint8: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Exact ‖x − 128‖² of uint8 rows (N, D) -> int64 (N,) = ‖x‖² − 256·Σx + 16,384·D (``norms``:
    ‖x‖² when already known)."""
    n2 = sq_norms(x_uint8) if norms is None else norms.to(torch.int64)
    return n2 - 256 * x_uint8.sum(1, dtype=torch.int64) + 16384 * x_uint8.shape[1]


def int8_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact a (M, K) · b (N, K)ᵀ of int8 operands (:func:`to_compute`) -> int32 (M, N) for
    K ≤ :data:`INT8_CROSS_MAX_DIM`, int64 (M, N) for longer rows (any K).

    One ``torch._int_mm`` (int32 accumulation) per :data:`INT8_CHUNK` columns, each exact (see
    there); the chunks' results are added in the output dtype, whose range holds every partial total.
    On CUDA ``_int_mm`` needs M > 16 and N % 8 = 0 (K is padded by :func:`to_compute`): at most 16
    rows are padded with zero rows to 17, and b's last N % 8 rows are padded with zero rows too when
    N < 8·M, else multiplied in float64, exactly too (|a·b| ≤ 16,384·K < 2^53; :func:`_pads_tail`).
    The same split runs on every device, so the CPU tests cover it. A torch build or device without
    int8 GEMMs gets the whole product in float64 (still exact, slower), decided once per device type
    by :func:`int8_gemm_exact`, and again if a product raises.
    """
    m, n = a.shape[0], b.shape[0]
    k = a.shape[1]
    out_dtype = torch.int32 if k <= INT8_CROSS_MAX_DIM else torch.int64
    if n == 0:
        return torch.zeros((m, 0), dtype=out_dtype, device=a.device)
    if k <= INT8_CHUNK:
        return int8_dots_chunk(a, b)
    out = None
    for lo in range(0, k, INT8_CHUNK):
        hi = min(k, lo + INT8_CHUNK)
        pa = _columns(a, lo, hi)
        part = int8_dots_chunk(pa, pa if b is a else _columns(b, lo, hi))  # one copy for a set with itself
        out = part.to(out_dtype) if out is None else out.add_(part)
    return out


def _columns(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Columns lo:hi of a row-major operand; contiguous on CUDA (dense rows for cuBLAS's int8 GEMM
    and the bf16 ``out_dtype`` overload)."""
    part = x[:, lo:hi]
    return part.contiguous() if x.device.type == "cuda" else part


def int8_dots_chunk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 (M, K) · (N, K)ᵀ -> int32 (M, N) for K ≤ :data:`INT8_CHUNK` (see :func:`int8_dots`)."""
    if not int8_gemm_exact(a.device):
        return _float64_dots(a, b)
    try:
        out = _int_mm_split(a, b)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, NotImplementedError, AttributeError):  # a build or device without int8 GEMMs
        _INT_MM_OK[a.device.type] = False
        return _float64_dots(a, b)
    _INT_MM_OK[a.device.type] = True
    return out


#: Per device type: whether ``torch._int_mm`` is there and exact (:func:`int8_gemm_exact`).
_INT_MM_OK: dict[str, bool] = {}


def int8_gemm_exact(device: torch.device | str) -> bool:
    """Whether ``torch._int_mm`` gives exact int32 products on ``device``'s type; probed once per type.

    Not every int8 GEMM is exact. On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) oneDNN
    multiplies s8 x s8 through ``vpmaddubsw``, whose int16 pair sums saturate: 64 products 127·127
    come out as 8,160 instead of 1,032,256, with no error raised. The probe multiplies operands built
    from the extreme values (all 127, all −128, and a seeded mix of −128, −127, −1, 0, 1, 126, 127)
    on the device, once 256 values long and once :data:`INT8_CHUNK` values long (the longest product
    :func:`int8_dots` asks of one GEMM, where partial sums come close to 2^31 in GEMMs that offset
    an operand to u8), and compares every product with float64 (exact here); a mismatch or an error
    means the callers use float64 products instead (:func:`int8_dots`) and ``"auto"`` does not pick int8.
    """
    dev = torch.device(device)
    ok = _INT_MM_OK.get(dev.type)
    if ok is None:
        ok = _INT_MM_OK[dev.type] = _probe_int_mm(dev)
    return ok


def extreme_int8(rows: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """Probe operands, int8 (rows ≥ 3, width) on the CPU: a seeded mix of −128, −127, −1, 0, 1, 126
    and 127, with rows 0, 1 and 2 all 127, all −128 and all 127 (row 2 of the other operand: all
    −128), so that a product of two such operands holds the largest sums 127·127·width and
    (−128)²·width and the most negative one."""
    values = torch.tensor([-128, -127, -1, 0, 1, 126, 127], dtype=torch.int8)
    x = values[torch.randint(len(values), (rows, width), generator=gen)]
    x[0], x[1], x[2] = 127, -128, 127
    return x


def _probe_int_mm(dev: torch.device) -> bool:
    if dev.type == "cuda" and not torch.cuda.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    for width in (256, INT8_CHUNK):
        a = extreme_int8(48 if width == 256 else 17, width, gen)
        b = extreme_int8(40 if width == 256 else 8, width, gen)
        b[2] = -128  # a[2]·b[2]: the largest negative sum
        want = a.to(torch.float64) @ b.to(torch.float64).T
        try:
            got = torch._int_mm(a.to(dev), b.to(dev).T).to("cpu", torch.float64)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError, AttributeError, TypeError):  # no int8 GEMM on this build or device
            return False
        if not torch.equal(got, want):
            return False
    return True


def _float64_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same products in float64 (exact: |a·b| ≤ 16,384·K < 2^53), for devices without int8 GEMMs;
    int32 for K ≤ :data:`INT8_CROSS_MAX_DIM` (where they fit), else int64."""
    dtype = torch.int32 if a.shape[1] <= INT8_CROSS_MAX_DIM else torch.int64
    return (a.to(torch.float64) @ b.to(torch.float64).T).to(dtype)


def _int_mm_split(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m, n = a.shape[0], b.shape[0]
    if m <= 16:
        a = torch.nn.functional.pad(a, (0, 0, 0, 17 - m))
    tail = n % 8
    if tail and _pads_tail(a.shape[0], n):
        # zero rows multiply to zero columns, cut off again (a view: no copy of the product)
        out = torch._int_mm(a, torch.nn.functional.pad(b, (0, 0, 0, 8 - tail)).T)[:, :n]
    else:
        n8 = n - tail
        parts = [torch._int_mm(a, b[:n8].T)] if n8 else []
        if tail:
            parts.append(_float64_dots(a, b[n8:]))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
    return out[:m] if m <= 16 else out


def _pads_tail(m: int, n: int) -> bool:
    """Whether b's last N % 8 rows are padded with zero rows for cuBLAS's int8 GEMM (a copy of b,
    N·K bytes) rather than multiplied in float64 (a float64 copy of a, 8·M·K bytes): when N < 8·M.
    For the tile-by-tile graph of 500 generations at 512 x 512 that is a float64 copy of 196 MB saved
    per tile (the filter's tile-major path pads N itself)."""
    return n < 8 * m


def sq_norms(x_uint8: torch.Tensor) -> torch.Tensor:
    """Exact squared norms of integer rows: uint8 (N, D) -> int64 (N,) = Σ_i x_i².

    fp32 sums over chunks of :data:`EXACT_CHUNK` values are exact (see there); chunk sums are added
    in float64 (exact below 2^53). Rows are converted a few at a time (at most 64 MiB of fp32), so
    large images cost no full fp32 copy of the block.
    """
    n, d = x_uint8.shape
    step = max(1, (64 << 20) // max(1, 4 * (d + EXACT_CHUNK)))
    if n > step:
        return torch.cat([sq_norms(x_uint8[lo:lo + step]) for lo in range(0, n, step)])
    xf = x_uint8.to(torch.float32)
    pad = (-d) % EXACT_CHUNK
    if pad:
        xf = torch.nn.functional.pad(xf, (0, pad))
    v = xf.reshape(-1, EXACT_CHUNK)
    per_row = (d + pad) // EXACT_CHUNK
    return torch.einsum("ij,ij->i", v, v).reshape(n, per_row).to(torch.float64).sum(1).round().to(torch.int64)


@contextlib.contextmanager
def tf32_matmul(device: torch.device, allowed: bool):
    """TF32 matrix products on (``allowed``) or off within the block, on CUDA; restored after.
    On: integer pixels 0..255 are exact in TF32's 10-bit mantissa. Off: float inputs keep fp32."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


_MM_OUT_DTYPE_OK: dict[str, bool] = {}


def _bf16_fp32_out(op, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``op(a, b)`` (torch.mm or torch.bmm) of bf16 operands, accumulated and returned in fp32: the
    ``out_dtype`` overload where the device has it, else fp32/TF32 copies (exact on 0..255 too)."""
    key = f"{op.__name__}:{a.device}"
    if _MM_OUT_DTYPE_OK.get(key, True):
        try:
            out = op(a, b, out_dtype=torch.float32)
            _MM_OUT_DTYPE_OK[key] = True
            return out
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE_OK[key] = False
    with tf32_matmul(a.device, True):
        return op(a.float(), b.float())


def cross(a: torch.Tensor, b: torch.Tensor, spec: ComputeSpec) -> torch.Tensor:
    """a (Na, D) · b (Nb, D)ᵀ in ``spec`` -> (Na, Nb).

    Inputs are already in ``spec.input_dtype`` on ``spec.device`` (see :func:`to_compute`). ``int8``:
    the shifted operands' exact product, int32 or (D > :data:`INT8_CROSS_MAX_DIM`) int64
    (:func:`int8_dots`); ``float64``: exact float64; ``float32``/``bf16``: fp32, one fp32-accumulated
    GEMM per :func:`fp32_chunk` columns, the chunks added in fp32 (a separate addition, never inside
    the next GEMM, so each chunk's rounding is bounded by its own length), within
    :func:`error_margin` of the exact value.
    """
    if spec.kind == "int8":
        return int8_dots(a, b)
    if spec.kind == "float64":
        return a @ b.T
    d = a.shape[1]
    w = fp32_chunk(spec.device)
    if d <= w:
        return _fp32_mm(a, b, spec)
    out = None
    for lo in range(0, d, w):
        hi = min(d, lo + w)
        pa = _columns(a, lo, hi)
        part = _fp32_mm(pa, pa if b is a else _columns(b, lo, hi), spec)
        out = part if out is None else out.add_(part)
    return out


def fp32_chunk(device: torch.device) -> int:
    """Columns per fp32 GEMM of :func:`cross` on ``device``: :data:`FP32_CHUNK` on the CPU,
    :data:`FP32_CHUNK_CUDA` elsewhere."""
    return FP32_CHUNK if torch.device(device).type == "cpu" else FP32_CHUNK_CUDA


def _fp32_mm(a: torch.Tensor, b: torch.Tensor, spec: ComputeSpec) -> torch.Tensor:
    """a · bᵀ accumulated and returned in fp32 (bf16 operands through the fp32-output overload)."""
    if spec.kind == "bf16":
        return _bf16_fp32_out(torch.mm, a, b.T)
    return a @ b.T


#: Rounding models of :func:`gemm_error_factor`: "nearest" for CPUs (IEEE fp32 adds and FMAs that
#: round to nearest, in every BLAS), "any" for CUDA (tensor cores may truncate and add aligned groups).
ROUNDING_MODELS = ("nearest", "any")


def rounding_model(device: torch.device) -> str:
    """The :data:`ROUNDING_MODELS` entry that holds for fp32 GEMMs on ``device``."""
    return "nearest" if torch.device(device).type == "cpu" else "any"


def gemm_error_factor(dim: int, *, chunk: int | None = None, fp32_norms: bool = False, rounding: str = "any") -> float:
    """f such that f·u·(‖a‖² + ‖b‖²) (u = 2^-24) bounds the rounding of a squared distance
    ‖a‖² + ‖b‖² − 2·a·b computed in fp32 from non-negative integer (or fp32) pixels of ``dim`` values.

    ``chunk``: columns per GEMM (default: :func:`cross`'s, :func:`fp32_chunk` of the device the
    rounding model stands for). Deterministic (no probabilistic assumption), to first order, with 1%
    added for the higher-order terms (each below 6·chunk·u ≤ 1.5·10^-3 relative for the default
    chunks). The GEMM adds W = min(dim, chunk) products (exact: integers of at most 65,025 in magnitude) along some tree, in
    an order nothing here controls (blocking, split-K, vector lanes, tensor-core groups):

    - ``rounding="nearest"`` (CPUs): every node is one addition or FMA rounded to nearest, with an
      error of at most u·S (S: the sum of |products| below it); a product has at most W − 1
      ancestors, so the GEMM's error is at most W·u·Σ|a_i b_i|; each of the ⌈dim/W⌉ fp32 additions
      of the chunks' results adds u·Σ|a_i b_i|;
    - ``rounding="any"`` (CUDA): a node adds m ≥ 2 inputs, aligning each to the largest and rounding
      the result, each step within 2u (truncation) of the node's total, so its error is at most
      2u·(m + 1)·S; summed over a product's ancestors, (m + 1) ≤ edges + nodes ≤ 3W, so the GEMM's
      error is at most 6W·u·Σ|a_i b_i| whatever its grouping or rounding mode; each chunk addition
      adds 2u·Σ|a_i b_i|.

    Σ|a_i b_i| = a·b ≤ (‖a‖² + ‖b‖²)/2 for non-negative pixels, and the cross term enters doubled,
    so it contributes (W + ⌈dim/W⌉) resp. (6W + 2⌈dim/W⌉) times u·(‖a‖² + ‖b‖²). Converting ‖b‖²
    to fp32 and adding it to the cross term adds 2u (resp. 4u). ``fp32_norms``: the norms themselves
    are fp32 sums of ``dim`` squares (faiss's), by the same argument dim·u (resp. 6·dim·u) more, plus
    one more fp32 addition.
    """
    if rounding not in ROUNDING_MODELS:
        raise ValueError(f"rounding must be one of {ROUNDING_MODELS}, got {rounding!r}")
    near = rounding == "nearest"
    if chunk is None:
        chunk = FP32_CHUNK if near else FP32_CHUNK_CUDA
    d = max(dim, 1)
    w = max(1, min(d, chunk))
    f = (1.0 if near else 6.0) * w + (1.0 if near else 2.0) * math.ceil(d / w) + (2.0 if near else 4.0)
    if fp32_norms:
        f += (1.0 if near else 6.0) * d + (1.0 if near else 2.0)
    return 1.01 * f


def error_margin(spec: ComputeSpec, dim: int, norms_sum: torch.Tensor, *, chunk: int | None = None,
                 fp32_norms: bool = False) -> torch.Tensor:
    """Deterministic bound on |computed − exact| of a squared distance whose exact norms add up to
    ``norms_sum`` = ‖a‖² + ‖b‖² (integer units, any shape), for :func:`cross`'s fp32 kinds on
    ``spec.device``: :func:`gemm_error_factor` · u · ``norms_sum`` (``chunk``, ``fp32_norms``: as
    there, for GEMMs that are not :func:`cross`'s, e.g. faiss's). Zero for the exact kinds (int8,
    float64).
    """
    if spec.exact:
        return torch.zeros_like(norms_sum, dtype=torch.float64)
    chunk = fp32_chunk(spec.device) if chunk is None else chunk
    f = gemm_error_factor(dim, chunk=chunk, fp32_norms=fp32_norms, rounding=rounding_model(spec.device))
    return norms_sum.to(torch.float64) * (f * U_FP32)


#: Pixel values per exact fp32 partial dot product of the re-rank, whose query side is split into
#: 4-bit halves: products are at most 255·15 = 3,825 and 4,096 · 3,825 = 15,667,200 < 2^24, so every
#: partial sum is an integer that fp32 holds exactly, in any summation order (also TF32 and bf16
#: inputs with fp32 accumulation, which all hold 0..255 exactly).
SPLIT_CHUNK = 4096


def _bmm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, n, m) @ b (B, m, p) accumulated and returned in fp32 (float64 stays float64)."""
    if a.dtype == torch.bfloat16:
        return _bf16_fp32_out(torch.bmm, a, b)
    with tf32_matmul(a.device, True):
        return torch.bmm(a, b)


def exact_dots(q: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Exact integer dot products: q uint8 (B, D), cand (B, C, D) -> float64 (B, C).

    ``cand`` holds integer pixels 0..255 as uint8, or already as a GEMM operand that holds them
    exactly (bfloat16, float32, float64; e.g. gathered from :func:`to_compute`'s output, which saves a
    conversion pass). The query is split into 4-bit halves, q = 16·q_hi + q_lo, and one batched GEMM
    per :data:`SPLIT_CHUNK` values gives both q_hi·r and q_lo·r exactly in fp32 (see there);
    q·r = 16·(q_hi·r) + q_lo·r is added in float64 (exact below 2^53). Works on any device.
    """
    b, c, d = cand.shape
    if cand.dtype == torch.uint8:
        cand = cand.to(torch.float32)
    if cand.dtype == torch.float64:  # exact as it is
        return torch.bmm(cand, q.to(torch.float64).unsqueeze(2)).squeeze(2)
    split = torch.stack([q >> 4, q & 15], dim=2).to(cand.dtype)  # (B, D, 2), values 0..15
    out = torch.zeros((b, c), dtype=torch.float64, device=q.device)
    for lo in range(0, d, SPLIT_CHUNK):
        hi = min(d, lo + SPLIT_CHUNK)
        part = _bmm_fp32(cand[:, :, lo:hi], split[:, lo:hi]).to(torch.float64)  # (B, C, 2)
        out += part[..., 0] * 16.0 + part[..., 1]
    return out


def exact_sq_dists(q: torch.Tensor, cand: torch.Tensor, q_norms: torch.Tensor | None = None,
                   cand_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Exact integer squared distances: q uint8 (B, D), cand (B, C, D) -> int64 (B, C).

    ‖q‖² + ‖r‖² − 2·q·r with exact integer norms (int64, given or computed) and exact dot products
    (:func:`exact_dots`; ``cand`` as there: uint8 or an exact float operand; norms are computed from it
    when not given).
    """
    qn = sq_norms(q) if q_norms is None else q_norms
    cn = sq_norms(cand.reshape(-1, cand.shape[-1])).reshape(cand.shape[:2]) if cand_norms is None else cand_norms
    dots = exact_dots(q, cand).round().to(torch.int64)
    return qn.to(torch.int64).unsqueeze(1) + cn.to(torch.int64) - 2 * dots

