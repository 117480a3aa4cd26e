"""Read the next block of queries while the device works on the current one.

A nearest-neighbour search on CUDA used to read each query block (a memory-map slice, a decoded
shard, a concatenation) and copy it from pageable memory while the GPU waited: on an H100, 2^20
CIFAR-sized queries spent 0.42 s of device time in pageable host-to-device copies alone.
:func:`prefetch` runs the host side of the block iterator in a background thread, ``depth`` blocks
ahead, and on CUDA copies each block into page-locked (pinned) memory there, so that the backends'
``to(device, non_blocking=True)`` is an asynchronous DMA that overlaps the previous block's work.
PyTorch's pinned-memory allocator records the copy's stream, so a block's buffer is not reused
before its copy has finished.

Blocks come out in order, exactly as the iterator gave them; an exception raised while reading is
raised in the consumer at the point where its block would have come; closing the consumer early
stops the reader after at most the block it is reading. The iterator runs in the reader thread, with
that thread's torch state (grad mode on, the default CUDA device and stream): an iterator that
computes its blocks on a GPU should not rely on the caller's.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import torch

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(
    blocks: Iterator[tuple[int, torch.Tensor]],
    device: torch.device | str,
    *,
    depth: int = 1,
    thread: bool | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset, uint8 (n, D) block) from ``blocks``, read ``depth`` ≥ 1 blocks ahead in a thread.

    ``device``: where the blocks will be used; on CUDA the host's blocks are returned in pinned
    memory (blocks already on a GPU, or pinned, pass unchanged).
    ``thread``: read in a background thread (default: only for CUDA, where the GPU computes while
    the host reads; on the CPU the reader would compete with the compute threads). Without a
    thread the blocks pass through unchanged.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    pin = torch.device(device).type == "cuda"
    if not (pin if thread is None else thread):
        yield from blocks
        return
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for off, t in blocks:
                if pin and t.device.type == "cpu" and not t.is_pinned():
                    t = torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)
                if not put((off, t)):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))

    reader = threading.Thread(target=read, name="diffaudit-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        reader.join()
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
